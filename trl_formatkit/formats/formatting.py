"""Formatting functions that work batched and per row, and checks for already formatted text.

- :func:`batched_formatting_func` turns a per-example formatting function (row -> string) into one that also takes
  the batches of ``Dataset.map(batched=True)`` (batch -> list of strings), and works as trl's
  ``SFTTrainer(formatting_func=...)``.
- :func:`check_formatting_func` calls a formatting function on a small batch and explains the book's
  ``ArrowInvalid`` trap when it returns one string for the whole batch.
- :func:`check_formatted_text` checks already formatted text (the book's "bring your own formatted data" case): does
  it use the tokenizer's chat-template markers, and does it end with EOS?

Imports neither ``datasets`` nor ``trl``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatKitTypeError, FormatKitValueError, preview
from ..special_tokens.probe import starts_with_double_bos, template_markers

__all__ = [
    "batched_formatting_func",
    "check_formatting_func",
    "template_markers",
    "check_formatted_text",
    "FormattedTextReport",
]

_BATCHED_FLAG = "__formatkit_batched__"


def _is_batch(examples: Any) -> bool:
    """Whether ``examples`` is a batch (columns of lists) rather than one row.

    ``datasets`` tells us directly (``LazyBatch`` vs ``LazyRow``). For a plain dict: a batch when every value is a
    list of the same length and no column's first item is a dict (a row's conversation is a list of dicts; a
    batch of conversations is a list of lists).
    """
    kind = type(examples).__name__
    if kind == "LazyBatch":
        return True
    if kind == "LazyRow":
        return False
    if not isinstance(examples, Mapping):
        raise FormatKitTypeError(
            f"a formatting function takes a row or a batch (a dict of columns), got {type(examples).__name__}"
        )
    values = [examples[key] for key in examples.keys()]
    if not values or not all(isinstance(v, (list, tuple)) for v in values):
        return False
    if len({len(v) for v in values}) != 1:
        return False
    return not any(len(v) and isinstance(v[0], Mapping) for v in values)


def _rows(examples: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns = {key: examples[key] for key in examples.keys()}
    sizes = {key: len(values) for key, values in columns.items()}
    if len(set(sizes.values())) > 1:
        raise FormatKitValueError(f"the batch's columns have different lengths: {sizes}")
    size = next(iter(sizes.values()), 0)
    return [{key: values[i] for key, values in columns.items()} for i in range(size)]


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def batched_formatting_func(fn: Callable[..., str], *, batched: bool | None = None) -> Callable[..., Any]:
    """Make a per-example formatting function also work on batches.

    The result takes one row and returns ``fn(row)`` (a string), or takes a batch (a dict of columns, as
    ``Dataset.map(batched=True)`` passes) and returns ``[fn(row) for row in rows]``. So one function serves
    ``dataset.map(lambda batch: tokenizer(f(batch)), batched=True)``, ``dataset.map(lambda row: {"text": f(row)})``
    and ``SFTTrainer(formatting_func=f)``. Extra arguments are passed on to ``fn``.

    Args:
        fn: ``fn(row, ...) -> str``, written for one row.
        batched: Force batch (True) or row (False) handling of plain dicts. Default: rows and batches from
            ``datasets`` are told apart exactly; for a plain dict, a batch is a dict whose values are all lists of
            one length (a dict where only lists of strings are present, such as ``{"tags": ["a", "b"]}``, reads
            as a batch: pass ``batched=False`` for such rows).

    Returns:
        The wrapped function (wrapping twice is a no-op).

    Raises:
        FormatKitTypeError: (when called) ``fn`` returned something other than a string for a row; a list means
            ``fn`` already handles batches and needs no wrapping.

    Example:
        >>> def byo_formatting_func2(examples):   # the book's per-example function
        ...     return f"### Question: {examples['prompt']}\\n### Answer: {examples['completion']}<|endoftext|>"
        >>> f = batched_formatting_func(byo_formatting_func2)
        >>> print(f({"prompt": "What is the capital of Argentina?", "completion": "Buenos Aires."}))
        ### Question: What is the capital of Argentina?
        ### Answer: Buenos Aires.<|endoftext|>
        >>> f({"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"]})
        ['### Question: Q1\\n### Answer: A1<|endoftext|>', '### Question: Q2\\n### Answer: A2<|endoftext|>']
    """
    if getattr(fn, _BATCHED_FLAG, False):
        return fn
    if not callable(fn):
        raise FormatKitTypeError(f"batched_formatting_func takes a function, got {type(fn).__name__}")

    def one(value: Any, where: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)):
            raise FormatKitTypeError(
                f"{_name(fn)} returned a {type(value).__name__} for {where}: {preview(value)}. It already "
                "handles batches, so it does not need batched_formatting_func (which calls it once per row); "
                "pass it as it is"
            )
        raise FormatKitTypeError(
            f"{_name(fn)} must return the formatted text (a string) for {where}, got {type(value).__name__}: "
            f"{preview(value)}"
        )

    @functools.wraps(fn)
    def wrapper(examples: Any, *args: Any, **kwargs: Any) -> Any:
        is_batch = _is_batch(examples) if batched is None else batched
        if not is_batch:
            return one(fn(examples, *args, **kwargs), "one row")
        return [one(fn(row, *args, **kwargs), f"row {i} of a batch") for i, row in enumerate(_rows(examples))]

    setattr(wrapper, _BATCHED_FLAG, True)
    return wrapper


def _first_rows(data: Any, n: int) -> tuple[dict[str, list], list[str]]:
    """A batch (dict of lists) of the first ``n`` rows of a dataset, a batch dict, or a list of rows."""
    if hasattr(data, "column_names") and hasattr(data, "__getitem__") and hasattr(data, "num_rows"):
        batch = data[: min(n, data.num_rows)]
        return dict(batch), list(data.column_names)
    if hasattr(data, "column_names") and hasattr(data, "__iter__") and not isinstance(data, Mapping):
        rows = list(itertools.islice(iter(data), n))  # an IterableDataset: its first rows
        keys = list(rows[0]) if rows else []
        return {key: [row[key] for row in rows] for key in keys}, keys
    if isinstance(data, Mapping):
        batch = {key: list(values)[:n] for key, values in data.items()}
        _rows(batch)  # checks the lengths
        return batch, list(batch)
    if isinstance(data, Sequence) and data and all(isinstance(row, Mapping) for row in data):
        rows = list(data)[:n]
        keys = list(rows[0])
        for i, row in enumerate(rows[1:], start=1):
            if set(row) != set(keys):
                raise FormatKitValueError(
                    f"row {i} has the keys {sorted(row)} but row 0 has {sorted(keys)}; a batch needs the same keys "
                    "in every row (as a datasets.Dataset has): add the missing keys (e.g. with None) or pass a "
                    "Dataset"
                )
        return {key: [row[key] for row in rows] for key in keys}, keys
    raise FormatKitTypeError(
        f"check_formatting_func takes a datasets.Dataset, a batch dict or a list of rows, got {type(data).__name__}"
    )


def check_formatting_func(fn: Callable[..., Any], data: Any, *, tokenizer: Any = None, num_rows: int = 2) -> list[str]:
    """Call a formatting function on a small batch, as ``Dataset.map(batched=True)`` would, and check its output.

    A batched formatting function must return one string per row. A function written for one row, given a batch,
    usually formats the lists themselves into one string (``"### Question: ['What is ...', ...]"``); mapping
    ``lambda batch: tokenizer(fn(batch))`` then fails with pyarrow's
    ``ArrowInvalid: Column 2 named input_ids expected length 2 but got length 44``: the column should have one
    value per row (2), but holds the tokens of one string (44). This check catches that before ``map`` does and
    says what to change.

    Args:
        fn: The formatting function.
        data: A ``datasets.Dataset`` or ``IterableDataset``, a batch (dict of columns) or a list of row dicts; its
            first rows are used.
        tokenizer: If given, the error quotes the exact ``ArrowInvalid`` message ``map`` would raise.
        num_rows: How many rows to put in the batch (at least 2, so a batch cannot pass for a row).

    Returns:
        The formatted strings of those rows.

    Raises:
        FormatKitTypeError: ``fn`` returned one string for the batch, something that is not a list of strings, or
            failed on a batch.
        FormatKitValueError: ``fn`` returned a list of the wrong length, or the data has fewer than 2 rows.

    Example:
        >>> def per_row(examples):
        ...     return f"Q: {examples['prompt']} A: {examples['completion']}"
        >>> batch = {"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"]}
        >>> check_formatting_func(per_row, batch)
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitTypeError: per_row returned one string for a batch of 2 rows ...
        >>> check_formatting_func(batched_formatting_func(per_row), batch)
        ['Q: Q1 A: A1', 'Q: Q2 A: A2']
    """
    if num_rows < 2:
        raise FormatKitValueError(f"num_rows must be at least 2 (one row cannot tell a batch apart), got {num_rows}")
    batch, columns = _first_rows(data, num_rows)
    size = len(_rows(batch))
    if size < 2:
        raise FormatKitValueError(f"need at least 2 rows to check a batched formatting function, got {size}")
    name = _name(fn)
    wrap_hint = (
        f"Wrap the per-example function: batched_formatting_func({getattr(fn, '__name__', 'fn')}) returns one "
        "string per row for batches (and a string for one row, as SFTTrainer(formatting_func=...) calls it); or "
        "loop over the rows yourself and return a list of strings."
    )
    try:
        out = fn(batch)
    except Exception as exc:
        raise FormatKitTypeError(
            f"{name} failed on a batch of {size} rows (columns {columns}, each a list): "
            f"{type(exc).__name__}: {exc}. If it was written for one row, it sees lists when batched. {wrap_hint}"
        ) from exc
    if isinstance(out, str):
        arrow = "ArrowInvalid: Column N named input_ids expected length {size} but got length <tokens in that string>"
        if tokenizer is not None:
            tokens = len(tokenizer(out)["input_ids"])
            arrow = f"ArrowInvalid: Column {len(columns)} named input_ids expected length {size} but got length {tokens}"
        arrow = arrow.replace("{size}", str(size))
        raise FormatKitTypeError(
            f"{name} returned one string for a batch of {size} rows ({preview(out, 120)}). A function written "
            "for one row sees lists when batched, and formats the lists themselves. "
            f"dataset.map(lambda batch: tokenizer({name}(batch)), batched=True) then fails with {arrow}: the new "
            f"column needs one value per row ({size}) but gets the tokens of that one string. {wrap_hint}"
        )
    if not isinstance(out, (list, tuple)) or not all(isinstance(text, str) for text in out):
        raise FormatKitTypeError(
            f"{name} must return a list of strings for a batch, got {type(out).__name__}: {preview(out)}"
        )
    if len(out) != size:
        raise FormatKitValueError(
            f"{name} returned {len(out)} strings for a batch of {size} rows; it must return exactly one per row "
            "(map raises ArrowInvalid on a length mismatch)"
        )
    return list(out)


@dataclass(frozen=True)
class FormattedTextReport:
    """What :func:`check_formatted_text` found.

    Attributes:
        num_texts: How many texts were checked.
        markers: The tokenizer's template markers each text should contain (see :func:`template_markers`).
        eos_token: The EOS token each text should end with.
        without_markers: Indices of texts missing at least one marker.
        without_eos: Indices of texts that do not end with EOS.
        double_bos: Indices of texts that start with BOS although the tokenizer adds one.
        problems: One sentence per problem, each with a preview and the fix. Empty means fine.
        notes: What could not be checked (no chat template, ...).
    """

    num_texts: int
    markers: tuple[str, ...]
    eos_token: str | None
    without_markers: tuple[int, ...] = ()
    without_eos: tuple[int, ...] = ()
    double_bos: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems

    def __str__(self) -> str:
        head = f"checked {self.num_texts} formatted text(s): " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join([head, *(f"- {p}" for p in self.problems), *(f"- note: {n}" for n in self.notes)])


def _check_markers(items: list[str], tokenizer: Any, problems: list[str], notes: list[str]) -> tuple:
    """The texts missing the chat template's markers (appends the problem or a note); returns (markers, indices)."""
    markers = template_markers(tokenizer)
    without_markers: tuple[int, ...] = ()
    if markers:
        without_markers = tuple(i for i, text in enumerate(items) if not all(m in text for m in markers))
        if without_markers:
            first = without_markers[0]
            missing = [m for m in markers if m not in items[first]]
            problems.append(
                f"{len(without_markers)} of {len(items)} texts do not use the tokenizer's chat-template markers "
                f"{markers} (text {first} lacks {missing}: {preview(items[first])}). The model would learn a "
                "format it is not prompted with at inference (apply_chat_template). Fix: format the messages with "
                "tokenizer.apply_chat_template(messages, tokenize=False), or convert the rows with to_messages() "
                "and let trl apply the template"
            )
    elif not getattr(tokenizer, "chat_template", None):
        notes.append("the tokenizer has no chat template, so template markers were not checked")
    else:
        notes.append("the chat template could not be rendered for a user/assistant pair; markers were not checked")
    return markers, without_markers


