"""Collators: token ids in, padded or flattened (padding-free) batches with completion-only labels out.

``DataCollatorForCompletionOnlyLM`` is the collator trl removed in 0.20, with trl 0.19's signature and output
keys, and these differences:

- templates are also found as they tokenize *inside* text (``match_in_context=True``, the default);
- the labels of padding come from lengths, never from comparing ids with the pad id, so an EOS equal to PAD is
  still trained;
- multi-turn masking is a clean rule (trained = after a response template, until the next instruction
  template), optional ``end_template``, several instruction templates;
- ``padding_free=True`` also returns ``cu_seq_lens_q/k``, ``max_length_q/k`` and ``seq_idx`` like trl 1.x;
- rows that train nothing are reported once per batch with a decoded preview and the fix.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning, TemplateNotFoundError
from .masking import (
    IGNORE_INDEX,
    TemplateSpec,
    as_template_list,
    completion_mask_from_templates,
    cu_seq_lens_from_lengths,
    labels_from_mask,
    position_ids_from_lengths,
    real_token_mask,
    seq_idx_from_lengths,
    template_variants,
)

__all__ = ["DataCollatorForCompletionOnlyLM"]

# Per-token keys the collator computes itself; an incoming value is replaced (labels are recomputed from the
# templates) or consumed (attention_mask strips pre-padding, seq_lengths splits packed rows).
_COMPUTED_KEYS = frozenset(
    {"input_ids", "labels", "attention_mask", "position_ids", "seq_lengths", "completion_mask", "assistant_masks"}
)
_PREVIEW_CHARS = 300


@dataclass
class DataCollatorForCompletionOnlyLM:
    """Completion-only labels for causal LM fine-tuning: prompts masked with ``-100``, answers trained.

    Keys in (per example): ``input_ids`` (list of ints, numpy array or tensor), or the ids alone. Optional:
    ``attention_mask`` (pre-padded rows: positions with 0 are dropped before collating), ``seq_lengths``
    (rows packed by trl's BFD packing: each part is its own sequence; templates never match across parts),
    ``labels`` / ``completion_mask`` / ``assistant_masks`` (replaced by labels computed from the templates),
    ``position_ids`` (recomputed). Other keys whose values are plain numbers (an ``idx``) are passed through
    as a tensor of shape ``(batch,)``; anything else is dropped.

    Keys out, padded (default): ``input_ids``, ``attention_mask``, ``labels``, all ``(batch, max_len)`` int64,
    padded on ``tokenizer.padding_side`` (to ``pad_to_multiple_of`` if set); ``position_ids`` too when rows
    are packed (``seq_lengths``).

    Keys out, ``padding_free=True``: ``input_ids``, ``labels``, ``position_ids`` of shape ``(1, total_tokens)``
    (positions restart at 0 for every sequence and the first label of every sequence is ``-100``);
    ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (1-D int32, starting at 0), ``max_length_q`` / ``max_length_k``
    (int) and ``seq_idx`` (``(1, total_tokens)`` int32), so flash/varlen attention needs no recomputation. No
    ``attention_mask``. With ``pad_to_multiple_of``, the padding tokens form one last dummy sequence.

    Masking rules:

    - response template only (single turn, trl's rule): everything up to and including the *last* response
      template is masked;
    - with ``instruction_template`` (one or a list: user, system, tool turns): a token is trained when the
      closest template before it is a response template;
    - with ``end_template`` (for example ``"<|end|>"``): train from each response template up to and including
      the next end template, whatever order the turns come in.

    Args:
        response_template: string or token ids (or a list of several) that start an assistant answer.
        instruction_template: string or ids (or a list of several) that start a turn not to train on.
        tokenizer: the tokenizer that made the ids (keyword only): encodes string templates, gives the pad id
            and the padding side, decodes previews in warnings.
        mlm: must be False (kept for trl's signature).
        ignore_index: the label of ignored tokens.
        padding_free: flatten the batch into one row (no padding, no attention mask).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays).
        match_in_context: also find string templates as they tokenize inside text; False reproduces trl
            0.19's exact matching.
        on_missing: what to do with a row where a template is not found (or nothing is trained): ``"warn"``
            (trl's behaviour: its labels are all ``ignore_index``; one warning per batch), ``"raise"``,
            ``"ignore"``.
        end_template: string or ids (or several) that end an assistant answer (trained, inclusive).

    Raises:
        FormatKitValueError / FormatKitTypeError: bad configuration or bad rows, naming the value and the fix.
        TemplateNotFoundError: with ``on_missing="raise"``, a row without the templates.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> vocab = {"<pad>": 0, "<eos>": 1, "<user>": 2, "<bot>": 3, "hi": 4, "hello": 5, "bye": 6}
        >>> backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
        >>> collator = DataCollatorForCompletionOnlyLM("<bot>", tokenizer=tok, return_tensors="np")
        >>> batch = collator([{"input_ids": [2, 4, 3, 5, 1]}, {"input_ids": [2, 6, 3, 6]}])
        >>> batch["labels"].tolist()
        [[-100, -100, -100, 5, 1], [-100, -100, -100, 6, -100]]
        >>> batch["attention_mask"].tolist()
        [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
        >>> flat = DataCollatorForCompletionOnlyLM("<bot>", tokenizer=tok, padding_free=True, return_tensors="np")
        >>> batch = flat([[2, 4, 3, 5, 1], [2, 6, 3, 6]])
        >>> batch["labels"].tolist(), batch["position_ids"].tolist(), batch["cu_seq_lens_q"].tolist()
        ([[-100, -100, -100, 5, 1, -100, -100, -100, 6]], [[0, 1, 2, 3, 4, 0, 1, 2, 3]], [0, 5, 9])
    """

    response_template: TemplateSpec
    instruction_template: TemplateSpec | None = None
    _: KW_ONLY
    tokenizer: Any = None
    mlm: bool = False
    ignore_index: int = IGNORE_INDEX
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: Literal["pt", "np"] = "pt"
    match_in_context: bool = True
    on_missing: Literal["warn", "raise", "ignore"] = "warn"
    end_template: TemplateSpec | None = None
    # derived in __post_init__
    response_token_ids: list[int] = field(init=False, repr=False)
    instruction_token_ids: list[int] | None = field(init=False, repr=False)
    _response_variants: list[tuple[int, ...]] = field(init=False, repr=False)
    _instruction_variants: list[tuple[int, ...]] = field(init=False, repr=False)
    _end_variants: list[tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            raise FormatKitTypeError(
                "DataCollatorForCompletionOnlyLM needs the tokenizer that made the ids: "
                "DataCollatorForCompletionOnlyLM(response_template, tokenizer=tokenizer)"
            )
        if self.mlm:
            raise FormatKitValueError(
                "mlm=True is not supported: completion-only training is causal language modelling; drop mlm or "
                "pass mlm=False"
            )
        if self.on_missing not in ("warn", "raise", "ignore"):
            raise FormatKitValueError(f"on_missing must be 'warn', 'raise' or 'ignore', got {self.on_missing!r}")
        if self.return_tensors not in ("pt", "np"):
            raise FormatKitValueError(f"return_tensors must be 'pt' or 'np', got {self.return_tensors!r}")
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1
        ):
            raise FormatKitValueError(
                f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}"
            )
        if not isinstance(self.ignore_index, int):
            raise FormatKitTypeError(f"ignore_index must be an int, got {self.ignore_index!r}")
        self._response_variants = self._encode(self.response_template, "response_template")
        if not self._response_variants:
            raise FormatKitValueError(
                "response_template is required: the text (or token ids) that starts an assistant answer, for "
                "example '<|assistant|>' or '### Answer:'"
            )
        self._instruction_variants = self._encode(self.instruction_template, "instruction_template")
        self._end_variants = self._encode(self.end_template, "end_template")
        clash = set(self._response_variants) & set(self._instruction_variants)
        if clash:
            raise FormatKitValueError(
                f"response_template and instruction_template share the token ids {sorted(clash)}: the collator "
                "could not tell a user turn from an assistant turn; use distinct templates"
            )
        # trl 0.19 attributes, kept for code that reads them
        first = as_template_list(self.response_template)[0]
        self.response_token_ids = list(self._exact(first))
        instructions = as_template_list(self.instruction_template)
        self.instruction_token_ids = list(self._exact(instructions[0])) if instructions else None

    # -- templates -----------------------------------------------------------------------------------------
    def _exact(self, template: str | tuple[int, ...]) -> tuple[int, ...]:
        if isinstance(template, str):
            return tuple(self.tokenizer.encode(template, add_special_tokens=False))
        return template

    def _encode(self, spec: TemplateSpec | None, name: str) -> list[tuple[int, ...]]:
        variants: list[tuple[int, ...]] = []
        for template in as_template_list(spec, name):
            if isinstance(template, str):
                if not template:
                    raise FormatKitValueError(f"{name} is an empty string: give the text that marks the turn")
                found = template_variants(self.tokenizer, template, match_in_context=self.match_in_context)
            else:
                found = [template]
            variants += [v for v in found if v not in variants]
        return variants

    # -- collation -----------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Any], return_tensors: str | None = None) -> dict[str, Any]:
        return_tensors = return_tensors or self.return_tensors
        flat, row_lengths, seq_lengths, extras = _flatten(examples)
        mask, has_response, has_instruction = completion_mask_from_templates(
            flat, seq_lengths, self._response_variants, self._instruction_variants, self._end_variants
        )
        starts = np.zeros(seq_lengths.shape[0], dtype=np.int64)
        np.cumsum(seq_lengths[:-1], out=starts[1:])
        # The first token of a sequence is never a target: nothing before it in the sequence predicts it.
        mask[starts] = False
        problem = ~has_response | ~has_instruction
        trained = np.add.reduceat(mask, starts, dtype=np.int64)
        empty = ~problem & (trained == 0)
        if problem.any() or empty.any():
            if problem.any():
                mask &= ~np.repeat(problem, seq_lengths)  # trl's behaviour: such a row trains nothing
            self._report(flat, seq_lengths, starts, has_response, has_instruction, empty)
        labels = labels_from_mask(flat, mask, self.ignore_index)

        if self.padding_free:
            out = self._flat_batch(flat, labels, seq_lengths)
        else:
            out = self._padded_batch(flat, labels, row_lengths, seq_lengths)
        out.update(extras)
        return _to_tensors(out) if return_tensors == "pt" else out

    # trl/transformers collators expose these; old code calls them directly
    def torch_call(self, examples: Sequence[Any]) -> dict[str, Any]:
        return self(examples, return_tensors="pt")

    def numpy_call(self, examples: Sequence[Any]) -> dict[str, Any]:
        return self(examples, return_tensors="np")

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            unk = getattr(self.tokenizer, "unk_token", None)
            hint = (
                f"tokenizer.pad_token = {unk!r} (its UNK token)"
                if unk is not None and unk != getattr(self.tokenizer, "eos_token", None)
                else "trl_formatkit.fix_special_tokens(tokenizer)"
            )
            raise FormatKitValueError(
                f"{type(self.tokenizer).__name__} has no pad token, which padding needs. Set one that is not "
                f"the EOS token: {hint}, or use padding_free=True"
            )
        return int(pad)

    def _flat_batch(self, flat: np.ndarray, labels: np.ndarray, seq_lengths: np.ndarray) -> dict[str, Any]:
        lengths = seq_lengths
        n = int(flat.shape[0])
        multiple = self.pad_to_multiple_of
        extra = (-n % multiple) if multiple else 0
        if extra:  # padding becomes one last dummy sequence: masked out of the loss, attends only to itself
            flat = np.concatenate([flat, np.full(extra, self._pad_id(), dtype=flat.dtype)])
            labels = np.concatenate([labels, np.full(extra, self.ignore_index, dtype=labels.dtype)])
            lengths = np.append(seq_lengths, extra)
        cu_seq_lens = cu_seq_lens_from_lengths(lengths)
        max_length = int(lengths.max())
        return {
            "input_ids": flat[None, :],
            "labels": labels[None, :],
            "position_ids": position_ids_from_lengths(lengths)[None, :],
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length,
            "max_length_k": max_length,
            "seq_idx": seq_idx_from_lengths(lengths)[None, :],
        }

    def _padded_batch(
        self, flat: np.ndarray, labels: np.ndarray, row_lengths: np.ndarray, seq_lengths: np.ndarray
    ) -> dict[str, Any]:
        side = getattr(self.tokenizer, "padding_side", "right")
        width = int(row_lengths.max())
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_rows = row_lengths.shape[0]
        real = real_token_mask(row_lengths, width, side)
        needs_pad = width * n_rows != flat.shape[0]
        input_ids = np.full((n_rows, width), self._pad_id() if needs_pad else 0, dtype=np.int64)
        input_ids[real] = flat
        padded_labels = np.full((n_rows, width), self.ignore_index, dtype=np.int64)
        padded_labels[real] = labels
        attention_mask = real.astype(np.int64)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": padded_labels}
        if seq_lengths.shape[0] != n_rows:  # packed rows: positions restart with every packed sequence
            position_ids = np.zeros((n_rows, width), dtype=np.int64)
            position_ids[real] = position_ids_from_lengths(seq_lengths)
            out["position_ids"] = position_ids
        return out

    # -- reporting -----------------------------------------------------------------------------------------
    def _report(
        self,
        flat: np.ndarray,
        seq_lengths: np.ndarray,
        starts: np.ndarray,
        has_response: np.ndarray,
        has_instruction: np.ndarray,
        empty: np.ndarray,
    ) -> None:
        if self.on_missing == "ignore":
            return
        n_seq = seq_lengths.shape[0]
        lines = []
        no_response = np.flatnonzero(~has_response)
        no_instruction = np.flatnonzero(has_response & ~has_instruction)
        if no_response.size:
            lines.append(self._missing_line("response_template", self.response_template, no_response, flat,
                                            starts, seq_lengths))
        if no_instruction.size:
            lines.append(self._missing_line("instruction_template", self.instruction_template, no_instruction,
                                            flat, starts, seq_lengths))
        if empty.any():
            rows = np.flatnonzero(empty)
            i = int(rows[0])
            lines.append(
                f"- {rows.size} row(s) (first: row {i}) contain the response template but nothing after it to "
                f"train, usually because they were cut at max_length: {self._preview(flat, starts, seq_lengths, i)}"
                "\n  Fix: raise max_length, or filter rows longer than it before training."
            )
        count = int(no_response.size + no_instruction.size + empty.sum())
        message = (
            f"DataCollatorForCompletionOnlyLM: {count} of {n_seq} sequence(s) in this batch train nothing; their "
            f"labels are all {self.ignore_index} (ignored in the loss).\n" + "\n".join(lines) + "\n"
            "Set on_missing='raise' to stop on such rows, or on_missing='ignore' to silence this warning."
        )
        if self.on_missing == "raise":
            raise TemplateNotFoundError(message)
        warnings.warn(message, FormatKitWarning, stacklevel=3)

    def _preview(self, flat: np.ndarray, starts: np.ndarray, seq_lengths: np.ndarray, i: int) -> str:
        ids = flat[starts[i] : starts[i] + seq_lengths[i]]
        text = self.tokenizer.decode(ids.tolist())
        if len(text) > _PREVIEW_CHARS:
            text = text[:_PREVIEW_CHARS] + "..."
        return repr(text)

    def _missing_line(
        self,
        name: str,
        spec: TemplateSpec,
        rows: np.ndarray,
        flat: np.ndarray,
        starts: np.ndarray,
        seq_lengths: np.ndarray,
    ) -> str:
        i = int(rows[0])
        variants = self._response_variants if name == "response_template" else self._instruction_variants
        shown = ", ".join(str(list(v)) for v in variants[:4]) + (", ..." if len(variants) > 4 else "")
        line = (
            f"- {name} {spec!r} (searched as token ids {shown}) not found in {rows.size} row(s); first, row {i}: "
            f"{self._preview(flat, starts, seq_lengths, i)}"
        )
        text = self.tokenizer.decode(flat[starts[i] : starts[i] + seq_lengths[i]].tolist())
        in_text = [t for t in as_template_list(spec) if isinstance(t, str) and t.strip() and t.strip() in text]
        if in_text:
            ids = _ids_in_text(self.tokenizer, text, in_text[0].strip())
            hint = "set match_in_context=True (the default), " if not self.match_in_context else ""
            line += (
                "\n  The template text is in the row but tokenizes differently there"
                + (f" (as {ids})" if ids else "")
                + f". Fix: {hint}pass the ids as they appear in the row"
                + (f" (response_template={ids})" if ids and name == "response_template" else "")
                + ", or add the template as one special token "
                "(tokenizer.add_special_tokens({'additional_special_tokens': [...]}) and resize the embeddings)."
            )
        else:
            line += (
                "\n  Fix: check that the template matches how your rows are formatted (the chat template or "
                "formatting function), and that rows are not cut before it at max_length."
            )
        return line

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **collator_kwargs: Any) -> DataCollatorForCompletionOnlyLM:
        """A collator with the response, instruction and end templates of the tokenizer's own chat template.

        The templates come from :func:`trl_formatkit.structure.find_template_markers` (a probe conversation
        rendered with the template); ``collator_kwargs`` are the collator's other fields and win over them.

        Example:
            >>> from trl_formatkit._toy import toy_tokenizer
            >>> from trl_formatkit import add_chat_template
            >>> collator = DataCollatorForCompletionOnlyLM.from_tokenizer(add_chat_template(toy_tokenizer()))
            >>> collator.response_template, collator.instruction_template, collator.end_template
            ('<s>assistant\\n', '<s>user\\n', '</s>')
        """
        from .structure import find_template_markers

        kwargs: dict[str, Any] = {**find_template_markers(tokenizer), **collator_kwargs}
        return cls(kwargs.pop("response_template"), kwargs.pop("instruction_template"), tokenizer=tokenizer, **kwargs)


def _ids_in_text(tokenizer: Any, text: str, needle: str) -> list[int] | None:
    """Ids of the tokens covering the first ``needle`` in ``text``, as the tokenizer splits the whole text."""
    at = text.find(needle)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    end = at + len(needle)
    ids = [t for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if b > at and a < end]
    return ids or None


def _flatten(examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """All rows' ids end to end, the rows' lengths, the sequences' lengths, and pass-through extras."""
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence) or isinstance(examples, str):
        if isinstance(examples, Mapping) and "input_ids" in examples:
            raise FormatKitTypeError(
                "the collator got one dict of columns; it takes a list of rows, one dict per row: "
                "collator([dataset[i] for i in range(n)]) or DataLoader(dataset, collate_fn=collator)"
            )
        raise FormatKitTypeError(f"the collator takes a list of rows, got {type(examples).__name__}")
    if len(examples) == 0:
        raise FormatKitValueError("the collator got an empty batch (no rows)")
    rows: list[Any] = []
    packed: dict[int, Any] = {}
    extras: dict[str, list[Any]] = {}
    for i, example in enumerate(examples):
        if isinstance(example, Mapping):
            if "input_ids" not in example:
                raise FormatKitValueError(
                    f"row {i} has no 'input_ids' (keys: {sorted(example)}); tokenize the text first, for example "
                    "dataset.map(lambda row: tokenizer(row['text']))"
                )
            ids = example["input_ids"]
            mask = example.get("attention_mask")
            if mask is not None:
                ids = _strip_padding(ids, mask, i)
            if example.get("seq_lengths") is not None:
                packed[i] = example["seq_lengths"]
            for key, value in example.items():
                if key not in _COMPUTED_KEYS:
                    extras.setdefault(key, []).append(value)
        else:
            ids = example
        rows.append(ids)

    if all(type(r) is list for r in rows):
        for i, r in enumerate(rows):
            if not r:
                raise FormatKitValueError(_EMPTY_ROW.format(i=i))
            if not (_is_int_token(r[0]) and _is_int_token(r[-1])):
                raise FormatKitTypeError(_NOT_INT.format(i=i, value=r[0] if not _is_int_token(r[0]) else r[-1]))
        row_lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(row_lengths.sum()))
    else:
        arrays = [_as_int_array(r, i) for i, r in enumerate(rows)]
        row_lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays).astype(np.int64, copy=False)
    if flat.size and int(flat.min()) < 0:
        bad = int(np.flatnonzero(flat < 0)[0])
        row = int(np.searchsorted(np.cumsum(row_lengths), bad, side="right"))
        raise FormatKitValueError(
            f"row {row} contains the negative token id {int(flat[bad])}: input_ids must be vocabulary ids "
            "(labels use -100, not input_ids)"
        )

    seq_lengths = row_lengths
    if packed:
        parts = []
        for i, n in enumerate(row_lengths.tolist()):
            if i in packed:
                lens = _as_int_array(packed[i], i, what="seq_lengths")
                if int(lens.sum()) != n or (lens <= 0).any():
                    raise FormatKitValueError(
                        f"row {i}: seq_lengths {lens.tolist()} must be positive and add up to the row's "
                        f"{n} tokens"
                    )
                parts.append(lens)
            else:
                parts.append(np.array([n], dtype=np.int64))
        seq_lengths = np.concatenate(parts).astype(np.int64, copy=False)
    return flat, row_lengths, seq_lengths, _numeric_extras(extras, len(rows))


_EMPTY_ROW = (
    "row {i} has no tokens; drop empty rows before training, for example "
    "dataset.filter(lambda row: len(row['input_ids']) > 0)"
)
_NOT_INT = (
    "row {i}'s input_ids contain {value!r}, which is not an int token id; pass the ids the tokenizer returned "
    "(lists of ints, integer numpy arrays or tensors)"
)


def _is_int_token(x: Any) -> bool:
    return (type(x) is int) or (isinstance(x, (int, np.integer)) and not isinstance(x, bool))


def _as_int_array(value: Any, i: int, what: str = "input_ids") -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise FormatKitValueError(
            f"row {i}'s {what} has shape {tuple(arr.shape)}; each row must be 1-D. If you tokenized with "
            "return_tensors='pt', drop it (or pass ids[0])"
        )
    if arr.size == 0:
        raise FormatKitValueError(_EMPTY_ROW.format(i=i) if what == "input_ids" else f"row {i}'s {what} is empty")
    if arr.dtype.kind not in "iu":
        bad = arr.flat[0] if arr.dtype.kind != "f" else arr[arr != np.round(arr)][:1].tolist() or arr.flat[0]
        raise FormatKitTypeError(_NOT_INT.format(i=i, value=bad) if what == "input_ids" else
                                 f"row {i}'s {what} must be ints, got dtype {arr.dtype}")
    return arr


def _strip_padding(ids: Any, mask: Any, i: int) -> Any:
    """Drop the positions a pre-padded row marks with attention_mask == 0."""
    mask_arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if mask_arr.all():
        return ids
    ids_arr = _as_int_array(ids, i)
    if mask_arr.shape != ids_arr.shape:
        raise FormatKitValueError(
            f"row {i}: attention_mask has shape {tuple(mask_arr.shape)} but input_ids {tuple(ids_arr.shape)}"
        )
    return ids_arr[mask_arr.astype(bool)]


def _numeric_extras(extras: dict[str, list[Any]], n_rows: int) -> dict[str, np.ndarray]:
    out = {}
    for key, values in extras.items():
        if len(values) == n_rows and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
        ):
            out[key] = np.asarray(values)
    return out


def _to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    done: dict[int, Any] = {}  # an array under two keys (cu_seq_lens_q/k) becomes one tensor, as in trl
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            if id(value) not in done:
                done[id(value)] = torch.from_numpy(np.ascontiguousarray(value))
            value = done[id(value)]
        out[key] = value
    return out
