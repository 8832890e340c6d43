"""Plugin hook specifications (pluggy).

A plugin is a module (or an instance, never a class) that implements one or more of these hooks, marked with
:data:`hookimpl`. Installed packages announce plugins through the entry-point group ``trl_formatkit.plugins``;
:mod:`trl_formatkit.plugins` discovers and loads them on first use. The built-in formats register through the same
hook (see :mod:`trl_formatkit.formats.builtin`).

A plugin in one file (``my_formats.py``)::

    from trl_formatkit import Format, hookimpl

    def dolly_to_messages(row):
        user = row["instruction"] + (f"\\n\\n{row['context']}" if row["context"] else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["response"]}]

    @hookimpl
    def formatkit_register_formats(register):
        register(Format("dolly", {"instruction", "context", "response"}, dolly_to_messages))

and in its ``pyproject.toml``::

    [project.entry-points."trl_formatkit.plugins"]
    dolly = "my_formats"

This module imports only :mod:`pluggy`.

Example:
    >>> from trl_formatkit.hookspecs import PROJECT_NAME, hookimpl
    >>> PROJECT_NAME
    'trl_formatkit'
    >>> @hookimpl
    ... def formatkit_register_formats(register):
    ...     pass
    >>> hasattr(formatkit_register_formats, PROJECT_NAME + "_impl")
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "hookspec", "hookimpl", "formatkit_register_formats", "normalize_name"]

#: The pluggy project name: hook markers and the plugin manager share it.
PROJECT_NAME = "trl_formatkit"

#: Marks a hook specification (used here only).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marks a plugin's hook implementation: ``from trl_formatkit import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


def normalize_name(name: str) -> str:
    """The lookup key of a format or plugin name: lower case, ``_`` and spaces read as ``-``.

    Example:
        >>> normalize_name("Prompt_Completion")
        'prompt-completion'
    """
    return "-".join(name.strip().lower().replace("_", "-").split())


@hookspec
def formatkit_register_formats(register: Callable[..., Any]) -> None:
    """Register dataset formats.

    Called once per plugin, the first time a registry is used (``formats.get``, ``detect_format``, ...).

    Args:
        register: ``register(format, *, replace=False)``: adds a :class:`~trl_formatkit.formats.Format`. A name
            or alias that is already taken raises unless ``replace=True``. If the hook raises, none of the
            formats it registered are kept, the plugin is named in a warning, and the other plugins still load.
    """
