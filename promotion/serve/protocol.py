"""MLflow's scoring protocol, as plain functions run on a worker thread: parse, predict, encode.

A request body is parsed with MLflow's own scoring helpers (JSON `dataframe_split`,
`dataframe_records`, `inputs`, `instances`, optional `params`; or CSV) and checked against the
model signature by pyfunc, so an endpoint accepts exactly what `mlflow models serve` accepts.
Every problem with a request is a `RequestError`: the HTTP status, metric reason and one-line
message it is answered with. What scoring saw (the parsed input, the raw predictions) is kept in
a `Scoring` for the inference log; `sample_rows` cuts the logged share of it. The request's id
and routing key (`request_id`, `routing_key`) and the body of `POST /feedback`
(`parse_feedback`) are read here too. mlflow and pandas are imported inside the
functions that use them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from io import StringIO
from typing import Any

from promotion.errors import redact
from promotion.monitoring.logstore import Label
from promotion.serve.follower import Served

JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
MAX_MESSAGE = 1000  # MLflow's schema errors quote the whole input; keep answers readable
# A client's X-Request-Id (and X-Routing-Key) is kept when it is 1-128 printable ASCII characters
# without spaces.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
FEEDBACK_KEYS = ("request_id", "row", "row_key", "label")
MAX_SOURCE = 256


class RequestError(Exception):
    """A request that cannot be scored, with the HTTP status and metric reason it maps to."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the `reason` label of promote_serve_request_errors_total
        self.message = message

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str, str]]:
        # Sent back from a scoring process as it is.
        return RequestError, (self.status, self.reason, self.message)

    @property
    def error_code(self) -> str:
        return {400: "BAD_REQUEST", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
                503: "TEMPORARILY_UNAVAILABLE", 504: "TIMEOUT"}.get(self.status, "INTERNAL_ERROR")


def parse_request(body: bytes, content_type: str | None, schema: Any) -> tuple[Any, dict | None]:
    """The model input and params of a request body, or RequestError naming what is wrong."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input

    if not body.strip():
        raise RequestError(400, "empty_body", "the request body is empty; send a JSON object with "
                           f"one of {', '.join(JSON_FORMATS)}")
    mime, charset = _content_type(content_type)
    if charset not in ("utf-8", "utf8"):
        raise RequestError(415, "unsupported_media_type",
                           f"charset {charset!r} is not supported; send UTF-8")
    try:
        if mime == "text/csv":
            return parse_csv_input(StringIO(body.decode("utf-8")), schema=schema), None
        if mime != "application/json":
            raise RequestError(415, "unsupported_media_type",
                               f"content type {mime!r} is not supported; send application/json "
                               "or text/csv")
        payload = _decode_json(body)
        data_format, params = _json_format(payload)
        return infer_and_parse_data({data_format: payload[data_format]}, schema), params
    except RequestError:
        raise
    except MlflowException as exc:
        raise RequestError(400, "bad_input", clip(exc.message)) from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RequestError(400, "bad_input",
                           clip(f"cannot read the payload: {type(exc).__name__}: {exc}")) from exc


def json_object(body: bytes, content_type: str | None) -> dict | None:
    """The body as a JSON object when it is one (UTF-8 JSON), else None: never raises."""
    mime, charset = _content_type(content_type)
    if mime != "application/json" or charset not in ("utf-8", "utf8"):
        return None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def parse_split(columns: list[str], data: list[list[Any]], schema: Any) -> Any:
    """The DataFrame of a `dataframe_split` input, cast to `schema` as MLflow does."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    return infer_and_parse_data({"dataframe_split": {"columns": columns, "data": data}}, schema)


