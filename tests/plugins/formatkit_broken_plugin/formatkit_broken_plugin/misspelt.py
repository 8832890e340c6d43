"""Implements `formatkit_register_format` (no s): pluggy's check_pending() rejects the unknown hook."""

from trl_formatkit import Format, hookimpl


@hookimpl
def formatkit_register_format(register):
    register(Format("never-registered", {"never"}, lambda row: []))
