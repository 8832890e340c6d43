"""Rows for ``inspect``: JSONL, JSON, CSV and Parquet files, hub datasets where the hub is reachable, ``--text``.

Every row comes out as one of the shapes :func:`trl_formatkit.views.encode_row` reads: ``{"messages": ...}``,
``{"prompt": ..., "completion": ...}`` or ``{"text": ...}``; other schemas go through their format.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import _HUB_ID, CLIError, _first_line, hub_offline

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_NATIVE = ("chatml", "instruction", "text")  # formats encode_row reads without converting


def read_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Every row of a local file (by its suffix) or of a hub dataset."""
    path = Path(source)
    if path.is_file():
        reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}.get(path.suffix.lower())
        if reader is None:
            raise CLIError(f"{source!r}: unknown file type {path.suffix!r}; give one of {', '.join(SUFFIXES)}")
        rows = list(reader(path))
    elif path.exists():
        raise CLIError(f"{source!r} is a folder; give a file ({', '.join(SUFFIXES)}) or a hub dataset id")
    else:
        rows = _hub(source, split)
    if not rows:
        raise CLIError(f"{source!r} has no rows")
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CLIError(f"row {n} of {source!r} is not an object with columns: {str(row)[:80]}")
    return rows


def _jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise CLIError(f"{path}: line {n} is not JSON ({err.msg} at column {err.colno})") from None


def _json(path: Path) -> Iterator[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if err.lineno > 1 or path.read_text(encoding="utf-8").count("\n") > 1:
            yield from _jsonl(path)  # JSON lines saved as .json
            return
        raise CLIError(f"{path}: not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise CLIError(f"{path}: the columns differ in length ({sorted(lengths)})")
        keys = list(data)
        yield from (dict(zip(keys, values, strict=True)) for values in zip(*data.values(), strict=True))
    elif isinstance(data, list):
        yield from data
    else:
        raise CLIError(f"{path}: expected a list of rows or an object of columns, got {type(data).__name__}")


def _csv(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors vary; one line names the file
        raise CLIError(f"{path}: not a Parquet file ({_first_line(err)})") from None
    yield from table.to_pylist()


def _hub(source: str, split: str) -> list[dict]:
    if not _HUB_ID.match(source) or "/" not in source or Path(source).suffix.lower() in SUFFIXES:
        raise CLIError(f"no file {source!r} (give a {', '.join(SUFFIXES)} file, or a hub dataset id owner/name)")
    if hub_offline():
        raise CLIError(
            f"no file {source!r}; read as a hub dataset id, but the Hugging Face hub is off here "
            "(HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1): download it elsewhere and give the file"
        )
    from datasets import load_dataset

    try:
        return list(load_dataset(source, split=split))
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line
        raise CLIError(f"could not load {source!r} (split {split!r}) from the hub: {_first_line(err)}") from None


def normalise(rows: list[dict], fmt: str = "auto", field: str | None = None) -> tuple[list[dict], str]:
    """Rows in a shape :func:`~trl_formatkit.views.encode_row` reads, and the name of the format they had."""
    if field is not None:
        missing = next((n for n, r in enumerate(rows) if field not in r), None)
        if missing is not None:
            raise CLIError(f"row {missing} has no {field!r} field; its fields: {sorted(rows[missing])}")
        return [{"messages" if isinstance(r[field], list) else "text": r[field]} for r in rows], field
    from ..errors import FormatKitError
    from ..formats import detect_format, formats

    try:
        found = detect_format(list(rows[0])) if fmt == "auto" else formats.get(fmt)
    except FormatKitError as err:
        raise CLIError(_first_line(err)) from None
    if found.name in _NATIVE:
        keys = sorted(found.columns)
        return [{k: r.get(k) for k in keys} for r in rows], found.name
    try:
        return [{"messages": found.to_messages(r)} for r in rows], found.name
    except FormatKitError as err:
        raise CLIError(_first_line(err)) from None
