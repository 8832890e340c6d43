"""``trl-formatkit inspect``: the first rows with their trained tokens, then a check of the whole dataset.

Masks come from the collator when a ``--response-template`` is given (what ``DataCollatorForCompletionOnlyLM``
trains), else from the rows themselves as the trainer masks them (assistant turns of ``messages``, the completion
of prompt-completion rows, every token of plain text).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._common import CLIError, caught_warnings, load_tokenizer, print_text, unescape, warning_lines
from .data import normalise, read_rows

CHUNK = 256  # rows per collator call over the whole dataset
LISTED = 100  # row numbers listed per kind of trouble (the counts are exact)


@dataclass
class Summary:
    """What ``inspect`` found over the whole dataset (``--json`` prints it)."""

    rows: int
    format: str
    masks_from: str
    tokens: int
    trained_tokens: int
    trained_fraction: float
    length_percentiles: dict[str, int]
    max_length: int | None
    rows_truncated: int
    batch_size: int
    padding_fraction: float
    n_rows_nothing_trained: int = 0
    n_rows_cut_before_answer: int = 0
    rows_nothing_trained: list[int] = field(default_factory=list)  # the first LISTED of them
    rows_cut_before_answer: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return 1 if self.n_rows_nothing_trained or self.n_rows_cut_before_answer else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", help="a local tokenizer folder or a hub id (default: the bundled Phi-3-mini)")
    p.add_argument("--dataset", help="a .jsonl, .json, .csv or .parquet file, or a hub dataset id")
    p.add_argument("--file", dest="dataset", help=argparse.SUPPRESS)  # the old name of --dataset
    p.add_argument("--split", default="train", help="the split of a hub dataset (default: train)")
    p.add_argument("--text", action="append", help="a formatted row (repeat for several); instead of --dataset")
    p.add_argument("--format", default="auto", help="the rows' format: auto (detect), chatml, instruction, alpaca, "
                   "sharegpt, text or a plugin's (see trl-formatkit formats)")
    p.add_argument("--field", help="read this one column as the row: text, or messages (chat template)")
    p.add_argument("--response-template", help='e.g. "<|assistant|>" or "### Answer:" (default: the masks the '
                   "trainer computes: assistant turns, completions, all of plain text)")
    p.add_argument("--instruction-template", action="append", help="repeat for several (user, system)")
    p.add_argument("--end-template", help='e.g. "<|end|>"')
    p.add_argument("--on-missing", choices=["warn", "raise", "ignore"], default="warn",
                   help="a row without the templates: warn (default), raise (stop at the first), ignore")
    p.add_argument("--exact", action="store_true", help="trl 0.19's exact template matching")
    p.add_argument("--padding-free", action="store_true", help="show the first rows flattened into one")
    p.add_argument("--max-length", type=int, help="truncate rows as SFTConfig(max_length=N) does; counts rows "
                   "cut before their answer")
    p.add_argument("--batch-size", type=int, default=8, help="for the padding estimate (default 8)")
    p.add_argument("--rows", type=int, default=4, help="how many rows to show (default 4; 0: only the summary)")
    p.add_argument("--html", metavar="OUT", help="also write the rows shown as an HTML page")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no rows shown)")
    p.add_argument("--unescape", action="store_true",
                   help=r"turn \n, \t, \uXXXX written in --text and the templates into the characters")


def run(args: argparse.Namespace, console: Any) -> int:
    for name in ("max_length", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.rows < 0:
        raise CLIError(f"--rows must be 0 or more, got {args.rows}")
    rows, fmt = _rows(args)  # before the tokenizer: a bad --dataset is said at once, without importing transformers
    tok = load_tokenizer(args.tokenizer)
    collator = _collator(args, tok)
    with _progress(len(rows) * (2 if collator else 1)) as advance:
        encoded = _encode(rows, tok, advance)
        masks, caught = _masks(encoded, collator, advance)
    summary = summarise(encoded, masks, args, fmt, "collator" if collator else "trainer")
    summary.warnings = _template_hints(args, summary) + caught
    if args.json:
        console.print_json(json.dumps({**asdict(summary), "exit_status": summary.exit_status}))
        return summary.exit_status
    shown = _show_rows(encoded, masks, tok, args, console)
    if args.html:
        _write_html(shown, args.html)
    render_summary(summary, encoded, tok, console)
    return summary.exit_status


def _rows(args: argparse.Namespace) -> tuple[list[dict], str]:
    if args.text and args.dataset:
        raise CLIError("give rows with --text or --dataset, not both")
    if args.text:
        return [{"text": unescape(t) if args.unescape else t} for t in args.text], "text"
    if not args.dataset:
        raise CLIError("give rows: --dataset FILE (.jsonl, .json, .csv, .parquet) or --text TEXT")
    return normalise(read_rows(args.dataset, args.split), args.format, args.field)


def _collator(args: argparse.Namespace, tok: Any) -> Any:
    if not args.response_template:
        if args.instruction_template or args.end_template:
            raise CLIError("--instruction-template and --end-template need a --response-template")
        return None
    from ..collators import DataCollatorForCompletionOnlyLM
    from ..errors import FormatKitError

    fix = unescape if args.unescape else (lambda t: t)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token  # display only: the collator's labels come from lengths
    try:
        return DataCollatorForCompletionOnlyLM(
            fix(args.response_template),
            [fix(t) for t in args.instruction_template] if args.instruction_template else None,
            tokenizer=tok,
            end_template=fix(args.end_template) if args.end_template else None,
            match_in_context=not args.exact,
            on_missing=args.on_missing,
        )
    except FormatKitError as err:
        raise CLIError(str(err).splitlines()[0]) from None


def _encode(rows: list[dict], tok: Any, advance: Callable[[int], None]) -> list[tuple[list[int], list[bool]]]:
    """Every row's ids and trainer mask; conversations in batches (one template render and tokenizer call each)."""
    from ..errors import FormatKitError
    from ..views import encode_messages, encode_row

    out: list[tuple[list[int], list[bool]]] = []
    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        try:
            if all("messages" in r for r in part):
                out += encode_messages(tok, [r["messages"] for r in part], index=start)
            else:
                out += [encode_row(row, tok, index=start + n) for n, row in enumerate(part)]
        except FormatKitError as err:
            raise CLIError(str(err).splitlines()[0]) from None
        advance(len(part))
    return out


