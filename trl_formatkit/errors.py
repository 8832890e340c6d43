"""Exceptions and warnings of trl-formatkit.

Every error we raise derives from :class:`FormatKitError`, and also from the built-in class a caller would
expect (``ValueError``, ``TypeError``, ``KeyError``), so ``except ValueError`` keeps working. Messages name the
offending value, what is allowed, and the next step.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__ = [
    "FormatKitError",
    "FormatKitValueError",
    "FormatKitTypeError",
    "FormatKitKeyError",
    "TemplateNotFoundError",
    "FormatKitWarning",
    "warn",
    "preview",
]


class FormatKitError(Exception):
    """Root of every exception trl-formatkit raises."""


class FormatKitValueError(FormatKitError, ValueError):
    """A value has the right type but is not usable (an empty row, an unknown option, ...)."""


class FormatKitTypeError(FormatKitError, TypeError):
    """A value has the wrong type (float token ids, a string where a list was expected, ...)."""


class FormatKitKeyError(FormatKitError, KeyError):
    """A name or key is unknown (a format name, a missing column, ...)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0]) if self.args else ""


class TemplateNotFoundError(FormatKitValueError):
    """A response/instruction template was not found in a row (``on_missing="raise"``)."""


class FormatKitWarning(UserWarning):
    """Something will train wrongly or not at all, but the data can still be used."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _external_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn` called from :func:`warn` that points at the first frame
    outside trl_formatkit (the user's line, or the library that called us, e.g. a DataLoader)."""
    frame = sys._getframe(2)  # the caller of warn()
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = FormatKitWarning) -> None:
    """Warn, pointing at the first caller outside trl_formatkit: the one way this package warns.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn("3 rows train nothing")
        >>> caught[0].category.__name__, str(caught[0].message)
        ('FormatKitWarning', '3 rows train nothing')
    """
    warnings.warn(message, category, stacklevel=_external_stacklevel())


def preview(value: Any, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages that show the offending value.

    Example:
        >>> preview("x" * 200, limit=12)
        "'xxxxxxxx..."
        >>> preview([1, 2])
        '[1, 2]'
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
