"""Request records to table rows, and logged rows back to frames and arrays.

Runs on the log writer's thread, never on the request path: the endpoint hands over the parsed
input frame and the model's raw predictions as they are, and they become JSON here. Input rows
become one JSON object each ({column: value}, so SQL can read one column of it); NaN and
infinities become null, numpy scalars plain numbers, timestamps ISO 8601 text (pandas' own
encoder does all of it, in C). A prediction that is a plain number is stored as a number; any
other (a class name, a vector of probabilities, a row of a multi-output frame) as JSON.

pandas and numpy are imported inside the functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from promotion.monitoring.logrecords import EncodedRows, RequestRecord


def encode(records: Sequence[RequestRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inference_requests rows, inference_rows rows) of a batch of records."""
    requests: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for record in records:
        logged = _rows_of(record) if record.version is not None else []
        requests.append({
            "request_id": record.request_id, "at": record.at, "model": record.model,
            "alias": record.alias, "version": record.version, "rows": int(record.rows),
            "latency_ms": float(record.latency_ms), "outcome": record.outcome,
            "status": int(record.status), "sampled_rows": len(logged),
            "role": None if record.role == "answer" else record.role})
        rows.extend(logged)
    return requests, rows


def _rows_of(record: RequestRecord) -> list[dict[str, Any]]:
    """The logged rows of a request; none when its input cannot be encoded (the request
    itself is still logged: one odd payload must not cost the rest of the batch)."""
    if record.encoded is not None:
        lines, predictions = record.encoded.lines, record.encoded.predictions
        keys = record.encoded.keys or ()
    elif record.inputs is None:
        return []
    else:
        try:
            lines = input_lines(record.inputs)
            predictions = prediction_values(record.predictions, len(lines))
        except (TypeError, ValueError, OverflowError, RecursionError):
            return []
        keys = record.row_keys or ()
    out = []
    for i, line in enumerate(lines):
        number, other = predictions[i] if i < len(predictions) else (None, None)
        out.append({"request_id": record.request_id, "row": i, "model": record.model,
                    "version": record.version, "at": record.at, "inputs": line,
                    "prediction": number, "prediction_json": other,
                    "row_key": _text_column(keys[i]) if i < len(keys) and keys[i] is not None
                    else None})
    return out


def encode_rows(inputs: Any, raw: Any, max_rows: int, row_key: str | None) -> EncodedRows | None:
    """The first `max_rows` rows of a request and their predictions, encoded as the log stores
    them, where the request was scored (a scoring process), so that the endpoint's own process
    only writes them. None when they cannot be encoded (the request itself is still logged)."""
    import pandas as pd

    try:
        frame = inputs if isinstance(inputs, pd.DataFrame) else pd.DataFrame(inputs)
        frame = frame.iloc[:max_rows]
        lines = input_lines(frame)
        predictions = prediction_values(raw, len(lines))
        keys = None
        if row_key is not None and row_key in frame.columns:
            keys = tuple("" if pd.isna(v) else str(v) for v in frame[row_key].tolist())
    except (TypeError, ValueError, OverflowError, RecursionError):
        return None
    return EncodedRows(lines, predictions, keys)


def _is_missing(value: Any) -> bool:
    import pandas as pd

    return value is pd.NA or value is pd.NaT


def _text_column(value: Any) -> str:
    """Text for a TEXT column: PostgreSQL refuses the NUL character, which a client can send."""
    return str(value).replace("\x00", "")


