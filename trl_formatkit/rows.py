"""Rows in, one flat array of token ids out: the collator's first step, with every id checked.

A batch arrives as rows in whatever form a dataset, a DataLoader or a user hands them over (dicts of lists, numpy
arrays, tensors, Arrow or pandas sequences, pre-padded rows with an ``attention_mask``, rows packed by trl with
``seq_lengths``). :func:`flatten_rows` lays them end to end as one int64 array plus the lengths the masking
engine needs, checking every id on the way with vectorised passes (no per-token Python on the hot path).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError, preview

__all__ = ["flatten_rows", "COMPUTED_KEYS"]

# Keys the collator computes itself; an incoming value is replaced (labels are recomputed from the templates,
# the padding-free metadata from the lengths) or consumed (attention_mask strips pre-padding, seq_lengths splits
# packed rows). A row's own number under one of these names is never passed through.
COMPUTED_KEYS = frozenset(
    {"input_ids", "labels", "attention_mask", "position_ids", "seq_lengths", "completion_mask", "assistant_masks",
     "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"}
)  # fmt: skip

def flatten_rows(examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """All rows' ids end to end (int64), the rows' lengths, the sequences' lengths, and pass-through extras.

    Rows are dicts with ``input_ids`` (and optionally ``attention_mask``, ``seq_lengths``, other keys) or the ids
    alone: lists, numpy arrays, tensors, Arrow or pandas sequences. Every id of every row is checked: a float, a
    string, a bool, None, a nested list or an id past int64 is an error naming the row and the position.

    Example:
        >>> rows = [{"input_ids": [5, 6, 7], "idx": 0}, {"input_ids": [8, 9], "idx": 1}]
        >>> flat, row_lengths, seq_lengths, extras = flatten_rows(rows)
        >>> flat.tolist(), row_lengths.tolist(), extras["idx"].tolist()
        ([5, 6, 7, 8, 9], [3, 2], [0, 1])
        >>> flatten_rows([[5, 6.5]])
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitTypeError: row 0's input_ids contain 6.5 (float) at position 1, which is not an int token id; pass the ids the tokenizer returned (lists of ints, integer numpy arrays or tensors)
    """
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence) or isinstance(examples, str):
        if isinstance(examples, Mapping) and "input_ids" in examples:
            raise FormatKitTypeError(
                "the collator got one dict of columns; it takes a list of rows, one dict per row: "
                "collator([dataset[i] for i in range(n)]) or DataLoader(dataset, collate_fn=collator)"
            )
        raise FormatKitTypeError(f"the collator takes a list of rows, got {type(examples).__name__}")
    if len(examples) == 0:
        raise FormatKitValueError("the collator got an empty batch (no rows)")
    rows, packed, extras = _split_rows(examples)
    if all(type(r) is list for r in rows):
        flat, row_lengths = _flat_from_lists(rows)
    else:
        arrays = [_as_int_array(r, i) for i, r in enumerate(rows)]
        row_lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays).astype(np.int64, copy=False)
    if int(flat.min()) < 0:
        bad = int(np.flatnonzero(flat < 0)[0])
        row = int(np.searchsorted(np.cumsum(row_lengths), bad, side="right"))
        raise FormatKitValueError(
            f"row {row} contains the negative token id {int(flat[bad])}: input_ids must be vocabulary ids "
            "(labels use -100, not input_ids)"
        )
    seq_lengths = _seq_lengths(row_lengths, packed) if packed else row_lengths
    return flat, row_lengths, seq_lengths, _numeric_extras(extras, len(rows))


def _split_rows(examples: Sequence[Any]) -> tuple[list[Any], dict[int, Any], dict[str, list[Any]]]:
    """Each row's ids (pre-padding stripped), the packed rows' ``seq_lengths``, and the other keys' values."""
    rows: list[Any] = []
    packed: dict[int, Any] = {}
    extras: dict[str, list[Any]] = {}
    for i, example in enumerate(examples):
        if type(example) is not dict and not isinstance(example, Mapping):
            example = _as_row(example)
        if not isinstance(example, Mapping):
            rows.append(example)
            continue
        if "input_ids" not in example:
            raise FormatKitValueError(
                f"row {i} has no 'input_ids' (keys: {sorted(map(str, example))}); tokenize the text first, for "
                "example dataset.map(lambda row: tokenizer(row['text']))"
            )
        ids = example["input_ids"]
        mask = example.get("attention_mask")
        if mask is not None:
            ids = _strip_padding(ids, mask, i)
        if example.get("seq_lengths") is not None:
            packed[i] = example["seq_lengths"]
        for key, value in example.items():
            if key not in COMPUTED_KEYS:
                extras.setdefault(key, []).append(value)
        rows.append(ids)
    return rows, packed, extras


