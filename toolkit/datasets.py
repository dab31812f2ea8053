"""Evaluation datasets in MLflow's shape, streamed row by row.

A row is ``{"inputs": {...}, "expectations": {...}}`` (expectations optional), as
``mlflow.genai.evaluate`` takes it. Files:

- JSONL (``.jsonl``/``.json`` with one object per line): the reference format;
- CSV: columns ``inputs.<name>`` and ``expectations.<name>``, or ``inputs``/``expectations``
  columns holding JSON objects;
- Parquet: ``inputs``/``expectations`` columns (structs or JSON strings), read in batches.

Rows are yielded one at a time: a 100,000-row file is never held in memory. ``count_rows``
reads the whole file the same way, so an evaluation refuses a malformed file before it starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import DatasetError


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position in the file: the row's identity across a resumed run
    inputs: Any
    expectations: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of ``path``, in file order."""
    _require(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix in (".parquet", ".pq"):
        yield from _parquet_rows(path)
    else:
        yield from _jsonl_rows(path)


def _require(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist; pass --data FILE (JSONL, CSV or Parquet)")


def count_rows(path: Path) -> int:
    """Number of rows, every one of them read and checked: a malformed row anywhere in the file
    is a DatasetError (file, line, what to fix) before the first row runs, not after 79 of them.
    Streams like :func:`read_rows`: the file is never held in memory."""
    return sum(1 for _ in read_rows(path))


def file_digest(path: Path) -> str:
    _require(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _row(path: Path, where: str, index: int, record: Any) -> Row:
    if not isinstance(record, Mapping) or "inputs" not in record:
        raise DatasetError(
            f"{path}:{where}: a row must be an object with 'inputs' (and optionally "
            '\'expectations\'), e.g. {"inputs": {"question": "..."}, "expectations": {...}}'
        )
    expectations = record.get("expectations")
    if expectations is None:
        expectations = {}
    if not isinstance(expectations, Mapping):
        raise DatasetError(
            f"{path}:{where}: 'expectations' must be an object, e.g. "
            '{"inputs": {"question": "..."}, "expectations": {"expected_response": "..."}}'
        )
    return Row(index, record["inputs"], dict(expectations))


def _jsonl_rows(path: Path) -> Iterator[Row]:
    index = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DatasetError(
                    f"{path}:{number}: not valid JSON ({exc}); one JSON object per line"
                ) from exc
            yield _row(path, str(number), index, record)
            index += 1


def _csv_rows(path: Path) -> Iterator[Row]:
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the first column.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for index, record in enumerate(csv.DictReader(handle)):
            nested: dict[str, Any] = {}
            for column, value in record.items():
                part, _, name = (column or "").partition(".")
                if part in ("inputs", "expectations") and not name:
                    nested[part] = _json_cell(path, index, column, value)
                elif part == "inputs" or (part == "expectations" and value != ""):
                    # An empty expectations cell means "no expectation here", not "expect ''".
                    nested.setdefault(part, {})[name] = value
            yield _row(path, f"row {index + 1}", index, nested)


def _json_cell(path: Path, index: int, column: str, value: str) -> Any:
    try:
        return json.loads(value) if value else {}
    except ValueError as exc:
        raise DatasetError(f"{path}:row {index + 1}: column {column!r} must hold a JSON object") from exc


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            for column in ("inputs", "expectations"):
                if isinstance(record.get(column), str):
                    record[column] = _json_cell(path, index, column, record[column])
            if isinstance(record.get("expectations"), dict):
                # A struct column has every key of every row: a key this row lacks comes as None.
                record["expectations"] = {k: v for k, v in record["expectations"].items() if v is not None}
            yield _row(path, f"row {index + 1}", index, record)
            index += 1
