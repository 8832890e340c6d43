"""Dataset preparation for :class:`trl_formatkit.SFTTrainer`: formats, labels, truncation, the whole-dataset check.

Each step is one batched ``Dataset.map`` (``num_proc`` and a progress bar) over plain lists and numpy arrays;
the trainer strings them together around trl's own preparation. Labels go into a ``labels`` column because it
is the key trl 1.16 carries through everything after tokenization: ``_prepare_dataset`` keeps a ``labels``
column it finds (it only builds one from ``completion_mask`` / ``assistant_masks`` when there is none), its
truncation cuts ``input_ids`` and ``labels`` together, ``pack_dataset`` keeps ``["input_ids", "labels"]`` for
every strategy (``bfd``, ``bfd_split``, ``wrapped``), and ``DataCollatorForLanguageModeling`` pads or flattens
``labels`` (padding-free included).

Imports neither trl nor datasets at module level.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import FormatKitValueError, TemplateNotFoundError, preview
from .masking import IGNORE_INDEX, completion_mask_from_templates

logger = logging.getLogger("trl_formatkit.sft")

LabelSource = Literal["template", "structure", "trl"]
# trl's own data shapes, which it prepares itself: never converted
_TRL_FORMATS = ("chatml", "instruction", "text")
_N_TRAINED, _N_FULL = "_formatkit_n_trained", "_formatkit_n_full"
MOST = 0.5  # more than this share of rows training nothing stops the run before it starts


# ----------------------------------------------------------------------------------------------------------------
# formats
# ----------------------------------------------------------------------------------------------------------------
def convert_format(
    dataset: Any, dataset_format: str | None, *, text_field: str = "text", num_proc: int | None = None
) -> tuple[Any, str | None]:
    """Convert a dataset in any registered format (plugins' too) to ``messages``, where trl would not read it.

    ``messages``, ``prompt``/``completion`` and text rows (``text_field``) stay as they are: trl prepares them.
    A dataset that is already tokenized (``input_ids``) is never converted.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset``.
        dataset_format: ``"auto"`` (detect), a format name (force it), or ``None`` (leave the dataset alone).
        text_field: trl's ``dataset_text_field``; a dataset with that column is text.
        num_proc: processes for the conversion ``map``.

    Returns:
        ``(dataset, name)``: the (new) dataset and the name of the format it was converted from, or None.

    Raises:
        FormatKitValueError: the format is unknown or ambiguous (the message lists what is known).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"instruction": ["Name a colour."], "input": [""], "output": ["Blue."]})
        >>> out, name = convert_format(ds, "auto")
        >>> name, out.column_names
        ('alpaca', ['messages'])
        >>> convert_format(out, "auto")[1] is None   # messages: trl's own format
        True
    """
    if dataset_format is None:
        return dataset, None
    from .formats import detect_format, to_messages
    from .formats import formats as registry
    from .formats.core import columns_of

    columns = columns_of(dataset)
    if "input_ids" in columns:
        return dataset, None
    if dataset_format == "auto":
        if text_field in columns and "messages" not in columns:
            return dataset, None
        fmt = detect_format(columns)
    else:
        fmt = registry.get(dataset_format)
    if fmt.name in _TRL_FORMATS:
        return dataset, None
    kwargs = {"num_proc": num_proc} if hasattr(dataset, "num_rows") else {}
    converted = to_messages(dataset, fmt, **kwargs)
    logger.info("trl_formatkit: converted the %s rows to messages (format %r)", fmt.name, fmt.name)
    return converted, fmt.name


# ----------------------------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------------------------
def _flat(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])] if len(lengths) else []


@dataclass(frozen=True)
class TemplateLabeller:
    """``labels`` from response / instruction / end templates (the collator's engine), for a batched ``map``.

    Keys in: ``input_ids``. Keys out: ``input_ids`` and ``labels`` (``-100`` where not trained; the first token
    of a row is never trained). A row whose templates are missing trains nothing (counted later by
    :func:`check_trained`), or raises with ``on_missing="raise"``. ``double_bos``: a token id that, when a row
    starts with it twice (a rendered chat template's BOS plus the tokenizer's), loses its first copy.

    Example:
        >>> labeller = TemplateLabeller(response=((2,),), instruction=((1,),), double_bos=9)
        >>> labeller({"input_ids": [[9, 9, 1, 50, 2, 60, 0], [1, 51]]})["labels"]
        [[-100, -100, -100, -100, 60, 0], [-100, -100]]
    """

    response: tuple[tuple[int, ...], ...]
    instruction: tuple[tuple[int, ...], ...] = ()
    end: tuple[tuple[int, ...], ...] = ()
    on_missing: Literal["warn", "raise", "ignore"] = "warn"
    double_bos: int | None = None
    decode: Any = None  # tokenizer.decode, for the on_missing="raise" message

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        rows = batch["input_ids"]
        if self.double_bos is not None:
            bos = self.double_bos
            rows = [r[1:] if len(r) > 1 and r[0] == bos and r[1] == bos else r for r in rows]
        flat, lengths = _flat(rows)
        mask, has_response, has_instruction = completion_mask_from_templates(
            flat, lengths, self.response, self.instruction, self.end
        )
        found = has_response & has_instruction
        if self.on_missing == "raise" and not found.all():
            i = int(np.flatnonzero(~found)[0])
            text = self.decode(list(rows[i])) if self.decode else list(rows[i])
            raise TemplateNotFoundError(
                f"the response/instruction template is not in this row (on_missing='raise'): {preview(text, 300)}"
            )
        starts = np.cumsum(lengths) - lengths
        mask[starts[lengths > 0]] = False  # nothing before a row's first token predicts it
        mask &= np.repeat(found, lengths)
        labels = np.where(mask, flat, IGNORE_INDEX)
        return {"input_ids": [list(r) for r in rows], "labels": _split(labels, lengths)}


@dataclass(frozen=True)
class StructureLabeller:
    """``input_ids`` and ``labels`` of ``messages`` rows from the conversation's structure, for a batched ``map``.

    Renders each conversation with the tokenizer's own chat template and trains the tokens of the messages of
    ``train_roles`` (:func:`trl_formatkit.structure.encode_conversations`), so text inside a message can never
    open or close a turn. trl's per-row ``tools`` (a list or its JSON) and ``chat_template_kwargs`` columns are
    passed to the template row by row.
    """

    tokenizer: Any
    train_roles: tuple[str, ...] = ("assistant",)
    train_end_of_turn: bool = True
    last_turn_only: bool = False

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        from .structure import encode_conversation, encode_conversations

        options = {
            "train_roles": self.train_roles,
            "train_end_of_turn": self.train_end_of_turn,
            "last_turn_only": self.last_turn_only,
        }
        per_row = {k: batch[k] for k in ("tools", "chat_template_kwargs") if k in batch}
        if not any(v is not None for values in per_row.values() for v in values):
            out = encode_conversations(self.tokenizer, batch["messages"], **options)
        else:  # trl's per-row columns: tools (a list or its JSON) and chat_template_kwargs
            import json

            rows = []
            for i, messages in enumerate(batch["messages"]):
                tools = per_row.get("tools", [None] * (i + 1))[i]
                rows.append(encode_conversation(
                    self.tokenizer, messages, tools=json.loads(tools) if isinstance(tools, str) else tools,
                    chat_template_kwargs=per_row.get("chat_template_kwargs", [None] * (i + 1))[i], **options,
                ))
            out = {key: [r[key] for r in rows] for key in ("input_ids", "completion_mask")}
        flat, lengths = _flat(out["input_ids"])
        mask = np.fromiter(itertools.chain.from_iterable(out["completion_mask"]), dtype=bool, count=len(flat))
        mask[(np.cumsum(lengths) - lengths)[lengths > 0]] = False
        return {"input_ids": out["input_ids"], "labels": _split(np.where(mask, flat, IGNORE_INDEX), lengths)}


# ----------------------------------------------------------------------------------------------------------------
# truncation and the whole-dataset check
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truncator:
    """Cut ``input_ids`` and ``labels`` to ``max_length`` (trl's ``keep_start`` / ``keep_end``) and count the
    trained tokens of each row before and after (columns ``_formatkit_n_full`` / ``_formatkit_n_trained``).

    Example:
        >>> out = Truncator(max_length=3)({"input_ids": [[1, 2, 3, 4]], "labels": [[-100, -100, -100, 4]]})
        >>> out["input_ids"], out["_formatkit_n_full"], out["_formatkit_n_trained"]
        ([[1, 2, 3]], [1], [0])
    """

    max_length: int | None = None
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        ids, labels = batch["input_ids"], batch["labels"]
        flat, lengths = _flat(labels)
        trained = (flat != IGNORE_INDEX).astype(np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        csum = np.concatenate([[0], np.cumsum(trained)])
        n_full = csum[ends] - csum[starts]
        if self.max_length is None:
            return {_N_FULL: n_full.tolist(), _N_TRAINED: n_full.tolist()}
        keep = np.minimum(lengths, self.max_length)
        if self.truncation_mode == "keep_end":
            starts = ends - keep
            cut = slice(-self.max_length, None)
        else:
            ends = starts + keep
            cut = slice(None, self.max_length)
        return {
            "input_ids": [r[cut] for r in ids],
            "labels": [r[cut] for r in labels],
            _N_FULL: n_full.tolist(),
            _N_TRAINED: (csum[ends] - csum[starts]).tolist(),
        }


@dataclass(frozen=True)
class LabelPlan:
    """How the labels of a dataset were made, for the messages of :func:`check_trained`."""

    source: LabelSource
    response_template: Any = None
    response_ids: tuple[tuple[int, ...], ...] = ()
    train_roles: tuple[str, ...] = ("assistant",)
    markers_found: bool = False


def check_trained(
    dataset: Any, tokenizer: Any, plan: LabelPlan, *, name: str = "train", max_length: int | None = None
) -> Any:
    """Drop the rows that train nothing, count them in one log line, refuse to train when they are most rows.

    Args:
        dataset: a ``datasets.Dataset`` with the columns :class:`Truncator` adds (they are removed).
        tokenizer: decodes a row for the error.
        plan: how the labels were made (for the fix in the error).
        name: the dataset's name in messages (``train``, ``eval``).
        max_length: the truncation length, for the message.

    Returns:
        The dataset without those rows and without the count columns.

    Raises:
        FormatKitValueError: more than half of the rows (or all of them) train nothing: shows one such row
            decoded, trained tokens in ``[brackets]``, why, and the fix.
    """
    table = dataset.with_format("numpy")
    n_trained = np.asarray(table[_N_TRAINED], dtype=np.int64)
    n_full = np.asarray(table[_N_FULL], dtype=np.int64)
    dataset = dataset.remove_columns([_N_TRAINED, _N_FULL])
    empty = n_trained == 0
    total, n_empty = int(len(n_trained)), int(empty.sum())
    if n_empty == 0:
        return dataset
    by_truncation = int((empty & (n_full > 0)).sum())
    counts = f"{n_empty - by_truncation} with nothing to train, {by_truncation} emptied by max_length={max_length}"
    if total and n_empty / total > MOST:
        i = int(np.flatnonzero(empty)[0])
        raise FormatKitValueError(_nothing_trained_message(
            dataset, tokenizer, plan, i, name, total, n_empty, counts, truncated=bool(n_full[i] > 0),
            max_length=max_length,
        ))
    logger.warning(
        "trl_formatkit: dropped %d of %d rows of the %s dataset that train nothing (%s)", n_empty, total, name, counts
    )
    return dataset.select(np.flatnonzero(~empty))


def _nothing_trained_message(
    dataset: Any, tokenizer: Any, plan: LabelPlan, i: int, name: str, total: int, n_empty: int, counts: str,
    *, truncated: bool, max_length: int | None,
) -> str:
    from .views import trained_tokens

    row = dataset[i]
    shown = str(trained_tokens({"input_ids": [row["input_ids"]], "labels": [row["labels"]]}, tokenizer))
    if truncated:
        fix = (
            f"max_length={max_length} cuts every trained token from these rows (their prompts are longer): raise "
            "SFTConfig(max_length=...), use truncation_mode='keep_end', or shorten the prompts"
        )
    elif plan.source == "template":
        origin = "found by find_template_markers(tokenizer)" if plan.markers_found else "given"
        fix = (
            f"the response template {plan.response_template!r} ({origin}; token ids {list(plan.response_ids[:3])}) "
            "does not occur in these rows, or nothing follows it. Pass the text your rows put before each answer, "
            "e.g. SFTTrainer(..., response_template='### Answer:'); on 'messages' data leave the templates out and "
            "the masks come from the conversation's structure"
        )
    elif plan.source == "structure":
        fix = (
            f"no message of these rows has a role in train_roles={plan.train_roles!r} (or its 'train' field is "
            "False): pass train_roles=(...) with the roles your data uses"
        )
    else:
        fix = "give the rows something to train: a completion, or response_template=... for text rows"
    return (
        f"{n_empty} of {total} rows of the {name} dataset train nothing ({counts}): training would end in "
        f"train_loss 0.0 or learn from a few rows only, so it does not start. Row {i} as the model sees it "
        f"(trained tokens in [brackets]): {preview(shown, 400)}. Fix: {fix}"
    )
