"""Packing: a stream of documents in, rows of exactly ``seq_length`` tokens out.

``ConstantLengthDataset`` is the class trl removed in 0.20, with trl 0.19's signature, output keys and
sequences (same inputs and ``random`` state: same rows, in the same order), and these differences:

- the documents' boundaries inside each row, opt-in (off by default, so trl 0.x code sees exactly the keys it
  saw, and the book's ``features: ['input_ids', 'labels']``): ``return_position_ids=True`` adds ``position_ids``
  that restart at 0 where each document (or its continuation from the previous row) starts and sets the label
  of each such start to ``-100``, so transformers' attention (its packed-sequence detection when no
  ``attention_mask`` is given, flash / varlen kernels) keeps packed documents apart, as with
  ``DataCollatorWithFlattening``; ``return_seq_lengths=True`` adds ``seq_lengths`` (the lengths of those
  pieces, summing to ``seq_length``), the key trl 1.x's packing writes and its collator (``padding_free=True``)
  and ``DataCollatorForCompletionOnlyLM`` read (trl's ``SFTTrainer`` drops a ``position_ids`` column);
- ``len()`` is the exact number of rows one pass yields (trl 0.x returned the number of *documents*, which made
  every learning-rate schedule and epoch count wrong); see the class docstring;
- bad input is an error that names the value: no text field and no formatting function, a formatting function
  that returns something other than a string or token ids, a concatenation token outside the vocabulary, a
  dataset too short to fill one row;
- the concatenation token is the tokenizer's EOS whenever it has one (trl 0.x ignored an EOS of id 0);
- a buffer is tokenized in one batched call and cut into rows with numpy (no per-token Python loop);
- with several DataLoader workers each worker packs its own share of the buffers (trl 0.x yielded every row
  once per worker).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError, preview, warn
from .masking import IGNORE_INDEX

__all__ = ["ConstantLengthDataset"]

# A pass that drops more than this share of its tokens (each buffer's tail shorter than seq_length) says so.
_DROPPED_WARN_FRACTION = 0.1


class ConstantLengthDataset(IterableDataset):
    """Rows of exactly ``seq_length`` tokens, cut from a stream of documents (trl 0.x's packing dataset).

    Documents are read into a buffer of about ``seq_length * chars_per_token * num_of_sequences`` characters
    (``seq_length * num_of_sequences`` tokens when the documents are token ids), shuffled, tokenized in one
    batched call, joined with the concatenation token after each document, and cut into rows of
    ``seq_length``; the buffer's last piece shorter than ``seq_length`` is dropped (as in trl 0.x: less than one
    row per buffer, counted in :attr:`tokens_dropped`), the rows shuffled again and yielded.

    Keys out (torch int64, shape ``(seq_length,)``): ``input_ids`` and ``labels`` (equal to the ids, as trl 0.x
    yielded them). With ``return_position_ids=True`` also ``position_ids`` (0 at each document start and at the
    row's start, counting up within a document) and ``labels`` set to ``-100`` at each of those starts. With
    ``return_seq_lengths=True`` also ``seq_lengths`` (a list of ints: the pieces' lengths, for trl 1.x's
    ``SFTTrainer`` with ``padding_free=True``; a plain ``DataLoader`` cannot stack it, use a collator that reads
    it). Which one: trl's ``SFTTrainer`` -> ``return_seq_lengths``; a ``Trainer`` / ``DataLoader`` with
    transformers' collators -> ``return_position_ids``.

    Length and learning-rate schedules: ``len(dataset)`` is the exact number of rows one pass yields. It is
    computed on first use by one tokenizing pass over the data (no shuffling: the count does not depend on it)
    and cached, so ``Trainer`` sizes epochs and schedules from real rows (trl 0.x reported the number of
    documents instead). With ``infinite=True``, or a dataset without a length (a streaming
    ``datasets.IterableDataset``, a generator), ``len()`` raises ``TypeError``: ``Trainer`` then needs
    ``max_steps``, and the schedule spans exactly ``max_steps`` optimizer steps whatever the data's size.

    Args:
        tokenizer: a ``transformers`` tokenizer (called on a list of strings).
        dataset: rows to iterate (a ``datasets.Dataset``/``IterableDataset``, or any re-iterable of rows).
        dataset_text_field: the column holding each row's text (or its token ids).
        formatting_func: ``row -> str`` (or ``row -> list[int]``); wins over ``dataset_text_field``.
        infinite: restart the dataset when it ends (never stops; use ``max_steps``).
        seq_length: tokens per row.
        num_of_sequences: rows' worth of text per buffer.
        chars_per_token: the characters-per-token estimate that sizes the buffer.
        eos_token_id: the concatenation token when the tokenizer has no EOS.
        shuffle: shuffle documents within a buffer and rows before yielding (Python's ``random``, as trl 0.x).
        append_concat_token: add the concatenation token after each document.
        add_special_tokens: let the tokenizer add its special tokens (BOS...) to each document.
        return_position_ids: also yield ``position_ids`` restarting per document, labels ``-100`` at starts.
        return_seq_lengths: also yield ``seq_lengths``, the lengths of the documents' pieces in the row.

    Raises:
        FormatKitValueError: neither ``dataset_text_field`` nor ``formatting_func``; sizes that are not
            positive; a concatenation token outside the vocabulary.
        FormatKitKeyError: ``dataset_text_field`` is not a column of the dataset.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<eos>"))
        >>> words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>")
        >>> docs = [{"text": "a b c"}, {"text": "b c"}, {"text": "c"}]
        >>> packed = ConstantLengthDataset(tokenizer, docs, dataset_text_field="text", seq_length=4, shuffle=False)
        >>> [row["input_ids"].tolist() for row in packed], len(packed)
        ([[1, 2, 3, 0], [2, 3, 0, 3]], 2)
        >>> packed = ConstantLengthDataset(tokenizer, docs, dataset_text_field="text", seq_length=4, shuffle=False,
        ...                                return_position_ids=True, return_seq_lengths=True)
        >>> {key: value if key == "seq_lengths" else value.tolist() for key, value in list(packed)[1].items()}
        {'input_ids': [2, 3, 0, 3], 'labels': [-100, 3, 0, -100], 'position_ids': [0, 1, 2, 0], 'seq_lengths': [3, 1]}
    """

    def __init__(
        self,
        tokenizer: Any,
        dataset: Any,
        dataset_text_field: str | None = None,
        formatting_func: Callable[[Any], Any] | None = None,
        infinite: bool = False,
        seq_length: int = 1024,
        num_of_sequences: int = 1024,
        chars_per_token: float = 3.6,
        eos_token_id: int = 0,
        shuffle: bool = True,
        append_concat_token: bool = True,
        add_special_tokens: bool = True,
        *,
        return_position_ids: bool = False,
        return_seq_lengths: bool = False,
    ):
        _check_positive_int(seq_length, "seq_length")
        _check_positive_int(num_of_sequences, "num_of_sequences")
        if isinstance(chars_per_token, bool) or not isinstance(chars_per_token, (int, float)) or chars_per_token <= 0:
            raise FormatKitValueError(f"chars_per_token must be a positive number, got {preview(chars_per_token)}")
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.infinite = infinite
        self.seq_length = seq_length
        self.num_of_sequences = num_of_sequences
        self.chars_per_token = chars_per_token
        self.shuffle = shuffle
        self.append_concat_token = append_concat_token
        self.add_special_tokens = add_special_tokens
        self.return_position_ids = return_position_ids
        self.return_seq_lengths = return_seq_lengths
        self.max_buffer_size = seq_length * chars_per_token * num_of_sequences  # characters (trl 0.x's name)
        self.formatting_func = _formatting_func(dataset, dataset_text_field, formatting_func)
        self.concat_token_id = _concat_token_id(tokenizer, eos_token_id, append_concat_token)
        self.current_size = 0  # rows yielded so far (trl 0.x's counter)
        self.tokens_packed = 0  # tokens yielded / dropped by the last finished pass
        self.tokens_dropped = 0
        self._length: int | None = None
        self._warned_dropped = False

    # -- length ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.infinite:
            raise TypeError(
                "an infinite ConstantLengthDataset has no length: set max_steps (TrainingArguments/SFTConfig) "
                "to size the run and its learning-rate schedule"
            )
        if not hasattr(self.dataset, "__len__"):
            raise TypeError(
                f"this ConstantLengthDataset reads a {type(self.dataset).__name__}, which has no length: set "
                "max_steps (TrainingArguments/SFTConfig) to size the run and its learning-rate schedule"
            )
        if self._length is None:
            self._length = sum(len(ids) // self.seq_length for ids, _ in self._packed_buffers(shuffle=False))
        return self._length

    # -- iteration ------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        share, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        packed = dropped = buffers = 0
        for ids, lengths in self._packed_buffers(shuffle=self.shuffle, share=(share, workers)):
            rows, positions = rows_from_tokens(ids, lengths, self.seq_length)
            packed, dropped, buffers = packed + rows.size, dropped + ids.size - rows.size, buffers + 1
            if self.infinite:  # no pass ends: say it as soon as it shows
                self._check_dropped(packed, dropped, buffers)
            order = list(range(len(rows)))
            if self.shuffle:  # shuffle again, otherwise pieces of one document come in consecutive rows
                random.shuffle(order)
            for i in order:
                self.current_size += 1
                yield self._example(rows[i], positions[i])
        self.tokens_packed, self.tokens_dropped = packed, dropped
        if packed == 0 and workers == 1:
            raise FormatKitValueError(
                f"ConstantLengthDataset yielded no row: the dataset holds {dropped} tokens, fewer than one row of "
                f"seq_length={self.seq_length}. Lower seq_length, add data, or set infinite=True."
            )
        self._check_dropped(packed, dropped, buffers)

    def _example(self, ids: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
        input_ids = torch.from_numpy(ids.copy())
        example: dict[str, Any] = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.return_position_ids:
            # a document's first token is never predicted from the previous document, which it can no longer see
            example["labels"] = torch.from_numpy(np.where(positions == 0, IGNORE_INDEX, ids))
            example["position_ids"] = torch.from_numpy(positions.copy())
        if self.return_seq_lengths:
            example["seq_lengths"] = np.diff(np.append(np.flatnonzero(positions == 0), ids.size)).tolist()
        return example

    def _check_dropped(self, packed: int, dropped: int, buffers: int) -> None:
        """Warn once when buffers' tails cost much; the single tail of a one-buffer pass is only counted."""
        total = packed + dropped
        if buffers > 1 and dropped > _DROPPED_WARN_FRACTION * total and not self._warned_dropped:
            self._warned_dropped = True
            warn(
                f"ConstantLengthDataset dropped {dropped} of {total} tokens ({dropped / total:.0%}) over {buffers} "
                f"buffers: each buffer's tail shorter than seq_length={self.seq_length} is dropped. Raise "
                f"num_of_sequences (now {self.num_of_sequences}) so that a buffer holds many rows."
            )

    # -- buffers --------------------------------------------------------------------------------------------
    def _packed_buffers(self, shuffle: bool, share: tuple[int, int] = (0, 1)) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One ``(flat token ids, document lengths)`` per buffer, documents joined by the concatenation token.

        ``share = (k, n)``: only buffers ``k, k + n, ...`` are tokenized (each DataLoader worker packs its own).
        """
        k, n = share
        for number, buffer in enumerate(self._buffers()):
            if number % n != k:
                continue
            if shuffle:
                order = list(range(len(buffer)))
                random.shuffle(order)  # the same permutation trl 0.x's random.shuffle(buffer) made
                buffer = [buffer[i] for i in order]
            yield join_documents(self._token_lists(buffer), self.concat_token_id if self.append_concat_token else None)

    def _buffers(self) -> Iterator[list[Any]]:
        """Lists of formatted documents (strings, or token-id arrays), each filling about one buffer."""
        iterator, since_restart = iter(self.dataset), 0
        limit = None  # the buffer budget, in characters or tokens: known at the first document
        while True:
            buffer, size = [], 0
            while limit is None or size < limit:
                try:
                    row = next(iterator)
                except StopIteration:
                    if not self.infinite:
                        if buffer:
                            yield buffer
                        return
                    if since_restart == 0:
                        raise FormatKitValueError(
                            "ConstantLengthDataset(infinite=True) got an empty dataset: nothing to repeat"
                        ) from None
                    iterator, since_restart = iter(self.dataset), 0
                    continue
                since_restart += 1
                document = self._format(row)
                if limit is None:
                    tokens = not isinstance(document, str)
                    limit = self.seq_length * self.num_of_sequences if tokens else self.max_buffer_size
                buffer.append(document)
                size += len(document)
            yield buffer

    def _format(self, row: Any) -> Any:
        document = self.formatting_func(row)
        if isinstance(document, str):
            return document
        if isinstance(document, (list, tuple, np.ndarray, torch.Tensor)):
            try:
                ids = np.asarray(document)
            except ValueError:  # ragged nesting
                ids = None
            if ids is not None and ids.ndim == 1 and (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
                return ids.astype(np.int64, copy=False)
        raise FormatKitTypeError(
            f"ConstantLengthDataset needs one document per row: a string, or a flat list of token ids; the "
            f"formatting gave {type(document).__name__} {preview(document)} for row {preview(row)}. A "
            "formatting_func here is called on ONE row and returns ONE string (not a list, as SFTTrainer's "
            "batched formatting functions do)."
        )

    def _token_lists(self, buffer: list[Any]) -> list[Any]:
        texts = [i for i, document in enumerate(buffer) if isinstance(document, str)]
        if not texts:
            return buffer
        if len(texts) != len(buffer):
            raise FormatKitTypeError(
                "ConstantLengthDataset got both strings and token ids from the formatting: every row must give "
                f"the same kind (first string at row {texts[0]} of the buffer: {preview(buffer[texts[0]])})"
            )
        encoded = self.tokenizer(
            buffer, add_special_tokens=self.add_special_tokens, truncation=False, return_attention_mask=False
        )
        return encoded["input_ids"]


# -- pure helpers ------------------------------------------------------------------------------------------------
def join_documents(documents: Sequence[Any], concat_token_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Documents' token ids joined into one array, ``concat_token_id`` after each; and each one's length.

    Example:
        >>> ids, lengths = join_documents([[5, 6], [7]], concat_token_id=0)
        >>> ids.tolist(), lengths.tolist()
        ([5, 6, 0, 7, 0], [3, 2])
        >>> join_documents([[5, 6], [7]], None)[0].tolist()
        [5, 6, 7]
    """
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    if documents and isinstance(documents[0], np.ndarray):
        tokens = np.concatenate(documents).astype(np.int64, copy=False)
    else:  # lists from the tokenizer: one C-level pass over all ids
        tokens = np.fromiter(itertools.chain.from_iterable(documents), dtype=np.int64, count=int(lengths.sum()))
    if concat_token_id is None:
        return tokens, lengths
    lengths = lengths + 1
    ends = np.cumsum(lengths) - 1
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    ids[ends] = concat_token_id
    body = np.ones(ids.size, dtype=bool)
    body[ends] = False
    ids[body] = tokens
    return ids, lengths


def rows_from_tokens(ids: np.ndarray, lengths: np.ndarray, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut joined documents into full rows of ``seq_length`` (the short tail is dropped), with position ids
    restarting at each document's start and at each row's start.

    Example:
        >>> rows, positions = rows_from_tokens(np.arange(10, 17), np.array([4, 3]), 3)
        >>> rows.tolist()
        [[10, 11, 12], [13, 14, 15]]
        >>> positions.tolist()
        [[0, 1, 2], [0, 0, 1]]
    """
    n_rows = ids.size // seq_length
    used = n_rows * seq_length
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    index = np.arange(used, dtype=np.int64)
    document_start = np.repeat(starts, lengths)[:used]
    row_start = index - index % seq_length
    positions = index - np.maximum(document_start, row_start)
    return ids[:used].reshape(n_rows, seq_length), positions.reshape(n_rows, seq_length)


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise FormatKitValueError(f"{name} must be a positive integer, got {preview(value)}")


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def _formatting_func(dataset: Any, field: str | None, func: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if func is not None:
        if not callable(func):
            raise FormatKitTypeError(f"formatting_func must be callable (row -> str), got {preview(func)}")
        if field is not None:
            warn(
                "Only one of `dataset_text_field` and `formatting_func` should be provided. "
                f"Ignoring `dataset_text_field` ({field!r}) and using `formatting_func`."
            )
        return func
    columns = _column_names(dataset)
    if field is None:
        hint = f" (the dataset's columns: {columns})" if columns is not None else ""
        raise FormatKitValueError(
            "Either `dataset_text_field` or `formatting_func` should be provided: name the column that holds "
            f"each row's text (or token ids){hint}, or pass formatting_func=lambda row: ... returning one string"
        )
    if columns is not None and field not in columns:
        raise FormatKitKeyError(
            f"dataset_text_field={field!r} is not a column of the dataset; its columns: {columns}"
        )
    return _FieldGetter(field)


class _FieldGetter:
    """``row -> row[field]``, picklable (``Dataset.from_generator`` hashes its arguments)."""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, row: Any) -> Any:
        return row[self.field]


def _concat_token_id(tokenizer: Any, eos_token_id: int, append: bool) -> int:
    own = getattr(tokenizer, "eos_token_id", None)
    token_id = own if own is not None else eos_token_id
    if not append:
        return token_id
    vocab = len(tokenizer)
    if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) or not 0 <= token_id < vocab:
        raise FormatKitValueError(
            f"eos_token_id={preview(token_id)} is not a token id of this tokenizer (0 <= id < {vocab}); pass the "
            "id of the token that separates documents, or append_concat_token=False"
        )
    if own is None and token_id not in set(getattr(tokenizer, "all_special_ids", ())):
        warn(
            f"the tokenizer has no EOS token, so documents are joined with eos_token_id={token_id} "
            f"({preview(tokenizer.convert_ids_to_tokens(int(token_id)))}), which is not a special token: the model "
            "learns it as text between documents. Pass the id of a separator token (or set tokenizer.eos_token)."
        )
    return int(token_id)
