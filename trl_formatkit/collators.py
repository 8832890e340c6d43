"""Collators: token ids in, padded or flattened (padding-free) batches with completion-only labels out.

``DataCollatorForCompletionOnlyLM`` is the collator trl removed in 0.20, with trl 0.19's signature and output
keys, and these differences:

- templates are also found as they tokenize *inside* text (``match_in_context=True``, the default);
- the labels of padding come from lengths, never from comparing ids with the pad id, so an EOS equal to PAD is
  still trained;
- multi-turn masking is a clean rule (trained = after a response template, until the next instruction
  template), optional ``end_template``, several instruction templates;
- ``padding_free=True`` also returns ``cu_seq_lens_q/k``, ``max_length_q/k`` and ``seq_idx`` like trl 1.x;
- rows that train nothing, and response templates where no answer can start (marker text typed inside a
  message), are reported with a decoded preview and the fix: in full the first time, then as one short line at
  the 10th, 100th, 1000th ... batch with the same cause, so a training log is not flooded;
- every id of every row is checked (ints only: no floats, strings, bools, None or ids past int64).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning, TemplateNotFoundError, preview
from .masking import (
    IGNORE_INDEX,
    TemplateSpec,
    as_template_list,
    check_template_roles,
    completion_mask_from_spans,
    cu_seq_lens_from_lengths,
    find_template_spans,
    labels_from_mask,
    pad_flat,
    position_ids_from_lengths,
    real_token_mask,
    seq_idx_from_lengths,
    suspicious_responses,
    template_variants,
)
from .rows import flatten_rows

__all__ = ["DataCollatorForCompletionOnlyLM"]

_PREVIEW_CHARS = 300
_RETURN_TENSORS = ("pt", "np")


@dataclass
class DataCollatorForCompletionOnlyLM:
    """Completion-only labels for causal LM fine-tuning: prompts masked with ``-100``, answers trained.

    Keys in (per example): ``input_ids`` (list of ints, numpy array or tensor), or the ids alone. Optional:
    ``attention_mask`` (pre-padded rows: 0s at the start or end are dropped before collating; a 0 between 1s is
    refused), ``seq_lengths``
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
            (trl's behaviour: its labels are all ``ignore_index``; a warning, in full for the first such batch,
            then one line at the 10th, 100th, ... such batch; ``warning_counts`` keeps the totals),
            ``"raise"``, ``"ignore"``.
        end_template: string or ids (or several) that end an assistant answer (trained, inclusive).

    Templates are found in the ids, blind to the conversation's structure: ``<|assistant|>`` typed inside a user
    message opens an answer there. The collator warns when a response template sits where no answer can start
    (after another response template with no end or instruction template between, or, with ``end_template``,
    inside a turn an instruction template opened and no end template closed). For ``messages`` data,
    ``trl_formatkit.SFTTrainer`` masks from the conversation's structure instead, where text cannot open a turn.

    Warnings name the collator and point at this class, not at the DataLoader internals that called it.

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
    #: sequences reported per cause since the collator was made (``{"response_template not found": 12}``)
    warning_counts: dict[str, int] = field(init=False, repr=False, compare=False, default_factory=dict)
    # per cause: [batches with it, sequences in those batches]
    _warned: dict[str, list[int]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._check_settings()
        self._response_variants = self._encode(self.response_template, "response_template")
        if not self._response_variants:
            raise FormatKitValueError(
                "response_template is required: the text (or token ids) that starts an assistant answer, for "
                "example '<|assistant|>' or '### Answer:'"
            )
        self._instruction_variants = self._encode(self.instruction_template, "instruction_template")
        self._end_variants = self._encode(self.end_template, "end_template")
        check_template_roles(self._response_variants, self._instruction_variants, self._end_variants)
        # trl 0.19 attributes, kept for code that reads them
        first = as_template_list(self.response_template)[0]
        self.response_token_ids = list(self._exact(first))
        instructions = as_template_list(self.instruction_template)
        self.instruction_token_ids = list(self._exact(instructions[0])) if instructions else None

    def _check_settings(self) -> None:
        if _looks_like_tokenizer(self.instruction_template):
            raise FormatKitTypeError(
                f"DataCollatorForCompletionOnlyLM got a {type(self.instruction_template).__name__} as its second "
                "positional argument, which is instruction_template (trl 0.19's order: response_template, "
                "instruction_template, then the tokenizer by keyword). Pass the tokenizer by keyword: "
                f"DataCollatorForCompletionOnlyLM({preview(self.response_template, 60)}, tokenizer=tokenizer)"
            )
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
        _check_return_tensors(self.return_tensors)
        if self.pad_to_multiple_of is not None:
            self.pad_to_multiple_of = _int_setting(self.pad_to_multiple_of, "pad_to_multiple_of", "a positive int or None")
            if self.pad_to_multiple_of < 1:
                raise FormatKitValueError(
                    f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}"
                )
        self.ignore_index = _int_setting(self.ignore_index, "ignore_index", "an int (usually -100)")

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
        return_tensors = _check_return_tensors(return_tensors or self.return_tensors)
        flat, row_lengths, seq_lengths, extras = flatten_rows(examples)
        spans = find_template_spans(
            flat, seq_lengths, self._response_variants, self._instruction_variants, self._end_variants
        )
        mask, has_response, has_instruction = completion_mask_from_spans(spans, int(flat.shape[0]))
        starts = spans.offsets[:-1]
        # The first token of a sequence is never a target: nothing before it in the sequence predicts it.
        mask[starts] = False
        problem = ~has_response | ~has_instruction
        trained = np.add.reduceat(mask, starts, dtype=np.int64)
        empty = ~problem & (trained == 0)
        suspicious = suspicious_responses(spans)
        if problem.any():
            mask &= ~np.repeat(problem, seq_lengths)  # trl's behaviour: such a row trains nothing
        if problem.any() or empty.any() or suspicious.any():
            batch = _Batch(flat, seq_lengths, starts)
            self._report(batch, has_response, has_instruction, empty, suspicious)
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
            if self.padding_free:  # only pad_to_multiple_of pads a padding-free batch
                raise FormatKitValueError(
                    f"{type(self.tokenizer).__name__} has no pad token, which padding_free=True needs only to fill "
                    f"the batch up to pad_to_multiple_of={self.pad_to_multiple_of}. Set one that is not the EOS "
                    f"token: {hint}, or drop pad_to_multiple_of"
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
        multiple = self.pad_to_multiple_of
        width = int(row_lengths.max())
        width = -(-width // multiple) * multiple if multiple else width
        needs_pad = width * row_lengths.shape[0] != flat.shape[0]
        columns = [flat, labels]
        pads = [self._pad_id() if needs_pad else 0, self.ignore_index]
        packed = seq_lengths.shape[0] != row_lengths.shape[0]
        if packed:  # packed rows: positions restart with every packed sequence
            columns.append(position_ids_from_lengths(seq_lengths))
            pads.append(0)
        padded = pad_flat(columns, row_lengths, pads, padding_side=side, pad_to_multiple_of=multiple)
        # the attention mask is the real-token mask itself: built by one comparison, not scattered like the ids
        attention_mask = real_token_mask(row_lengths, width, side).astype(flat.dtype)
        out = {"input_ids": padded[0], "attention_mask": attention_mask, "labels": padded[1]}
        if packed:
            out["position_ids"] = padded[2]
        return out

    # -- reporting -----------------------------------------------------------------------------------------
    def _report(
        self,
        batch: _Batch,
        has_response: np.ndarray,
        has_instruction: np.ndarray,
        empty: np.ndarray,
        suspicious: np.ndarray,
    ) -> None:
        n_seq = int(batch.lengths.shape[0])
        if suspicious.any():
            self._warn_layout(batch, suspicious)
        if self.on_missing == "ignore":
            return
        causes = {
            "response_template not found": np.flatnonzero(~has_response),
            "instruction_template not found": np.flatnonzero(has_response & ~has_instruction),
            "nothing after the response template": np.flatnonzero(empty),
        }
        causes = {cause: rows for cause, rows in causes.items() if rows.size}
        if not causes:
            return
        count = sum(rows.size for rows in causes.values())
        headline = (
            f"DataCollatorForCompletionOnlyLM: {count} of {n_seq} sequence(s) in this batch train nothing; their "
            f"labels are all {self.ignore_index} (ignored in the loss)."
        )
        if self.on_missing == "raise":
            lines = [self._cause_line(cause, rows, batch) for cause, rows in causes.items()]
            raise TemplateNotFoundError(
                "\n".join([headline, *lines, "Set on_missing='warn' to train on the other rows and be told, or "
                           "on_missing='ignore' to skip such rows silently."])
            )
        self._warn_summarised(headline, causes, batch, "Set on_missing='raise' to stop on such rows, or "
                              "on_missing='ignore' to silence this warning.")

    def _warn_layout(self, batch: _Batch, suspicious: np.ndarray) -> None:
        rows = np.flatnonzero(suspicious)
        headline = (
            f"DataCollatorForCompletionOnlyLM: {rows.size} of {batch.lengths.shape[0]} sequence(s) in this batch have "
            "a response template where no answer can start; what follows it is trained."
        )
        self._warn_summarised(
            headline,
            {"response template where no answer can start": rows},
            batch,
            "If these rows are right, silence this with warnings.filterwarnings('ignore', "
            "message='DataCollatorForCompletionOnlyLM: .* where no answer can start').",
        )

    def _warn_summarised(self, headline: str, causes: dict[str, np.ndarray], batch: _Batch, tail: str) -> None:
        """Warn in full the first time a cause is seen, then one line at its 10th, 100th, ... batch."""
        full, short = [], []
        for cause, rows in causes.items():
            total = self.warning_counts[cause] = self.warning_counts.get(cause, 0) + int(rows.size)
            state = self._warned.setdefault(cause, [0, 0])
            state[0] += 1
            state[1] += int(batch.lengths.shape[0])
            seen = state[0]
            if seen == 1:
                full.append(self._cause_line(cause, rows, batch))
            elif _is_power_of_ten(seen):
                short.append(
                    f"- {cause}: {seen} batches so far ({total} of {state[1]} sequences in them); shown in full "
                    f"the first time, next line at {seen * 10} batches; totals in collator.warning_counts."
                )
        if full:
            _warn("\n".join([headline, *full, *short, tail]))
        elif short:
            _warn("\n".join(["DataCollatorForCompletionOnlyLM: still seeing the rows it warned about:", *short]))

    def _cause_line(self, cause: str, rows: np.ndarray, batch: _Batch) -> str:
        if cause == "response_template not found":
            return self._missing_line("response_template", self.response_template, rows, batch.flat, batch.starts,
                                      batch.lengths)
        if cause == "instruction_template not found":
            return self._missing_line("instruction_template", self.instruction_template, rows, batch.flat,
                                      batch.starts, batch.lengths)
        i = int(rows[0])
        if cause == "nothing after the response template":
            return (
                f"- {rows.size} row(s) (first: row {i}) contain the response template but nothing after it to "
                f"train, usually because they were cut at max_length: {self._preview(batch.flat, batch.starts, batch.lengths, i)}"
                "\n  Fix: raise max_length, or filter rows longer than it before training."
            )
        return (
            f"- {rows.size} row(s) (first: row {i}): a response template inside a turn that an instruction template "
            "opened and no end template closed, or a second response template before an end: marker text typed "
            f"inside a message? {self._preview(batch.flat, batch.starts, batch.lengths, i)}\n  Fix: for messages "
            "data, let trl_formatkit.SFTTrainer mask from the conversation's structure; or give end_template, or "
            "remove the marker text from the messages."
        )

    def _preview(self, flat: np.ndarray, starts: np.ndarray, seq_lengths: np.ndarray, i: int) -> str:
        ids = flat[starts[i] : starts[i] + seq_lengths[i]]
        return preview(self.tokenizer.decode(ids.tolist()), _PREVIEW_CHARS)

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


class _Batch(NamedTuple):
    """A flat batch as the reports read it."""

    flat: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray


# Warnings point here (the collator's class) instead of at whatever called the collator: through a DataLoader that
# is torch's fetch.py, which tells a user nothing.
_WARN_AT: list[tuple[str, int]] = []


def _warn(message: str) -> None:
    if not _WARN_AT:
        import inspect

        _WARN_AT.append((__file__, inspect.getsourcelines(DataCollatorForCompletionOnlyLM)[1]))
    filename, lineno = _WARN_AT[0]
    warnings.warn_explicit(message, FormatKitWarning, filename, lineno, module=__name__)


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def _looks_like_tokenizer(value: Any) -> bool:
    return hasattr(value, "encode") and hasattr(value, "decode") and not isinstance(value, (str, bytes, Sequence))


def _int_setting(value: Any, name: str, allowed: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FormatKitTypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    return int(value)


def _check_return_tensors(value: Any) -> str:
    if value not in _RETURN_TENSORS:
        raise FormatKitValueError(
            f"return_tensors={value!r} is not supported: return_tensors must be 'pt' or 'np' (torch tensors or "
            "numpy arrays)"
        )
    return value




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
