"""See exactly which tokens a batch trains: coloured in a terminal (rich), HTML in a notebook.

Trained tokens (label != -100) are shown on a green background, ignored ones dim; a padding token is
shown as ``·``. Sequence boundaries of padding-free batches are marked with ``┃``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masking import IGNORE_INDEX

__all__ = ["TrainedTokens", "trained_tokens", "show_trained"]

_TRAINED_STYLE = "bold black on green3"
_IGNORED_STYLE = "grey50"


@dataclass(frozen=True)
class TrainedTokens:
    """One sequence's tokens and whether each is trained.

    Attributes:
        pieces: the text of each token (special tokens kept; whitespace made visible: ``\\n`` as ``↵``).
        trained: per token, True where its label is trained.
        padding: per token, True for padding.
        boundary: per token, True where a new sequence starts (padding-free batches).
    """

    pieces: tuple[str, ...]
    trained: tuple[bool, ...]
    padding: tuple[bool, ...]
    boundary: tuple[bool, ...]

    @property
    def n_trained(self) -> int:
        return sum(self.trained)

    def trained_text(self) -> str:
        """The trained tokens' text, joined (what the loss sees as targets)."""
        return "".join(p for p, t in zip(self.pieces, self.trained, strict=True) if t)

    def __rich__(self) -> Any:
        from rich.text import Text

        text = Text()
        for piece, trained, pad, start in zip(self.pieces, self.trained, self.padding, self.boundary, strict=True):
            if start:
                text.append("┃", style="bold magenta")
            if pad:
                text.append("·", style="grey30")
            else:
                text.append(piece.replace("\n", "↵\n"), style=_TRAINED_STYLE if trained else _IGNORED_STYLE)
        return text

    def _repr_html_(self) -> str:
        spans = []
        for piece, trained, pad, start in zip(self.pieces, self.trained, self.padding, self.boundary, strict=True):
            if start:
                spans.append('<span style="color:#b0b">┃</span>')
            if pad:
                spans.append('<span style="color:#bbb">·</span>')
                continue
            style = "background:#7d7;color:#000" if trained else "color:#888"
            body = html.escape(piece).replace("\n", "↵<br>")
            spans.append(f'<span style="{style}" title="{"trained" if trained else "ignored"}">{body}</span>')
        legend = (
            f'<div style="font-size:smaller;color:#555">{self.n_trained} of {len(self.pieces) - sum(self.padding)}'
            ' tokens trained (<span style="background:#7d7">green</span>)</div>'
        )
        return f'<div style="font-family:monospace;white-space:pre-wrap">{"".join(spans)}</div>{legend}'

    def __str__(self) -> str:  # plain text: trained tokens in [brackets]
        out = []
        for piece, trained, pad, start in zip(self.pieces, self.trained, self.padding, self.boundary, strict=True):
            if start:
                out.append("|")
            if not pad:
                out.append(f"[{piece}]" if trained else piece)
        return "".join(out)


def trained_tokens(batch: Mapping[str, Any], tokenizer: Any, row: int = 0) -> TrainedTokens:
    """Which tokens of one row of a collated batch are trained.

    Args:
        batch: a collator's output (``input_ids`` and ``labels``; ``attention_mask`` or ``position_ids`` when
            present mark padding and sequence starts).
        tokenizer: the tokenizer that made the ids (for the tokens' text).
        row: the row of the batch.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = toy_tokenizer()
        >>> ids = tok.convert_tokens_to_ids(["user", "hi", "assistant", "hello", "there"])
        >>> view = trained_tokens({"input_ids": [ids], "labels": [[-100, -100, -100] + ids[3:]]}, tok)
        >>> str(view)
        'userhiassistant[hello][there]'
        >>> view.n_trained
        2
    """
    ids = _row(batch["input_ids"], row)
    labels = _row(batch["labels"], row)
    if ids.shape != labels.shape:
        raise ValueError(f"input_ids {ids.shape} and labels {labels.shape} differ in shape")
    padding = np.zeros(ids.shape, dtype=bool)
    if batch.get("attention_mask") is not None:
        padding = _row(batch["attention_mask"], row) == 0
    boundary = np.zeros(ids.shape, dtype=bool)
    if batch.get("position_ids") is not None and "attention_mask" not in batch:
        boundary = _row(batch["position_ids"], row) == 0
        boundary[0] = False
    added = _added_ids(tokenizer)
    pieces = tuple(_visible(tokenizer, int(i), added) for i in ids.tolist())
    return TrainedTokens(
        pieces=pieces,
        trained=tuple(bool(x) for x in labels != IGNORE_INDEX),
        padding=tuple(bool(x) for x in padding),
        boundary=tuple(bool(x) for x in boundary),
    )


def _added_ids(tokenizer: Any) -> set[int]:
    """Ids of special and added tokens (shown as written: ``<|assistant|>``)."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    try:
        ids |= set(tokenizer.get_added_vocab().values())
    except (AttributeError, NotImplementedError):
        pass
    return ids


def _visible(tokenizer: Any, token_id: int, added: set[int]) -> str:
    """A token's text as it reads in the decoded string (SentencePiece ▁, byte tokens, byte-level Ġ/Ċ undone)."""
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    if token_id in added:
        return piece
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if piece.startswith("▁") and not text.startswith(" "):
        text = " " + text  # SentencePiece decodes a lone token without its leading space
    return text


def _row(value: Any, row: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr[row] if arr.ndim == 2 else arr


def show_trained(batch: Mapping[str, Any], tokenizer: Any, rows: Sequence[int] | None = None, console: Any = None):
    """Print each row of a batch with its trained tokens highlighted (rich), with a count per row.

    Args:
        batch: a collator's output.
        tokenizer: the tokenizer that made the ids.
        rows: which rows (default: all).
        console: a ``rich.console.Console`` (default: a new one on stdout).
    """
    from rich.console import Console
    from rich.panel import Panel

    console = console or Console()
    n_rows = _n_rows(batch["input_ids"])
    for r in rows if rows is not None else range(n_rows):
        view = trained_tokens(batch, tokenizer, r)
        real = len(view.pieces) - sum(view.padding)
        title = f"row {r}: {view.n_trained} of {real} tokens trained"
        console.print(Panel(view, title=title, title_align="left", border_style="green" if view.n_trained else "red"))


def _n_rows(value: Any) -> int:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) == 2 else 1
    return len(value) if value and isinstance(value[0], Sequence) else 1