def _as_row(example: Any) -> Any:
    """A pandas DataFrame row or an Arrow scalar as the dict or list it holds; anything else unchanged."""
    if type(example) is list:
        return example
    if hasattr(example, "as_py"):  # pyarrow scalar: a struct row -> dict, a list of ids -> list
        return example.as_py()
    index = getattr(example, "index", None)
    if hasattr(example, "to_dict") and index is not None and "input_ids" in list(index):
        return example.to_dict()  # a pandas Series that is a DataFrame row
    return example


def _flat_from_lists(
    rows: list[list[Any]], first_row: int = 0, what: str = "input_ids"
) -> tuple[np.ndarray, np.ndarray]:
    """Rows given as Python lists, end to end, with every id checked: one numpy pass, no per-token Python."""
    row_lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if not row_lengths.all():
        i = first_row + int(np.flatnonzero(row_lengths == 0)[0])
        raise FormatKitValueError(_EMPTY_ROW.format(i=i) if what == "input_ids" else f"row {i}'s {what} is empty")
    # sum() stays an int only when every value is one (a float, str, None or list makes it something else, or
    # raises); bools are ints to sum() and to numpy, so the few 0/1 ids are looked at one by one
    try:
        ok = all(type(total) is int or isinstance(total, np.integer) for total in map(sum, rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(row_lengths.sum()))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok:
        low = np.flatnonzero(flat <= 1).tolist()
        if low:
            values = list(itertools.chain.from_iterable(rows)) if len(rows) > 1 else rows[0]
            ok = not _BOOLS & set(map(type, operator.itemgetter(*low, low[0])(values)))
    if not ok:
        error = _bad_id_error(rows, first_row, what)
        if error is not None:
            raise error
        flat = np.array([int(x) for x in itertools.chain.from_iterable(rows)], dtype=np.int64)
    return flat.astype(np.int64, copy=False), row_lengths


def _bad_id_error(rows: Sequence[Sequence[Any]], first_row: int = 0, what: str = "input_ids") -> Exception | None:
    """The error for the first value that is not an int64 token id (the slow path, only taken on bad input)."""
    for i, row in enumerate(rows, start=first_row):
        for j, x in enumerate(row):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                return FormatKitTypeError(
                    f"row {i}'s {what} contain {preview(x, 60)} ({type(x).__name__}) at position {j}, which is not "
                    f"an int token id; pass the ids the tokenizer returned (lists of ints, integer numpy arrays "
                    "or tensors)"
                )
            if x > np.iinfo(np.int64).max:
                return FormatKitValueError(
                    f"row {i}'s {what} contain {x} at position {j}, too large for a token id (int64); pass the ids "
                    "the tokenizer returned"
                )
    return None


_BOOLS = frozenset({bool, np.bool_})
_EMPTY_ROW = (
    "row {i} has no tokens; drop empty rows before training, for example "
    "dataset.filter(lambda row: len(row['input_ids']) > 0)"
)


def _as_int_array(value: Any, i: int, what: str = "input_ids") -> np.ndarray:
    """One row's ids (a tensor, an array, an Arrow or pandas sequence, a list) as a 1-D int array, checked."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)):
        raise FormatKitTypeError(
            f"row {i} is a string ({preview(value, 60)}), not token ids; the collator takes token ids: tokenize "
            "it first (tokenizer(text)['input_ids'])"
        )
    value = _as_row(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "O" and value.ndim == 1:
        value = value.tolist()  # an object array: its values are checked like a list's
    if isinstance(value, list):
        return _flat_from_lists([value], i, what)[0]
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise _shape_error(arr, value, i, what)
    if arr.size == 0:
        raise FormatKitValueError(_EMPTY_ROW.format(i=i) if what == "input_ids" else f"row {i}'s {what} is empty")
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max):
        raise _bad_id_error([arr.tolist()], i, what) or FormatKitTypeError(
            f"row {i}'s {what} have dtype {arr.dtype}, not an integer dtype"
        )
    return arr


def _shape_error(arr: np.ndarray, value: Any, i: int, what: str) -> Exception:
    if arr.ndim == 0:
        kind = "a single int" if isinstance(value, (int, np.integer)) else f"a {type(value).__name__}"
        return FormatKitTypeError(
            f"row {i} is {kind} ({preview(value, 60)}), not a list of token ids; each row is a list of ids or a "
            "dict with 'input_ids'"
        )
    hint = ". If you tokenized with return_tensors='pt', drop it (or pass ids[0])" if arr.shape[0] == 1 else ""
    return FormatKitValueError(f"row {i}'s {what} has shape {tuple(arr.shape)}; each row must be 1-D{hint}")


def _seq_lengths(row_lengths: np.ndarray, packed: dict[int, Any]) -> np.ndarray:
    """The sequences' lengths: a packed row's ``seq_lengths``, one sequence for any other row."""
    parts = []
    for i, n in enumerate(row_lengths.tolist()):
        if i in packed:
            lens = _as_int_array(packed[i], i, what="seq_lengths")
            if int(lens.sum()) != n or (lens <= 0).any():
                raise FormatKitValueError(
                    f"row {i}: seq_lengths {lens.tolist()} must be positive and add up to the row's {n} tokens"
                )
            parts.append(lens)
        else:
            parts.append(np.array([n], dtype=np.int64))
    return np.concatenate(parts).astype(np.int64, copy=False)


def _strip_padding(ids: Any, mask: Any, i: int) -> Any:
    """Drop the padding a pre-padded row marks with attention_mask == 0 at its start or end.

    A 0 between 1s is not padding: dropping that token would change the text, keeping it would attend to what the
    mask hides, so it is refused.
    """
    mask_arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if mask_arr.all():
        return ids
    ids_arr = _as_int_array(ids, i)
    if mask_arr.shape != ids_arr.shape:
        raise FormatKitValueError(
            f"row {i}: attention_mask has shape {tuple(mask_arr.shape)} but input_ids {tuple(ids_arr.shape)}"
        )
    kept = np.flatnonzero(mask_arr)
    if kept.size and kept.size != int(kept[-1]) - int(kept[0]) + 1:
        hole = int(kept[0]) + int(np.flatnonzero(np.diff(kept) > 1)[0]) + 1
        raise FormatKitValueError(
            f"row {i}: attention_mask has a 0 at position {hole} between 1s; only padding at the start or end of "
            "a row can be dropped. Remove such tokens from input_ids (and the mask) before collating, or give "
            "the row without its attention_mask"
        )
    return ids_arr[int(kept[0]) : int(kept[-1]) + 1] if kept.size else ids_arr[:0]


def _numeric_extras(extras: dict[str, list[Any]], n_rows: int) -> dict[str, np.ndarray]:
    out = {}
    for key, values in extras.items():
        if len(values) == n_rows and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
        ):
            out[key] = np.asarray(values)
    return out