def _masks(encoded: list, collator: Any, advance: Callable[[int], None]) -> tuple[list[np.ndarray], list[str]]:
    """Per row, the trained tokens: the collator's labels (in chunks, with a progress bar), or the rows' own."""
    if collator is None:
        return [np.asarray(m, dtype=bool) for _, m in encoded], []
    masks: list[np.ndarray] = []
    first: list[str] = []  # the first chunk's warnings in full; then how many chunks warned
    warned = 0
    for start in range(0, len(encoded), CHUNK):
        part = encoded[start : start + CHUNK]
        with caught_warnings() as caught:
            batch = collator([{"input_ids": ids} for ids, _ in part], return_tensors="np")
        for r in range(len(part)):
            real = np.asarray(batch["attention_mask"][r], dtype=bool)
            masks.append(np.asarray(batch["labels"][r])[real] != collator.ignore_index)
        if caught:
            warned += 1
            if not first:
                where = f"rows {start}-{start + len(part) - 1}, the collator counting from 0 there"
                first = [f"({where}) {line}" for line in warning_lines(caught)]
        advance(len(part))
    if warned > 1:
        first.append(f"the collator warned in {warned - 1} more chunks of {CHUNK} rows (see the counts above)")
    return masks, first


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr where stderr is a terminal (nothing in pipes and logs); yields ``advance(n)``."""
    if total <= CHUNK or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("checking rows", total=total)
        yield lambda n: bar.advance(task, n)


def summarise(encoded: list, masks: list[np.ndarray], args: argparse.Namespace, fmt: str, source: str) -> Summary:
    lengths = np.asarray([len(ids) for ids, _ in encoded], dtype=np.int64)
    cap = args.max_length or int(lengths.max())
    kept = np.minimum(lengths, cap)
    trained_full = np.asarray([m.any() for m in masks])
    trained_kept = np.asarray([m[:cap].sum() for m in masks], dtype=np.int64)
    waste = _padding_fraction(kept, args.batch_size)
    return Summary(
        rows=len(encoded),
        format=fmt,
        masks_from=source,
        tokens=int(kept.sum()),
        trained_tokens=int(trained_kept.sum()),
        trained_fraction=round(float(trained_kept.sum() / max(kept.sum(), 1)), 4),
        length_percentiles={f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)} | {"max": int(lengths.max())},
        max_length=args.max_length,
        rows_truncated=int((lengths > cap).sum()),
        batch_size=args.batch_size,
        padding_fraction=round(waste, 4),
        n_rows_nothing_trained=int((~trained_full).sum()),
        n_rows_cut_before_answer=int((trained_full & (trained_kept == 0)).sum()),
        rows_nothing_trained=np.flatnonzero(~trained_full)[:LISTED].tolist(),
        rows_cut_before_answer=np.flatnonzero(trained_full & (trained_kept == 0))[:LISTED].tolist(),
    )


def _padding_fraction(lengths: np.ndarray, batch_size: int) -> float:
    """The share of padded slots when rows are batched in order, ``batch_size`` at a time, padded to the longest."""
    n = len(lengths)
    chunks = np.split(lengths, range(batch_size, n, batch_size))
    slots = sum(len(c) * int(c.max()) for c in chunks)
    return 1.0 - float(lengths.sum()) / slots if slots else 0.0


def _template_hints(args: argparse.Namespace, summary: Summary) -> list[str]:
    templates = [args.response_template, args.end_template, *(args.instruction_template or [])]
    if summary.exit_status and not args.unescape and any(t and "\\" in t for t in templates):
        return ["a template holds a backslash written as text (\\n is two characters here): pass --unescape to "
                "search for the newline itself"]
    return []


def _show_rows(encoded: list, masks: list, tok: Any, args: argparse.Namespace, console: Any) -> list:
    from ..views import show_trained, trained_tokens

    n = min(args.rows, len(encoded))
    if n == 0:
        return []
    cap = args.max_length or max(len(ids) for ids, _ in encoded[:n])
    batch = {
        "input_ids": [ids[:cap] for ids, _ in encoded[:n]],
        "labels": [[t if m else -100 for t, m in zip(ids[:cap], mask[:cap])] for (ids, _), mask in zip(encoded, masks)],
    }
    if args.padding_free:
        batch = {
            "input_ids": [sum(batch["input_ids"], [])],
            "labels": [sum(batch["labels"], [])],
            "position_ids": [[i for ids in batch["input_ids"] for i in range(len(ids))]],
        }
    show_trained(batch, tok, console=console)
    return [trained_tokens(batch, tok, r) for r in range(len(batch["input_ids"]))]


def _write_html(views: list, out: str) -> None:
    from html import escape

    body = "".join(f"<h3>row {r}</h3>{v._repr_html_()}" for r, v in enumerate(views))
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(f"<!doctype html><meta charset='utf-8'><title>{escape('trl-formatkit inspect')}</title>{body}")
    except OSError as err:
        raise CLIError(f"cannot write --html {out!r}: {err.strerror}") from None


def render_summary(s: Summary, encoded: list, tok: Any, console: Any) -> None:
    from ..errors import preview

    pct = s.length_percentiles
    lines = [
        f"Summary over {s.rows} rows (format {s.format}; masks from the {s.masks_from})",
        f"  trained tokens: {s.trained_tokens} of {s.tokens} ({s.trained_fraction:.1%})",
        f"  lengths in tokens: median {pct['p50']}, p90 {pct['p90']}, p99 {pct['p99']}, max {pct['max']}"
        + (f"; {s.rows_truncated} rows longer than --max-length {s.max_length}" if s.max_length else ""),
        f"  padding at batch size {s.batch_size} (rows in order): {s.padding_fraction:.0%} of the slots",
    ]
    for what, n, rows in (("rows with nothing trained", s.n_rows_nothing_trained, s.rows_nothing_trained),
                          (f"rows cut before their answer at --max-length {s.max_length}", s.n_rows_cut_before_answer,
                           s.rows_cut_before_answer)):
        if n:
            lines.append(f"  {what}: {n} (rows {', '.join(map(str, rows[:10]))}{', ...' if n > 10 else ''})")
            lines += [f"    row {r}: {preview(tok.decode(encoded[r][0][:48]), 100)}" for r in rows[:3]]
    for line in lines:
        print_text(console, line, style="bold" if line is lines[0] else None)
    for message in s.warnings:
        print_text(console, f"warning: {message}", style="yellow")
    if not s.exit_status:
        print_text(console, "  every row trains something", style="green")
