"""Exceptions and warnings of trl-formatkit.

Every error we raise derives from :class:`FormatKitError`, and also from the built-in class a caller would
expect (``ValueError``, ``TypeError``, ``KeyError``), so ``except ValueError`` keeps working. Messages name the
offending value, what is allowed, and the next step.
"""

from __future__ import annotations

__all__ = [
    "FormatKitError",
    "FormatKitValueError",
    "FormatKitTypeError",
    "FormatKitKeyError",
    "TemplateNotFoundError",
    "FormatKitWarning",
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