def _content_type(header: str | None) -> tuple[str, str]:
    """(mime type, charset); a missing header means JSON, as most clients send it."""
    if not header:
        return "application/json", "utf-8"
    mime, *parameters = (part.strip() for part in header.split(";"))
    charset = "utf-8"
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return mime.lower(), charset


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(400, "malformed_json", f"the body is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(400, "malformed_json", f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise RequestError(400, "malformed_json", "malformed JSON: nested too deeply") from exc


def _json_format(payload: Any) -> tuple[str, dict | None]:
    if not isinstance(payload, dict):
        raise RequestError(400, "bad_input", "the body must be a JSON object with exactly one of "
                           f"{', '.join(JSON_FORMATS)} (got a JSON {type(payload).__name__})")
    formats = [key for key in JSON_FORMATS if key in payload]
    unknown = sorted(set(payload) - set(JSON_FORMATS) - {"params"})
    if len(formats) != 1 or unknown:
        found = ", ".join(sorted(payload)) or "nothing"
        raise RequestError(400, "bad_input", "the body must be a JSON object with exactly one of "
                           f"{', '.join(JSON_FORMATS)} and optionally params; found: {found}")
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise RequestError(400, "bad_input", "params must be a JSON object")
    return formats[0], params


def predict(served: Served, data: Any, params: dict | None) -> Any:
    """Score parsed input; MLflow's schema enforcement and the model's own checks become 400s."""
    from mlflow.exceptions import MlflowException

    try:
        if params:
            return served.model.predict(data, params=params)
        return served.model.predict(data)
    except MlflowException as exc:
        if exc.get_http_status_code() >= 500:
            raise
        raise RequestError(400, "bad_input", clip(exc.message)) from exc
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # What a model raises about its input (wrong shape, a string where a number belongs).
        raise RequestError(400, "bad_input", clip(
            f"the model rejected the input: {type(exc).__name__}: {exc}")) from exc


def encode_predictions(raw: Any) -> bytes:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(raw, out)
    return out.getvalue().encode("utf-8")


@dataclass
class Scoring:
    """What scoring one request saw, filled in as it goes (the app logs it afterwards)."""

    data: Any = None  # the parsed model input
    rows: int = 0  # rows in it (0 until it is parsed)
    raw: Any = None  # the model's raw predictions
    params: dict | None = None  # the request's params, if it had any
    logged: Any = None  # its sampled rows, already encoded (monitoring.logrecords.EncodedRows)


def score(served: Served, body: bytes, content_type: str | None,
          seen: Scoring | None = None) -> bytes:
    seen = seen if seen is not None else Scoring()
    data, params = parse_request(body, content_type, served.input_schema)
    seen.data, seen.rows, seen.params = data, row_count(data), params
    seen.raw = predict(served, data, params)
    return encode_predictions(seen.raw)


def row_count(data: Any) -> int:
    """Rows of a parsed input: a frame's or an array's length, a dict of columns' first column."""
    if isinstance(data, dict):
        first = next(iter(data.values()), None)
        return row_count(first) if first is not None else 0
    shape = getattr(data, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    try:
        return len(data)
    except TypeError:
        return 1 if data is not None else 0


def sample_rows(data: Any, raw: Any, max_rows: int,
                row_key: str | None) -> tuple[Any, Any, tuple[str, ...] | None]:
    """(the first `max_rows` input rows as a DataFrame, their predictions, their row keys).

    Copies of at most `max_rows` rows, never views: a queued record must not keep the whole
    request's arrays alive (the queue is bounded in records, and its memory must be too). The
    encoding happens on the log writer's thread.
    """
    import numpy as np
    import pandas as pd

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    frame = frame.iloc[:max_rows].copy()
    if isinstance(raw, pd.DataFrame | pd.Series):
        predictions = raw.iloc[:max_rows].copy()
    elif isinstance(raw, dict):
        predictions = {name: np.array(values[:max_rows]) for name, values in raw.items()}
    elif isinstance(raw, np.ndarray):
        predictions = np.array(raw[:max_rows])
    else:
        predictions = list(raw[:max_rows]) if hasattr(raw, "__getitem__") else raw
    keys = None
    if row_key is not None and row_key in frame.columns:
        keys = tuple("" if pd.isna(v) else str(v) for v in frame[row_key].tolist())
    return frame, predictions, keys


def request_id(header: str | None) -> str:
    """The client's X-Request-Id when it is usable, else a new one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def routing_key(header: str | None, rid: str) -> str:
    """What decides whether a request falls in the canary's share: the client's X-Routing-Key
    when it is usable (the same rules as X-Request-Id), else the request's id."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return rid


def parse_feedback(body: bytes, content_type: str | None) -> tuple[list[Label], str | None]:
    """The labels of a POST /feedback body and its optional source, or RequestError (400/415).

    Only the shape is checked here; what the labels say (types, rows, requests) is checked by
    the inference log, which refuses a batch as a whole.
    """
    mime, charset = _content_type(content_type)
    if mime != "application/json" or charset not in ("utf-8", "utf8"):
        raise RequestError(415, "unsupported_media_type", "send the labels as application/json "
                           "(UTF-8)")
    payload = _decode_json(body) if body.strip() else None
    expected = ('send {"labels": [{"request_id": "...", "row": 0, "label": 1.5}, ...]} '
                '(or "row_key" instead of request_id and row)')
    if not isinstance(payload, dict) or not isinstance(payload.get("labels"), list) \
            or set(payload) - {"labels", "source"}:
        raise RequestError(400, "bad_input", expected)
    source = payload.get("source")
    if source is not None and (not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE):
        raise RequestError(400, "bad_input", f"source must be a string of 1 to {MAX_SOURCE} "
                           "characters")
    problems = []
    for i, item in enumerate(payload["labels"]):
        if not isinstance(item, dict):
            problems.append(f"labels[{i}] is not an object")
        elif "label" not in item or set(item) - set(FEEDBACK_KEYS):
            found = ", ".join(sorted(item)) or "nothing"
            problems.append(f"labels[{i}] must have label and request_id (and row), or label and "
                            f"row_key; found: {found}")
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise RequestError(400, "bad_input", clip(f"{len(problems)} of {len(payload['labels'])} "
                           f"labels refused, nothing written: {'; '.join(problems[:5])}{more}"))
    labels = [Label(label=item["label"], request_id=item.get("request_id"),
                    row=item.get("row", 0), row_key=item.get("row_key"))
              for item in payload["labels"]]
    return labels, source


def clip(message: str) -> str:
    """A message on one line, without credentials, at most MAX_MESSAGE characters."""
    message = redact(" ".join(message.split()))
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " ..."
