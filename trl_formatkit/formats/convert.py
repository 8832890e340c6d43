"""``detect_format``, ``to_messages`` and ``register_format`` on the default registry.

``datasets`` is never imported here: the functions work on the dataset objects they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import FormatKitTypeError, FormatKitValueError, preview, warn
from .core import Format, FormatRegistry, _rename_columns, columns_of, rename_keys

__all__ = ["default_registry", "register_format", "detect_format", "to_messages", "MESSAGES_COLUMN"]

#: The column trl's SFTTrainer reads conversations from.
MESSAGES_COLUMN = "messages"

#: Columns that make trl's SFTTrainer take another path even when ``messages`` is present.
_TRL_CONFLICTING = ("prompt", "completion")

#: The default registry: the built-in formats and installed plugins' formats, loaded on first use.
default_registry = FormatRegistry(plugins=True)


def register_format(
    format: Format | str,
    columns: Iterable[str] | None = None,
    *,
    description: str = "",
    aliases: Sequence[str] = (),
    priority: int = 0,
    replace: bool = False,
    registry: FormatRegistry | None = None,
) -> Any:
    """Register a format in the default registry (or ``registry``); also a decorator.

    Args:
        format: A :class:`Format`; or a name, with ``columns``, to decorate a ``to_messages`` function.
        columns: The columns a row must have (with a name).
        description: One line (with a name; defaults to the function's docstring's first line).
        aliases: Other names (with a name).
        priority: Detection tie-breaker (with a name; see :class:`Format`).
        replace: Replace a format of the same name instead of raising.
        registry: Where to register (default: ``trl_formatkit.formats``).

    Returns:
        The format; or, used with a name, a decorator that registers the function and returns it unchanged.

    Example:
        >>> from trl_formatkit import FormatRegistry
        >>> reg = FormatRegistry()
        >>> @register_format("qa", {"question", "answer"}, registry=reg)
        ... def qa_to_messages(row):
        ...     "Question / answer pairs."
        ...     return [{"role": "user", "content": row["question"]},
        ...             {"role": "assistant", "content": row["answer"]}]
        >>> reg.get("qa").description
        'Question / answer pairs.'
    """
    target = default_registry if registry is None else registry
    if isinstance(format, Format):
        if columns is not None or description or aliases or priority:
            raise FormatKitTypeError(
                "register_format(Format(...)) takes the format's settings from the Format; pass columns, "
                "description, aliases and priority to Format(...) instead"
            )
        return target.register(format, replace=replace)
    if not isinstance(format, str):
        raise FormatKitTypeError(
            f"register_format takes a Format, or a name and columns to decorate a function; got "
            f"{type(format).__name__}"
        )
    if columns is None:
        raise FormatKitTypeError(
            f"register_format({format!r}, ...) needs the columns a row must have, e.g. "
            f"register_format({format!r}, {{'question', 'answer'}})"
        )
    name = format

    def decorate(fn: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        target.register(Format(name, frozenset(columns), fn, doc, tuple(aliases), priority), replace=replace)
        return fn

    return decorate


def detect_format(
    data: Any, *, column_mapping: Mapping[str, str] | None = None, registry: FormatRegistry | None = None
) -> Format:
    """The most specific known format of a dataset, a row, or a list of columns (extra columns are fine).

    Args:
        data: A ``datasets.Dataset``/``IterableDataset``/``DatasetDict``, a row dict, or column names.
        column_mapping: ``{dataset_column: format_column}`` renames applied before matching.
        registry: Where to look (default: ``trl_formatkit.formats``: built-ins and installed plugins).

    Returns:
        The :class:`Format`.

    Raises:
        FormatKitValueError: no format matches, or several match equally (the message lists the columns seen and
            the formats known).

    Example:
        >>> detect_format(["id", "instruction", "input", "output", "text"]).name   # extra columns are fine
        'alpaca'
        >>> detect_format({"question": "2+2?", "answer": "4"},
        ...               column_mapping={"question": "prompt", "answer": "completion"}).name
        'instruction'
        >>> detect_format(["messages", "text"]).name   # 'text' is a fallback
        'chatml'
    """
    return (default_registry if registry is None else registry).detect(data, column_mapping=column_mapping)


@dataclass(frozen=True)
class _BatchToMessages:
    """The batched ``map`` function of :func:`to_messages` (a picklable class, for ``num_proc``)."""

    format: Format
    mapping: Mapping[str, str]

    def __call__(self, batch: Mapping[str, list], indices: list[int] | None = None) -> dict[str, list]:
        columns = {key: batch[key] for key in batch.keys()}
        sizes = {len(values) for values in columns.values()}
        if len(sizes) != 1:
            raise FormatKitValueError(f"the batch's columns have different lengths: {sorted(sizes)}")
        (size,) = sizes
        out = []
        for i in range(size):
            row = rename_keys({key: values[i] for key, values in columns.items()}, self.mapping)
            try:
                messages = self.format.to_messages(row)
            except KeyError as exc:
                where = f"row {indices[i]}" if indices is not None else f"row {i} of a batch"
                raise FormatKitValueError(
                    f"format {self.format.name!r} looked for the key {exc.args[0]!r} in {where}, which has "
                    f"{sorted(row)}; pass column_mapping={{your_column: {exc.args[0]!r}}}"
                ) from exc
            except (FormatKitValueError, FormatKitTypeError) as exc:
                where = f"row {indices[i]}" if indices is not None else f"row {i} of a batch"
                raise type(exc)(f"{where}: {exc}") from exc
            _check_messages(messages, self.format.name, indices[i] if indices is not None else i)
            out.append(messages)
        return {MESSAGES_COLUMN: out}


def _check_messages(messages: Any, name: str, index: int) -> None:
    if not isinstance(messages, list) or not messages:
        raise FormatKitValueError(
            f"format {name!r} turned row {index} into {type(messages).__name__} {preview(messages, 80)}; "
            "to_messages must return a non-empty list of {'role': ..., 'content': ...} dicts"
        )
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise FormatKitValueError(
                f"format {name!r}, row {index}, message {j}: expected a dict with a string 'role', got "
                f"{preview(message, 80)}"
            )
        content = message.get("content")
        if isinstance(content, (str, list)) or (content is None and message.get("tool_calls")):
            continue  # text, a list of content parts (images, ...), or a tool call with no text
        if "content" not in message and "tool_calls" not in message:
            raise FormatKitValueError(
                f"format {name!r}, row {index}, message {j} has no 'content' (nor 'tool_calls'): "
                f"{preview(message, 80)}"
            )
        what = "None (a ShareGPT turn without 'value', or a message without text)" if content is None else (
            f"{type(content).__name__} {preview(content, 40)}"
        )
        raise FormatKitTypeError(
            f"format {name!r}, row {index}, message {j} ({message['role']}): content must be a string (or a list "
            f"of content parts, or None next to tool_calls), got {what}. Fix or drop such rows before converting, "
            "for example dataset.filter(...) on that column"
        )


def _holds_conversations(dataset: Any) -> bool:
    """Whether the dataset has a ``messages`` column that may hold conversations (not a plain-value column)."""
    features = getattr(dataset, "features", None) or {}
    feature = features.get(MESSAGES_COLUMN) if MESSAGES_COLUMN in features else None
    return MESSAGES_COLUMN in columns_of(dataset) and type(feature).__name__ != "Value"


def _keep_existing_messages(
    fmt: Format, auto: bool, reg: FormatRegistry, columns: list[str], renamed: list[str], inverse: dict[str, str]
) -> Format:
    """An existing ``messages`` column is never replaced by one built from other columns: with ``format="auto"``
    the conversations win (the format that reads ``messages`` is used); a format named explicitly is an error."""
    consumed = {inverse.get(c, c) for c in fmt.columns}
    if MESSAGES_COLUMN not in columns or MESSAGES_COLUMN in consumed:
        return fmt
    if auto and MESSAGES_COLUMN in renamed:
        return reg.detect([MESSAGES_COLUMN])
    raise FormatKitValueError(
        f"the dataset already has a {MESSAGES_COLUMN!r} column, and format {fmt.name!r} would replace it with one "
        f"built from {sorted(consumed)}: the columns {sorted(consumed | {MESSAGES_COLUMN})} clash. To keep the "
        f"conversations, use format='auto' (or the format that reads {MESSAGES_COLUMN!r}) and drop the others: "
        f"dataset.remove_columns({sorted(consumed)}); to rebuild them on purpose, drop the old ones first: "
        f"dataset.remove_columns({MESSAGES_COLUMN!r})"
    )


def _is_dataset_dict(data: Any) -> bool:
    return isinstance(data, Mapping) and all(hasattr(v, "map") and hasattr(v, "column_names") for v in data.values())


def to_messages(
    dataset: Any,
    format: str | Format = "auto",
    *,
    column_mapping: Mapping[str, str] | None = None,
    remove_columns: bool | Literal["all"] | Sequence[str] = True,
    num_proc: int | None = None,
    batch_size: int = 1000,
    registry: FormatRegistry | None = None,
    **map_kwargs: Any,
) -> Any:
    """Add a ``messages`` column (chat messages) to a dataset, so trl's ``SFTTrainer`` applies the chat template.

    The fix for "the instruction format is no longer templated by trl": recent trl concatenates string
    ``prompt``/``completion`` columns as plain text; converted to ``messages``, they get the tokenizer's chat
    template again. Runs one batched ``Dataset.map`` (with its progress bar); the input is not modified.

    Args:
        dataset: A ``datasets.Dataset``, ``IterableDataset``, ``DatasetDict`` or ``IterableDatasetDict``.
        format: A format name or alias, a :class:`Format`, or ``"auto"`` to detect it (:func:`detect_format`).
        column_mapping: ``{dataset_column: format_column}`` for datasets whose keys differ, e.g.
            ``{"question": "prompt", "answer": "completion"}``.

            A ``messages`` column of conversations the dataset already has is never replaced by one built from
            other columns (a column of plain values is): with ``format="auto"`` the existing conversations win
            (a leftover ``prompt``/``completion`` warns, below); a format named explicitly that reads other
            columns raises an error naming the clashing columns.
        remove_columns: True (default) drops the columns the format consumed and keeps the others (ids,
            metadata); ``"all"`` keeps only ``messages``; False keeps everything; a list drops those columns.
            trl treats a dataset with a ``prompt`` column as
            prompt-completion even when ``messages`` is present, so a leftover ``prompt``/``completion``
            column warns.
        num_proc: Passed to ``Dataset.map`` (not supported by ``IterableDataset``).
        batch_size: Rows per batch of the batched ``map``.
        registry: Where to resolve names (default: ``trl_formatkit.formats``).
        **map_kwargs: Other ``Dataset.map`` arguments (``desc``, ``load_from_cache_file``, ...).

    Returns:
        A new dataset of the same kind with a ``messages`` column.

    Raises:
        FormatKitValueError: the format is unknown, ambiguous, would replace an existing ``messages`` column, or a
            row cannot be converted (the row is named).
        FormatKitTypeError: ``dataset`` is not a ``datasets`` dataset; or a message's content is None (a ShareGPT
            turn without ``value``) or not text (the row and message are named).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"id": [7], "instruction": ["Name a colour."], "input": [""], "output": ["Blue."]})
        >>> out = to_messages(ds)
        >>> out.column_names
        ['id', 'messages']
        >>> out[0]["messages"]
        [{'role': 'user', 'content': 'Name a colour.'}, {'role': 'assistant', 'content': 'Blue.'}]
    """
    reg = default_registry if registry is None else registry
    if _is_dataset_dict(dataset):
        converted = {
            split: to_messages(
                ds,
                format,
                column_mapping=column_mapping,
                remove_columns=remove_columns,
                num_proc=num_proc,
                batch_size=batch_size,
                registry=reg,
                **map_kwargs,
            )
            for split, ds in dataset.items()
        }
        return type(dataset)(converted)
    if not (hasattr(dataset, "map") and hasattr(dataset, "column_names")):
        hint = (
            "; for one row use detect_format(row).to_messages(row)" if isinstance(dataset, Mapping) else ""
        )
        raise FormatKitTypeError(
            f"to_messages takes a datasets.Dataset / IterableDataset / DatasetDict, got {type(dataset).__name__}"
            f"{hint}; build one with datasets.Dataset.from_list(rows)"
        )
    columns = columns_of(dataset)
    mapping = dict(column_mapping or {})
    fmt, consumed = _resolve_format(dataset, format, reg, columns, mapping)
    drop = _columns_to_drop(remove_columns, columns, consumed)
    left = [c for c in columns if c not in drop and c in _TRL_CONFLICTING]
    if left:
        warn(
            f"to_messages keeps the column(s) {left} next to 'messages'; trl's SFTTrainer treats a dataset with a "
            "'prompt' column as prompt-completion and then ignores 'messages'. Drop them: "
            f"to_messages(..., remove_columns={left + [c for c in consumed if c in columns]!r}) or "
            "remove_columns='all'"
        )
    kwargs = _map_kwargs(dataset, fmt, drop, num_proc, batch_size)
    kwargs.update(map_kwargs)
    return dataset.map(_BatchToMessages(fmt, mapping), **kwargs)


def _resolve_format(
    dataset: Any, format: str | Format, reg: FormatRegistry, columns: list[str], mapping: dict[str, str]
) -> tuple[Format, list[str]]:
    """The format to convert with, and the dataset columns it consumes (after ``column_mapping``)."""
    renamed = _rename_columns(columns, mapping)
    auto = isinstance(format, str) and format == "auto"
    fmt = reg.detect(renamed) if auto else reg.get(format)
    inverse = {target: source for source, target in mapping.items()}
    if _holds_conversations(dataset):
        fmt = _keep_existing_messages(fmt, auto, reg, columns, renamed, inverse)
    missing = fmt.missing(renamed)
    if missing:
        raise FormatKitValueError(
            f"format {fmt.name!r} needs the column(s) {missing}, which the dataset does not have (its columns: "
            f"{columns}). Pass column_mapping={{your_column: {missing[0]!r}}}, or format='auto' to detect it."
        )
    return fmt, [inverse.get(c, c) for c in sorted(fmt.columns)]


def _columns_to_drop(
    remove_columns: bool | Literal["all"] | Sequence[str], columns: list[str], consumed: list[str]
) -> list[str]:
    if remove_columns is True:
        drop = list(consumed)
    elif remove_columns == "all":
        drop = list(columns)
    elif remove_columns is False or remove_columns is None:
        drop = []
    elif isinstance(remove_columns, str):
        drop = [remove_columns]
    else:
        drop = list(remove_columns)
    unknown = [c for c in drop if c not in columns]
    if unknown:
        raise FormatKitValueError(f"remove_columns names {unknown}, which the dataset does not have: {columns}")
    if MESSAGES_COLUMN in columns and MESSAGES_COLUMN not in drop:
        drop.append(MESSAGES_COLUMN)  # replaced by the new column; map cannot write over a column it keeps typed
    return [c for c in columns if c in drop]  # dataset order, no duplicates


def _map_kwargs(dataset: Any, fmt: Format, drop: list[str], num_proc: int | None, batch_size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "with_indices": True,
        "remove_columns": drop or None,
    }
    is_map_style = hasattr(dataset, "num_rows") and hasattr(dataset, "cache_files")
    if is_map_style:
        kwargs["num_proc"] = num_proc
        kwargs["desc"] = f"Converting {fmt.name} rows to messages"
    elif num_proc is not None:
        raise FormatKitValueError(
            "num_proc is not supported for an IterableDataset (IterableDataset.map has no num_proc); drop it, or "
            "convert a map-style Dataset"
        )
    return kwargs
