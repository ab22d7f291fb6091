"""Scoring a batch of requests: parse each, merge what can be merged, predict, split back.

Run on a scoring thread or in a scoring process (serve.workers), never on the event loop:

1. each request's body is parsed with MLflow's own helpers (`serve.protocol.parse_request`);
   one that cannot be parsed gets its RequestError and takes no further part;
2. the parsed inputs are grouped by *merge key*: their kind (DataFrame or array), columns,
   dtypes and params. Any other input (a dict of tensors, a categorical column, params that are
   not JSON) is a group of its own. A group is cut into predict calls of at most `max_rows`
   rows (a larger request is a call of its own);
3. each call's predictions are split back by row counts, so each request gets exactly its own
   rows, in order. If a call fails (one request's values break the model) or its predictions
   cannot be split (a model that does not answer one row per row), every request in it is
   scored again on its own: one bad request never fails its neighbours.

Merging assumes a model scores each row independently of the others in the call, as MLflow's
scoring protocol does for a DataFrame.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from promotion.monitoring.logencode import encode_rows
from promotion.monitoring.logrecords import EncodedRows
from promotion.serve.protocol import (
    RequestError,
    encode_predictions,
    json_object,
    parse_request,
    parse_split,
    predict,
    row_count,
)
from promotion.serve.state import Served


@dataclass(frozen=True)
class Raw:
    """One request as it arrived: its body and content type; `keep` asks for its parsed input
    and raw predictions back (for a shadow copy), `log_rows` for its first rows encoded for the
    inference log (with the values of the `row_key` column)."""

    body: bytes
    content_type: str | None
    keep: bool = False
    log_rows: int = 0
    row_key: str | None = None

    def result(self, content: bytes, rows: int, params: dict | None, data: Any, raw: Any,
               encoded: EncodedRows | None = None) -> Result:
        """A scored request's result, with what it asked to get back (its logged rows cut from
        `encoded`, the whole call's, when given)."""
        logged = None
        if self.log_rows and encoded is not None:
            n = min(rows, self.log_rows)
            logged = EncodedRows(encoded.lines[:n], encoded.predictions[:n],
                                 encoded.keys[:n] if encoded.keys is not None else None)
        elif self.log_rows:
            logged = encode_rows(data, raw, self.log_rows, self.row_key)
        return Result(content, None, rows, params, data if self.keep else None,
                      raw if self.keep else None, logged)


@dataclass(frozen=True)
class Result:
    """One request's share of a batch: its encoded answer, or what went wrong (a RequestError
    for its own input, anything else a fault of the model), and what scoring it saw."""

    content: bytes = b""
    error: Exception | None = None
    rows: int = 0
    params: dict | None = None
    data: Any = None  # its parsed input (only when kept)
    raw: Any = None  # its raw predictions (only when kept)
    logged: EncodedRows | None = None  # its logged rows, encoded (only when asked for)


@dataclass
class Scored:
    """A batch's results (in request order), the predict calls made (requests, rows each),
    the calls scored again request by request, and where it ran (thread, process)."""

    results: list[Result]
    calls: list[tuple[int, int]] = field(default_factory=list)
    retried: int = 0
    where: str = "thread"


@dataclass
class _Parsed:
    index: int
    data: Any
    params: dict | None
    rows: int


def score_raw(served: Served, raws: Sequence[Raw], max_rows: int) -> Scored:
    """Parse, merge, predict and split the requests of one batch, all for `served`."""
    results: list[Result | None] = [None] * len(raws)
    scored = Scored([])
    rest = _merged_before_parsing(served, raws, max_rows, results, scored)
    _parsed_then_merged(served, raws, rest, max_rows, results, scored)
    scored.results = [r if r is not None else Result(error=RuntimeError("not scored"))
                      for r in results]
    return scored


@dataclass(frozen=True)
class _Split:
    """A `dataframe_split` request whose rows can be joined to others' before parsing."""

    index: int
    key: Hashable
    columns: list[str]
    data: list[list[Any]]
    params: dict | None