def check_formatted_text(texts: Any, tokenizer: Any, *, dataset_text_field: str = "text") -> FormattedTextReport:
    """Check already formatted text against a tokenizer: template markers, EOS at the end, no double BOS.

    Args:
        texts: A string, a list of strings, or a ``datasets.Dataset`` (its ``dataset_text_field`` column).
        tokenizer: The tokenizer the model is trained with.
        dataset_text_field: The text column of a dataset (as in ``SFTConfig``).

    Returns:
        A :class:`FormattedTextReport`; ``report.ok`` is True when nothing is wrong, ``report.problems`` says what is
        and how to fix it.

    Example:
        >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
        >>> tok = phi3_like_tokenizer()
        >>> check_formatted_text("<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello!<|end|>\\n<|endoftext|>", tok).ok
        True
        >>> report = check_formatted_text(["### Question: Hi\\n### Answer: Hello!"], tok)
        >>> report.without_markers, report.without_eos
        ((0,), (0,))
    """
    if isinstance(texts, str):
        items: list[Any] = [texts]
    elif hasattr(texts, "column_names") and not isinstance(texts, Mapping):
        if dataset_text_field not in (texts.column_names or []):
            raise FormatKitValueError(
                f"the dataset has no {dataset_text_field!r} column (columns: {texts.column_names}); pass "
                "dataset_text_field=NAME"
            )
        items = list(texts[dataset_text_field])
    else:
        items = list(texts)
    bad = [i for i, text in enumerate(items) if not isinstance(text, str)]
    if bad:
        raise FormatKitTypeError(
            f"formatted texts must be strings; item {bad[0]} is {type(items[bad[0]]).__name__}: "
            f"{preview(items[bad[0]])}"
        )

    eos = getattr(tokenizer, "eos_token", None)
    bos = getattr(tokenizer, "bos_token", None)
    notes: list[str] = []
    problems: list[str] = []
    markers, without_markers = _check_markers(items, tokenizer, problems, notes)

    without_eos: tuple[int, ...] = ()
    if eos:
        without_eos = tuple(i for i, text in enumerate(items) if not text.endswith(eos))
        if without_eos:
            first = without_eos[0]
            trailing = " (it ends with whitespace after EOS)" if items[first].rstrip().endswith(eos) else ""
            problems.append(
                f"{len(without_eos)} of {len(items)} texts do not end with the EOS token {eos!r}{trailing} (text "
                f"{first}: ...{preview(items[first][-60:])}). A model trained on them does not learn to stop. "
                "Fix: append tokenizer.eos_token to each text (recent trl SFTTrainer appends it to a text column; "
                "tokenizing the text yourself does not)"
            )
    else:
        notes.append("the tokenizer has no EOS token, so the end of the texts was not checked")

    double_bos: tuple[int, ...] = ()
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos and bos_id is not None:
        starting = [i for i, text in enumerate(items) if text.startswith(bos)]
        if starting and starts_with_double_bos(tokenizer, items[starting[0]]):
            double_bos = tuple(starting)
            problems.append(
                f"{len(double_bos)} of {len(items)} texts start with the BOS token {bos!r}, and the tokenizer "
                "adds another when tokenizing, so they start with two. Fix: drop the BOS from the text, or "
                "tokenize with add_special_tokens=False"
            )
    return FormattedTextReport(
        num_texts=len(items),
        markers=markers,
        eos_token=eos,
        without_markers=without_markers,
        without_eos=without_eos,
        double_bos=double_bos,
        problems=tuple(problems),
        notes=tuple(notes),
    )
