"""Ground truth from a file: `promote feedback MODEL labels.csv|labels.parquet`.

Columns: `label` (required), and either `request_id` (with an optional `row`, default 0: the row
of that request, as `X-Request-Id` named it) or `row_key` (the value of the endpoint's
`--row-key` column). Every problem in the file is found before anything is written, and reported
with its line (CSV: the line in the file; Parquet: the row, from 1) and column; the batch is then
written all or nothing by `LogStore.add_feedback`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promotion.errors import InvalidInput
from promotion.monitoring.logrecords import Label

MAX_SHOWN = 5
SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class LabelFile:
    """The labels of a file, and the line of the file each came from."""

    path: str
    labels: tuple[Label, ...]
    lines: tuple[int, ...]

    def located(self, error: InvalidInput) -> InvalidInput:
        """A store's refusal (which names labels by index, `labels[3]`) told by file and line."""
        text = re.sub(r"labels\[(\d+)\]", lambda m: f"line {self.lines[int(m[1])]}", str(error))
        return InvalidInput(f"{self.path}: {text}")


def read_labels(path: str | Path, *, label_column: str = "label") -> LabelFile:
    """The labels of a CSV or Parquet file, or InvalidInput naming every problem (up to 5)."""
    frame, first_line = _read(Path(path))
    name = str(path)
    columns = [str(c) for c in frame.columns]
    if label_column not in columns:
        raise InvalidInput(f"{name}: missing column {label_column!r} (columns: "
                           f"{', '.join(columns) or 'none'})")
    by_request, by_key = "request_id" in columns, "row_key" in columns
    if by_request == by_key:
        raise InvalidInput(f"{name}: needs a 'request_id' column (with an optional 'row') or a "
                           f"'row_key' column, not {'both' if by_request else 'neither'}")
    if "row" in columns and not by_request:
        raise InvalidInput(f"{name}: column 'row' only applies with 'request_id'")
    labels, lines, problems = [], [], []
    for index, record in enumerate(frame.to_dict("records")):
        line = first_line + index
        try:
            labels.append(_label(record, label_column, by_request))
            lines.append(line)
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        shown = "; ".join(problems[:MAX_SHOWN])
        more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
        raise InvalidInput(f"{name}: {len(problems)} bad row(s), nothing written: {shown}{more}")
    if not labels:
        raise InvalidInput(f"{name}: no labels in the file; nothing written")
    return LabelFile(name, tuple(labels), tuple(lines))


def _read(path: Path) -> tuple[Any, int]:
    import pandas as pd

    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInput(f"{path}: expected a .csv or .parquet file")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            # Everything as text: a request id must not become a number, a label is parsed below.
            return pd.read_csv(path, dtype=str, keep_default_na=False), 2
        return pd.read_parquet(path), 1
    except (ValueError, OSError, ImportError) as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc}") from None


def _label(record: dict[str, Any], label_column: str, by_request: bool) -> Label:
    value = _value(record.get(label_column), label_column)
    if by_request:
        request_id = _text(record.get("request_id"), "request_id")
        row = _row(record.get("row", 0))
        return Label(label=value, request_id=request_id, row=row)
    return Label(label=value, row_key=_text(record.get("row_key"), "row_key"))


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _value(value: Any, column: str) -> float | str:
    if _missing(value):
        raise ValueError(f"column {column!r} is empty")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        if not math.isfinite(float(value)):
            raise ValueError(f"column {column!r} is not a finite number ({value})")
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text  # a class label
    if not math.isfinite(number):
        raise ValueError(f"column {column!r} is not a finite number ({text})")
    return number


def _text(value: Any, column: str) -> str:
    if _missing(value):
        raise ValueError(f"column {column!r} is empty")
    return str(value).strip()


def _row(value: Any) -> int:
    if _missing(value):
        return 0
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not text.isdigit():
        raise ValueError(f"column 'row' must be a row number from 0, got {text!r}")
    return int(text)