def _merged_before_parsing(served: Served, raws: Sequence[Raw], max_rows: int,
                           results: list[Result | None], scored: Scored) -> list[int]:
    """Score the `dataframe_split` requests that share columns and params as one input, parsed
    once: with a column signature, MLflow casts each column to its type, so joining rows before
    parsing gives the frame joining the parsed frames would. The requests left to parse one by
    one (in order)."""
    schema = served.input_schema
    if schema is None or schema.is_tensor_spec():
        return list(range(len(raws)))
    rest: list[int] = []
    groups: dict[Hashable, list[_Split]] = {}
    for i, raw in enumerate(raws):
        found = _split_request(i, raw)
        if found is None:
            rest.append(i)
        else:
            groups.setdefault(found.key, []).append(found)
    for group in groups.values():
        for call in _cut(group, max_rows, lambda s: len(s.data)):
            if len(call) == 1 or not _score_split(served, raws, call, results, scored):
                rest.extend(s.index for s in call)
    return sorted(rest)


def _split_request(index: int, raw: Raw) -> _Split | None:
    payload = json_object(raw.body, raw.content_type)
    if payload is None or "dataframe_split" not in payload \
            or set(payload) - {"dataframe_split", "params"}:
        return None
    split_input, params = payload["dataframe_split"], payload.get("params")
    if not isinstance(split_input, dict) or set(split_input) != {"columns", "data"} \
            or not (params is None or isinstance(params, dict)):
        return None
    columns, data = split_input["columns"], split_input["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) \
            or not isinstance(data, list) or not data \
            or not all(isinstance(row, list) and len(row) == len(columns) for row in data):
        return None
    try:
        same_params = json.dumps(params, sort_keys=True) if params else None
    except (TypeError, ValueError):
        return None
    return _Split(index, (tuple(columns), same_params), columns, data, params or None)


def _score_split(served: Served, raws: Sequence[Raw], call: list[_Split],
                 results: list[Result | None], scored: Scored) -> bool:
    """Parse and score `call`'s rows as one input; False (nothing recorded) if that fails."""
    sizes = [len(s.data) for s in call]
    try:
        frame = parse_split(call[0].columns, [row for s in call for row in s.data],
                            served.input_schema)
        raw = predict(served, frame, call[0].params)
        pieces = split(raw, sizes)
        contents = [encode_predictions(piece) for piece in pieces]
    except Exception:
        return False
    scored.calls.append((len(call), sum(sizes)))
    # The logged rows of the whole call, encoded at once (cheaper than request by request).
    logging = [raws[s.index] for s in call if raws[s.index].log_rows]
    encoded = encode_rows(frame, raw, len(frame), logging[0].row_key) if logging else None
    start = 0
    for s, size, piece, content in zip(call, sizes, pieces, contents, strict=True):
        end = start + size
        mine = None if encoded is None else EncodedRows(
            encoded.lines[start:end], encoded.predictions[start:end],
            encoded.keys[start:end] if encoded.keys is not None else None)
        request = raws[s.index]
        wanted = request.keep or (mine is None and request.log_rows)
        results[s.index] = request.result(content, size, s.params,
                                          frame.iloc[start:end] if wanted else None, piece, mine)
        start = end
    return True


def _parsed_then_merged(served: Served, raws: Sequence[Raw], indices: list[int],
                        max_rows: int, results: list[Result | None], scored: Scored) -> None:
    """Parse each request on its own, then merge the parsed inputs that can be merged."""
    groups: dict[Hashable, list[_Parsed]] = {}
    alone: list[_Parsed] = []
    for i in indices:
        raw = raws[i]
        try:
            data, params = parse_request(raw.body, raw.content_type, served.input_schema)
        except RequestError as exc:
            results[i] = Result(error=exc)
            continue
        parsed = _Parsed(i, data, params, row_count(data))
        key = merge_key(data, params)
        if key is None:
            alone.append(parsed)
        else:
            groups.setdefault(key, []).append(parsed)
    for group in [*groups.values(), *([p] for p in alone)]:
        for call in _cut(group, max_rows, lambda p: p.rows):
            outcomes, retried = _predict_call(served, call)
            scored.calls.append((len(call), sum(p.rows for p in call)))
            scored.retried += retried
            for parsed, (content, raw, error) in zip(call, outcomes, strict=True):
                results[parsed.index] = raws[parsed.index].result(
                    content, parsed.rows, parsed.params, parsed.data, raw) if error is None \
                    else Result(error=error, rows=parsed.rows, params=parsed.params)


T = TypeVar("T")


def _cut(group: list[T], max_rows: int, rows_of: Callable[[T], int]) -> list[list[T]]:
    """`group` cut, in order, into calls of at most `max_rows` rows (at least one request)."""
    calls: list[list[T]] = []
    rows = 0
    for item in group:
        size = rows_of(item)
        if calls and rows + size <= max_rows:
            calls[-1].append(item)
            rows += size
        else:
            calls.append([item])
            rows = size
    return calls


Outcome = tuple[bytes, Any, Exception | None]  # (encoded answer, raw predictions, error)


def _predict_call(served: Served, call: list[_Parsed]) -> tuple[list[Outcome], bool]:
    """(each request's outcome; whether the call was made again request by request)."""
    if len(call) == 1:
        return [_alone(served, call[0])], False
    try:
        raw = predict(served, concat([p.data for p in call]), call[0].params)
        pieces = split(raw, [p.rows for p in call])
        return [(encode_predictions(piece), piece, None) for piece in pieces], False
    except Exception:
        return [_alone(served, p) for p in call], True


def _alone(served: Served, parsed: _Parsed) -> Outcome:
    try:
        raw = predict(served, parsed.data, parsed.params)
        return encode_predictions(raw), raw, None
    except Exception as exc:
        return b"", None, exc


def merge_key(data: Any, params: dict | None) -> Hashable | None:
    """What requests must share to be scored in one call (None: this one is scored alone)."""
    import numpy as np
    import pandas as pd

    try:
        same_params = json.dumps(params, sort_keys=True) if params else None
    except (TypeError, ValueError):
        return None
    if isinstance(data, pd.DataFrame):
        if not data.columns.is_unique or any(isinstance(t, pd.CategoricalDtype)
                                             for t in data.dtypes):
            return None
        try:
            columns = tuple(data.columns)
            hash(columns)
        except TypeError:
            return None
        return "frame", columns, tuple(str(t) for t in data.dtypes), same_params
    if isinstance(data, np.ndarray) and data.ndim >= 1 and data.dtype != object:
        return "array", data.dtype.str, data.shape[1:], same_params
    return None


def concat(parts: Sequence[Any]) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(parts[0], pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)


class Unsplittable(ValueError):
    """Predictions that do not have one entry per input row."""


def split(raw: Any, sizes: Sequence[int]) -> list[Any]:
    """`raw` cut into consecutive parts of `sizes` rows (Unsplittable when it has not exactly
    their sum)."""
    import pandas as pd

    if isinstance(raw, dict):
        columns = {name: split(values, sizes) for name, values in raw.items()}
        return [{name: parts[i] for name, parts in columns.items()} for i in range(len(sizes))]
    try:
        length = len(raw)
    except TypeError as exc:
        raise Unsplittable(f"predictions of type {type(raw).__name__} have no length") from exc
    if isinstance(raw, str | bytes) or length != sum(sizes):
        raise Unsplittable(f"{length} predictions for {sum(sizes)} rows")
    parts, start = [], 0
    frame_like = isinstance(raw, pd.DataFrame | pd.Series)
    for size in sizes:
        parts.append(raw.iloc[start:start + size] if frame_like else raw[start:start + size])
        start += size
    return parts
