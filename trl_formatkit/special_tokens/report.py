"""The audit's report types: :class:`AuditFinding` and :class:`AuditReport` (table, HTML, JSON).

Every string that comes from data (token strings, messages, values) is shown as plain text, never parsed as
``rich`` markup, so a special token such as ``"[/PAD]"`` prints as itself.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import FormatKitValueError

Severity = Literal["problem", "note"]
Purpose = Literal["training", "generation"]

#: What each severity means, in the words the report prints.
SEVERITY_MEANING: dict[str, str] = {"problem": "breaks training", "note": "worth knowing"}


@dataclass(frozen=True)
class AuditFinding:
    """One thing :func:`~trl_formatkit.special_tokens.audit_tokenizer` found.

    Attributes:
        code: a stable short name, e.g. ``"pad-equals-eos"`` (filter or silence findings by it).
        severity: ``"problem"`` (breaks training or generation) or ``"note"`` (worth knowing; nothing breaks).
        message: what is wrong and what it causes.
        values: the values involved (token strings and ids, sizes).
        fix: the fix, as code.
    """

    code: str
    severity: Severity
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)
    fix: str = ""

    def values_text(self) -> str:
        """The values as ``name=repr(value)`` pairs."""
        return ", ".join(f"{k}={v!r}" for k, v in self.values.items())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: code, severity, message, values (as JSON-safe values), fix."""
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "values": {str(k): _jsonable(v) for k, v in self.values.items()},
            "fix": self.fix,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


@dataclass
class AuditReport:
    """What :func:`~trl_formatkit.special_tokens.audit_tokenizer` found. Prints as text; renders as HTML.

    Attributes:
        name: the tokenizer's name (its folder or hub id).
        problems: findings that break training or generation; empty when the tokenizer is fine.
        notes: findings worth knowing that break nothing.
        special_tokens: ``{"eos_token": ("<|endoftext|>", 32000), ...}`` as audited.
        purpose: ``"training"`` or ``"generation"``: what the audit checked for.

    Example:
        >>> report = AuditReport("toy", notes=[AuditFinding("padding-right", "note", "[/PAD] is fine")])
        >>> report.ok, report.codes
        (True, ['padding-right'])
        >>> "[/PAD] is fine" in str(report)    # data is never read as rich markup
        True
    """

    name: str
    problems: list[AuditFinding] = field(default_factory=list)
    notes: list[AuditFinding] = field(default_factory=list)
    special_tokens: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)
    purpose: Purpose = "training"

    @property
    def ok(self) -> bool:
        """True when there are no problems (notes do not count)."""
        return not self.problems

    @property
    def codes(self) -> list[str]:
        """The codes of the problems, then of the notes."""
        return [f.code for f in self.problems] + [f.code for f in self.notes]

    def raise_for_problems(self) -> AuditReport:
        """Raise :class:`~trl_formatkit.errors.FormatKitValueError` listing the problems; return self if none."""
        if self.problems:
            lines = [f"tokenizer {self.name!r} has {len(self.problems)} special-token problem(s):"]
            for f in self.problems:
                lines.append(f"- [{f.code}] {f.message} ({f.values_text()}); fix: {f.fix}")
            raise FormatKitValueError("\n".join(lines))
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for logs and CI): name, purpose, ok, special tokens, problems, notes.

        Each finding is ``{"code", "severity", "message", "values", "fix"}``; the keys are stable.
        """
        return {
            "name": self.name,
            "purpose": self.purpose,
            "ok": self.ok,
            "special_tokens": {k: list(v) for k, v in self.special_tokens.items()},
            "problems": [f.to_dict() for f in self.problems],
            "notes": [f.to_dict() for f in self.notes],
        }

    def __repr__(self) -> str:
        return (
            f"AuditReport(name={self.name!r}, problems={[f.code for f in self.problems]}, "
            f"notes={[f.code for f in self.notes]})"
        )

    def _verdict(self) -> str:
        counts = f"{len(self.notes)} note(s) ({self.purpose})"
        return f"{len(self.problems)} problem(s), {counts}" if self.problems else f"no problems, {counts}"

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.padding import Padding
        from rich.table import Table
        from rich.text import Text

        tokens = Table(title=Text(f"special tokens of {self.name}"), title_justify="left")
        for column, justify in (("token", "left"), ("string", "left"), ("id", "right")):
            tokens.add_column(column, justify=justify)  # type: ignore[arg-type]
        for key, (text, token_id) in self.special_tokens.items():
            shown = repr(text) if text is not None else "-"
            tokens.add_row(Text(key), Text(shown), Text("-" if token_id is None else str(token_id)))
        parts: list[Any] = [tokens, Text(self._verdict(), style="bold red" if self.problems else "bold green")]
        # one block per finding, not a table: words wrap whole at any width (80-column logs included)
        for f in [*self.problems, *self.notes]:
            style = "red" if f.severity == "problem" else "dim"
            head = Text.assemble((f"{f.severity} ({SEVERITY_MEANING[f.severity]})", style), "  ", (f.code, "bold"))
            body = [Text(f.message)]
            if f.values:
                body.append(Text("values: " + f.values_text()))
            if f.fix:
                body.append(Text("fix: " + f.fix))
            parts += [head, Padding(Group(*body), (0, 0, 0, 2))]
        return Group(*parts)

    def __str__(self) -> str:
        import io

        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=100, color_system=None, force_terminal=False, legacy_windows=False)
        console.print(self.__rich__())
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(k)}</td><td><code>{esc(repr(t)) if t is not None else '-'}</code></td>"
            f"<td>{'-' if i is None else i}</td></tr>"
            for k, (t, i) in self.special_tokens.items()
        )
        colour = "#b00" if self.problems else "#070"
        findings = "".join(
            f"<tr><td style='color:{'#b00' if f.severity == 'problem' else '#666'}'>{f.severity}</td>"
            f"<td><code>{esc(f.code)}</code></td><td>{esc(f.message)}</td><td><code>{esc(f.values_text())}</code>"
            f"</td><td><pre style='margin:0'>{esc(f.fix)}</pre></td></tr>"
            for f in [*self.problems, *self.notes]
        )
        table = (
            "<table><thead><tr><th></th><th>code</th><th>what is wrong</th><th>values</th><th>fix</th></tr>"
            f"</thead><tbody>{findings}</tbody></table>"
            if findings
            else ""
        )
        return (
            f"<div class='trl-formatkit-audit'><p>special tokens of <b>{esc(self.name)}</b>: "
            f"<b style='color:{colour}'>{esc(self._verdict())}</b></p>"
            f"<table><thead><tr><th>token</th><th>string</th><th>id</th></tr></thead><tbody>{rows}</tbody></table>"
            f"{table}</div>"
        )
