"""Registers one format, then raises: the half-done registration must not be kept."""

from trl_formatkit import Format, hookimpl


@hookimpl
def formatkit_register_formats(register):
    register(Format("half-registered", {"half"}, lambda row: []))
    raise RuntimeError("the hook of broken-hook fails on purpose")
