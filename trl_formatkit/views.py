"""See exactly which tokens a batch trains: coloured in a terminal, marked in plain text, HTML in a notebook.

Trained tokens are shown on a green background in a colour terminal and in ``[brackets]`` where there is no
colour (a pipe, a log file, CI, ``TERM=dumb``, ``NO_COLOR=1``); ignored ones are dim; a padding token is shown as
``·``. Sequence boundaries of padding-free batches are marked with ``┃`` (``|`` in plain text).

The views take a collated batch (``input_ids`` and ``labels``), or rows as a dataset holds them (``messages``,
``prompt``/``completion``, ``text``, tokenized rows): those are tokenized with the chat template and masked the
way the trainer masks them, or by the collator you pass.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError, preview
from .masking import IGNORE_INDEX

__all__ = ["TrainedTokens", "trained_tokens", "show_trained", "as_batch", "encode_row"]

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

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        if console.no_color or console.color_system is None:  # no colour: mark the trained tokens in text
            yield Text(self._plain(newline="↵\n"))
            return
        text = Text()
        for piece, trained, pad, start in zip(self.pieces, self.trained, self.padding, self.boundary, strict=True):
            if start:
                text.append("┃", style="bold magenta")
            if pad:
                text.append("·", style="grey30")
            else:
                text.append(piece.replace("\n", "↵\n"), style=_TRAINED_STYLE if trained else _IGNORED_STYLE)
        yield text

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

    def __str__(self) -> str:  # plain text: each span of trained tokens in [brackets]
        return self._plain()

    def _plain(self, newline: str = "\n") -> str:
        out, open_ = [], False
        for piece, trained, pad, start in zip(self.pieces, self.trained, self.padding, self.boundary, strict=True):
            if (start or not trained) and open_:
                out.append("]")
                open_ = False
            if start:
                out.append("|")
            if pad:
                continue
            if trained and not open_:
                out.append("[")
                open_ = True
            out.append(piece.replace("\n", newline))
        return "".join(out) + ("]" if open_ else "")


def trained_tokens(
    data: Any, tokenizer: Any, row: int = 0, *, collator: Any = None, ignore_index: int | None = None
) -> TrainedTokens:
    """Which tokens of one row are trained: of a collated batch, or of rows as a dataset holds them.

    Args:
        data: a collator's output (``input_ids`` and ``labels``; ``attention_mask`` or ``position_ids`` when
            present mark padding and sequence starts), or one row or a list of rows (``messages``,
            ``prompt``/``completion``, ``text``, or tokenized ``input_ids``). Rows are tokenized with the chat
            template and masked as the trainer masks them (assistant turns; the completion; every token of plain
            text), or collated by ``collator`` when one is given.
        tokenizer: the tokenizer that made (or makes) the ids.
        row: the row of the batch, or of the list of rows.
        collator: a collator (``DataCollatorForCompletionOnlyLM``) to collate rows with.
        ignore_index: the label of untrained tokens. Default: the collator's, else every negative label
            (``-100`` or another ``ignore_index``: token ids are never negative).

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = toy_tokenizer()
        >>> ids = tok.convert_tokens_to_ids(["user", "hi", "assistant", "hello", "there"])
        >>> view = trained_tokens({"input_ids": [ids], "labels": [[-100, -100, -100] + ids[3:]]}, tok)
        >>> str(view)  # trained spans in brackets
        'userhiassistant[hellothere]'
        >>> view.n_trained
        2
        >>> str(trained_tokens({"input_ids": [ids], "labels": [[-1, -1, -1] + ids[3:]]}, tok, ignore_index=-1))
        'userhiassistant[hellothere]'
    """
    batch = as_batch(data, tokenizer, collator=collator)
    if ignore_index is None and collator is not None:
        ignore_index = getattr(collator, "ignore_index", None)
    ids = _row(batch["input_ids"], row)
    labels = _row(batch["labels"], row)
    if ids.shape != labels.shape:
        raise FormatKitValueError(f"input_ids {ids.shape} and labels {labels.shape} differ in shape")
    padding = np.zeros(ids.shape, dtype=bool)
    if batch.get("attention_mask") is not None:
        padding = _row(batch["attention_mask"], row) == 0
    boundary = np.zeros(ids.shape, dtype=bool)
    if batch.get("position_ids") is not None and "attention_mask" not in batch:
        boundary = _row(batch["position_ids"], row) == 0
        boundary[0] = False
    trained = labels >= 0 if ignore_index is None else labels != ignore_index
    added = _added_ids(tokenizer)
    pieces = tuple(_visible(tokenizer, int(i), added) for i in ids.tolist())
    return TrainedTokens(
        pieces=pieces,
        trained=tuple(bool(x) for x in trained & ~padding),
        padding=tuple(bool(x) for x in padding),
        boundary=tuple(bool(x) for x in boundary),
    )


def as_batch(data: Any, tokenizer: Any, *, collator: Any = None) -> Mapping[str, Any]:
    """``data`` as a batch with ``input_ids`` and ``labels``: a collated batch as it is, rows encoded.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> as_batch([{"text": "hello there"}, {"text": "hi"}], toy_tokenizer())
        {'input_ids': [[6, 8], [7]], 'labels': [[6, 8], [7]]}
    """
    if isinstance(data, Mapping) and "labels" in data and "input_ids" in data:
        return data
    if isinstance(data, Mapping):  # a row, or columns (``dataset[:2]``)
        rows = [dict(zip(data, values, strict=True)) for values in zip(*data.values())] if _is_columns(data) else [data]
    else:
        rows = list(data)
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise FormatKitTypeError(
            f"expected a collated batch (input_ids and labels), a row or a list of rows (dicts), got {preview(data)}"
        )
    if collator is not None:
        return collator([{"input_ids": encode_row(r, tokenizer, index=i)[0]} for i, r in enumerate(rows)])
    encoded = [encode_row(r, tokenizer, index=i) for i, r in enumerate(rows)]
    return {
        "input_ids": [ids for ids, _ in encoded],
        "labels": [[t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)] for ids, mask in encoded],
    }


def encode_row(row: Mapping[str, Any], tokenizer: Any, *, index: int = 0) -> tuple[list[int], list[bool]]:
    """One row's token ids and, per token, whether the trainer trains it.

    ``messages``: the chat template; assistant turns trained, found from the conversation's structure
    (:mod:`trl_formatkit.structure`), so a marker typed inside a message never opens a turn.
    ``prompt``/``completion``: conversational ones through the chat template, strings as trl tokenizes them
    (prompt, then completion and EOS); the completion trained. ``text``: every token trained (language
    modelling). ``input_ids``: as given, trained where ``labels``/``completion_mask``/``assistant_masks`` say so
    (every token where none is given). Other schemas (alpaca, sharegpt, plugins) go through their format.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> encode_row({"prompt": "what is ", "completion": "the capital"}, toy_tokenizer())  # + EOS
        ([9, 10, 11, 12, 2], [False, False, True, True, True])
    """
    if "input_ids" in row:
        ids = [int(t) for t in row["input_ids"]]
        return ids, _given_mask(row, len(ids))
    if "messages" in row:
        return encode_messages(tokenizer, [row["messages"]], index=index)[0]
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            turns = [{**m, "train": False} for m in prompt] + [{**m, "train": True} for m in completion]
            return encode_messages(tokenizer, [turns], index=index)[0]
        prompt_ids = tokenizer(str(prompt))["input_ids"]
        ids = tokenizer(str(prompt) + str(completion))["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        return ids, [i >= len(prompt_ids) for i in range(len(ids))]
    if "text" in row:
        ids = tokenizer(str(row["text"]))["input_ids"]
        return ids, [True] * len(ids)
    from .formats import detect_format

    return encode_messages(tokenizer, [detect_format(list(row)).to_messages(row)], index=index)[0]


def encode_messages(tokenizer: Any, conversations: list, *, index: int = 0) -> list[tuple[list[int], list[bool]]]:
    """Token ids and assistant-turn masks of conversations (:func:`trl_formatkit.structure.encode_conversations`).

    A failure names the row as counted by the caller (``index`` is the first conversation's row).
    """
    from .errors import FormatKitError
    from .structure import encode_conversations

    try:
        out = encode_conversations(tokenizer, conversations)
    except FormatKitError as err:
        where = f"row {index}" if len(conversations) == 1 else f"rows {index}-{index + len(conversations) - 1}"
        raise type(err)(f"{where}: {err}") from None
    return [(ids, [bool(m) for m in mask]) for ids, mask in zip(out["input_ids"], out["completion_mask"], strict=True)]


def _is_columns(data: Mapping[str, Any]) -> bool:
    """True for ``dataset[:n]`` (each value a list with one entry per row), False for one row."""
    values = list(data.values())
    return (
        bool(values)
        and all(isinstance(v, list) and v for v in values)
        and len({len(v) for v in values}) == 1
        and not any(isinstance(v[0], (int, np.integer, Mapping)) for v in values)  # a row's ids or messages
    )


def _given_mask(row: Mapping[str, Any], n: int) -> list[bool]:
    if row.get("labels") is not None:
        return [int(x) >= 0 for x in row["labels"]]
    for key in ("completion_mask", "assistant_masks"):
        if row.get(key) is not None:
            return [bool(x) for x in row[key]]
    return [True] * n


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
    if isinstance(value, Sequence) and value and not isinstance(value[0], (int, np.integer)):
        return np.asarray(value[row])  # a list of rows (they may differ in length)
    arr = np.asarray(value)
    return arr[row] if arr.ndim == 2 else arr


def show_trained(
    data: Any,
    tokenizer: Any,
    rows: Sequence[int] | None = None,
    console: Any = None,
    *,
    collator: Any = None,
    ignore_index: int | None = None,
) -> None:
    """Print each row with its trained tokens marked (colour in a terminal, ``[brackets]`` elsewhere), with a count.

    Args:
        data: a collator's output, or a row or a list of rows as a dataset holds them (see :func:`trained_tokens`).
        tokenizer: the tokenizer that made (or makes) the ids.
        rows: which rows (default: all).
        console: a ``rich.console.Console`` (default: a new one on stdout).
        collator: a collator to collate rows with (default: mask them as the trainer does).
        ignore_index: the label of untrained tokens (default: the collator's, else every negative label).
    """
    from rich.console import Console
    from rich.panel import Panel

    console = console or Console()
    batch = as_batch(data, tokenizer, collator=collator)
    n_rows = _n_rows(batch["input_ids"])
    for r in rows if rows is not None else range(n_rows):
        view = trained_tokens(batch, tokenizer, r, collator=collator, ignore_index=ignore_index)
        real = len(view.pieces) - sum(view.padding)
        title = f"row {r}: {view.n_trained} of {real} tokens trained"
        console.print(Panel(view, title=title, title_align="left", border_style="green" if view.n_trained else "red"))


def _n_rows(value: Any) -> int:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) == 2 else 1
    return len(value) if value and isinstance(value[0], Sequence) else 1
