"""Registers a format named 'chatml' without replace=True: a clash with the built-in, so this plugin fails."""

from trl_formatkit import Format, hookimpl


@hookimpl
def formatkit_register_formats(register):
    register(Format("chatml", {"chat"}, lambda row: []))
