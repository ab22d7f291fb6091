"""MLflow's scoring protocol, as plain functions run on a worker thread: parse, predict, encode.

A request body is parsed with MLflow's own scoring helpers (JSON `dataframe_split`,
`dataframe_records`, `inputs`, `instances`, optional `params`; or CSV) and checked against the
model signature by pyfunc, so an endpoint accepts exactly what `mlflow models serve` accepts.
Every problem with a request is a `RequestError`: the HTTP status, metric reason and one-line
message it is answered with. mlflow is imported inside the functions that use it.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from promotion.errors import redact
from promotion.serve.follower import Served

JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
MAX_MESSAGE = 1000  # MLflow's schema errors quote the whole input; keep answers readable


class RequestError(Exception):
    """A request that cannot be scored, with the HTTP status and metric reason it maps to."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the `reason` label of promote_serve_request_errors_total
        self.message = message

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


def score(served: Served, body: bytes, content_type: str | None) -> bytes:
    data, params = parse_request(body, content_type, served.input_schema)
    return encode_predictions(predict(served, data, params))


def clip(message: str) -> str:
    """A message on one line, without credentials, at most MAX_MESSAGE characters."""
    message = redact(" ".join(message.split()))
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " ..."
