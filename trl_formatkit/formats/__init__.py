"""Dataset formats: the default registry ``formats``, detection, conversion to messages, trl's formatting functions.

This module *is* the default format registry: ``from trl_formatkit import formats`` then ``formats.get("alpaca")``,
``formats.names()``, ``formats.detect(dataset)``, ``formats.register(Format(...))``, ``"alpaca" in formats``,
``formats.registry`` (a read-only ``{name: Format}`` view). The built-in formats and those of installed plugins
(entry-point group ``trl_formatkit.plugins``) load on first use.

Importing it imports neither ``trl`` nor ``datasets`` (``FORMAT_MAPPING`` is built on first access).

Example:
    >>> from trl_formatkit import formats
    >>> formats.names()[:5]
    ['alpaca', 'chatml', 'instruction', 'sharegpt', 'text']
    >>> formats.get("prompt-completion").name
    'instruction'
    >>> formats.detect(["conversations", "source"]).name
    'sharegpt'
    >>> "messages" in formats
    True
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .convert import MESSAGES_COLUMN, default_registry, detect_format, register_format, to_messages
from .core import Format, FormatRegistry, columns_of, normalize_name
from .dataset_formatting import (
    conversations_formatting_function,
    get_formatting_func_from_dataset,
    instructions_formatting_function,
)
from .formatting import (
    FormattedTextReport,
    batched_formatting_func,
    check_formatted_text,
    check_formatting_func,
    template_markers,
)

__all__ = [
    "Format",
    "FormatRegistry",
    "formats",
    "default_registry",
    "register_format",
    "detect_format",
    "to_messages",
    "MESSAGES_COLUMN",
    "columns_of",
    "normalize_name",
    "batched_formatting_func",
    "check_formatting_func",
    "check_formatted_text",
    "template_markers",
    "FormattedTextReport",
    "FORMAT_MAPPING",
    "conversations_formatting_function",
    "instructions_formatting_function",
    "get_formatting_func_from_dataset",
    # the default registry's methods, at module level
    "get",
    "names",
    "aliases",
    "register",
    "unregister",
    "detect",
    "matching",
    "describe",
    "registry",
]

# The default registry's API as module functions: `formats.get("alpaca")` works whether `formats` came from
# `from trl_formatkit import formats` or `import trl_formatkit.formats as formats`.
get = default_registry.get
names = default_registry.names
aliases = default_registry.aliases
register = default_registry.register
unregister = default_registry.unregister
detect = default_registry.detect
matching = default_registry.matching
describe = default_registry.describe


def __getattr__(name: str) -> Any:
    if name == "FORMAT_MAPPING":
        from . import dataset_formatting

        value = dataset_formatting.FORMAT_MAPPING
        globals()[name] = value
        return value
    if name == "registry":  # a fresh read-only view, after the plugins have loaded
        return default_registry.registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RegistryModule(types.ModuleType):
    """This module, with the container protocol of the default registry (``in``, ``[]``, ``iter``, ``len``)."""

    def __contains__(self, name: object) -> bool:
        return name in default_registry

    def __getitem__(self, name: str) -> Format:
        return default_registry[name]

    def __iter__(self):
        return iter(default_registry)

    def __len__(self) -> int:
        return len(default_registry)

    def __bool__(self) -> bool:  # a module is true; never load plugins just to answer `if module:`
        return True


sys.modules[__name__].__class__ = _RegistryModule

#: The default registry (this module): ``from trl_formatkit import formats`` gives the same object.
formats = sys.modules[__name__]

if TYPE_CHECKING:  # pragma: no cover
    FORMAT_MAPPING: dict[str, Any]
    registry: types.MappingProxyType[str, Format]