def input_lines(inputs: Any) -> list[str]:
    """One JSON object per row of a frame (or of anything a DataFrame can be made of)."""
    import pandas as pd

    frame = inputs if isinstance(inputs, pd.DataFrame) else pd.DataFrame(inputs)
    if len(frame) == 0:
        return []
    columns = frame.columns
    if not (columns.is_unique and columns.inferred_type in ("string", "empty")):
        frame = frame.set_axis(_unique([str(c) for c in columns]), axis=1)
    # Not DataFrame.to_json: it keeps 10 significant digits (15 at most), and a value that comes
    # back changed can fall on the other side of a reference bin's edge (a 0/1 column's edges
    # are its values). json.dumps writes the shortest text that reads back as the same float.
    # (Nor DataFrame.to_dict, which costs ~0.3 ms for a single row: the writer would fall behind.)
    names = [str(c) for c in frame.columns]
    return [json.dumps({k: native(v) for k, v in zip(names, row, strict=True)},
                       allow_nan=False) for row in frame.to_numpy(dtype=object).tolist()]


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}.{count}")
    return out


def prediction_values(raw: Any, n: int) -> list[tuple[float | None, str | None]]:
    """(number, JSON text) per row for the first `n` predictions: a plain number goes in the
    first, anything else in the second, null in neither."""
    if raw is None or n == 0:
        return []
    out: list[tuple[float | None, str | None]] = []
    for value in _plain(raw)[:n]:
        if value is None:
            out.append((None, None))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append((float(value), None))
        else:
            out.append((None, json.dumps(value, allow_nan=False)))
    return out


def _plain(raw: Any) -> list[Any]:
    """The predictions as a list of JSON-ready values, one per row."""
    import numpy as np
    import pandas as pd

    if isinstance(raw, dict):  # {output name: values}: row i is {name: values[i]}
        raw = pd.DataFrame({k: list(np.asarray(v)) if np.ndim(v) > 1 else v
                            for k, v in raw.items()})
    if isinstance(raw, pd.DataFrame):
        if raw.shape[1] != 1:
            names = [str(c) for c in raw.columns]
            return [{k: native(v) for k, v in zip(names, row, strict=True)}
                    for row in raw.to_numpy(dtype=object).tolist()]
        raw = raw.iloc[:, 0]
    if isinstance(raw, np.ndarray) and raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype.kind in "biuf":
        # The common case (a regressor's or a classifier's output), without pandas.
        return [v if not isinstance(v, float) or math.isfinite(v) else None
                for v in raw.tolist()]
    if isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype != object:
        raw = pd.Series(raw)
    if isinstance(raw, pd.Series):
        return [native(v) for v in raw.tolist()]
    if isinstance(raw, np.ndarray):
        return [native(v) for v in raw.tolist()] if raw.ndim else [native(raw.item())]
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        return [native(raw)]
    return [native(v) for v in raw]


def native(value: Any) -> Any:
    """A JSON-ready copy of a value: NaN/inf -> None, numpy scalars -> numbers, timestamps ->
    ISO text, containers recursively, anything else its str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if _is_missing(value):  # pandas' NA and NaT: missing, not the text "<NA>"
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [native(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return native(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return native(tolist())
    return str(value)


# -- reading back ---------------------------------------------------------------------------------


def decode_objects(texts: Sequence[str | None]) -> list[Any]:
    """JSON texts (None: SQL NULL) decoded in one call: the cost is the parser's, not Python's
    call per row."""
    import json

    return json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]")


def frame_of(inputs: Sequence[Any]) -> Any:
    """The input rows (decoded JSON objects) as a DataFrame; a missing column is NaN."""
    import pandas as pd

    return pd.DataFrame.from_records([row if isinstance(row, dict) else {} for row in inputs])


def numbers(values: Sequence[float | None]) -> Any:
    """float64, NaN where a value is missing."""
    import numpy as np

    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def numeric_or_text(values: Sequence[Any]) -> Any:
    """float64 when every value is a number (or a string that reads as one), else an object
    array of strings (class labels)."""
    import numpy as np

    try:
        return np.array([_as_float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([None if v is None else text(v) for v in values], dtype=object)


def _as_float(value: Any) -> float:
    """A number, NaN for a missing one (a NaN prediction is stored as NULL); a boolean or a
    string that is not a number raises (the values are labels then)."""
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        raise TypeError(value)
    return float(value)


def text(value: Any) -> str:
    """A value as a class label: strings as they are, integral numbers without ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value
    return json.dumps(value)
