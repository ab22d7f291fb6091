"""The HTTP face of `promote serve`: a FastAPI app around an `AliasFollower`.

Endpoints:
  POST /invocations  MLflow's scoring protocol (JSON `dataframe_split`, `dataframe_records`,
                     `inputs`, `instances`, optional `params`; or CSV) -> {"predictions": [...]},
                     with the version that scored it in the `X-Model-Version` header.
  GET  /health       200 once a version is loaded, 503 before (also at /ping, as MLflow has it).
  GET  /version      model, alias, served version, when it was loaded, the last error.
  GET  /metrics      Prometheus text format, from a registry of this app's own.

Every problem with a request is the client's to fix and gets a 4xx with a one-line message in
MLflow's error shape ({"error_code", "message"}); only a fault of the model itself is a 500.
Payloads are parsed with MLflow's own scoring helpers and checked against the model signature by
pyfunc, so an endpoint accepts exactly what `mlflow models serve` accepts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from io import StringIO
from typing import TYPE_CHECKING, Any

# FastAPI reads the handlers' annotations, so its names must be importable at module level. Only
# `promote serve` imports this module, and it needs all of them anyway.
import anyio
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from promotion.errors import redact
from promotion.serving import AliasFollower, FollowerState, Served

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger("promotion.serving")

VERSION_HEADER = "X-Model-Version"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds; MLflow's scoring server default
# Scoring requests run at the same time. Python models hold the GIL while they score, so more
# threads only interleave them: each request then takes longer and the tail grows (measured with
# bench/serve.py). Models whose libraries release the GIL and use their own threads (XGBoost,
# LightGBM, PyTorch, ONNX Runtime) use every core from one calling thread anyway.
DEFAULT_SCORING_THREADS = 1
JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
MAX_MESSAGE = 1000  # MLflow's schema errors quote the whole input; keep answers readable
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


# -- scoring: plain functions, run on a worker thread ----------------------------------------------


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
        raise RequestError(400, "bad_input", _clip(exc.message)) from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RequestError(400, "bad_input",
                           _clip(f"cannot read the payload: {type(exc).__name__}: {exc}")) from exc


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
        raise RequestError(400, "bad_input", _clip(exc.message)) from exc
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # What a model raises about its input (wrong shape, a string where a number belongs).
        raise RequestError(400, "bad_input", _clip(
            f"the model rejected the input: {type(exc).__name__}: {exc}")) from exc


def encode_predictions(raw: Any) -> bytes:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(raw, out)
    return out.getvalue().encode("utf-8")


def score(served: Served, body: bytes, content_type: str | None) -> bytes:
    data, params = parse_request(body, content_type, served.input_schema)
    return encode_predictions(predict(served, data, params))


def _clip(message: str) -> str:
    message = redact(" ".join(message.split()))
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " ..."


# -- metrics -------------------------------------------------------------------------------------


class Metrics:
    """Request metrics labelled by the version that served them, plus the follower's state."""

    def __init__(self, follower: AliasFollower) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            disable_created_metrics,
        )

        # The *_created series double the output and no dashboard reads them.
        disable_created_metrics()
        # A registry of the app's own: several apps in one process (tests) never collide, and
        # nothing else in the process leaks into the endpoint's metrics.
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("promote_serve_requests", "Scoring requests, by served version "
                                "and HTTP status.", ["version", "status"], registry=self.registry)
        self.errors = Counter("promote_serve_request_errors", "Scoring requests that failed, by "
                              "served version and reason.", ["version", "reason"],
                              registry=self.registry)
        self.latency = Histogram("promote_serve_request_duration_seconds", "Time to answer a "
                                 "scoring request, by served version.", ["version"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_follower_collector(follower))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _follower_collector(follower: AliasFollower) -> Collector:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model", "alias"]
    key = [follower.model, follower.alias]

    class FollowerCollector:
        def collect(self) -> Iterable[Any]:
            state = follower.state
            served = state.served
            info = GaugeMetricFamily("promote_serve_model_info", "The served version (value 1).",
                                     labels=[*labels, "version"])
            if served is not None:
                info.add_metric([*key, served.version], 1)
            yield info
            for name, doc, value in (
                ("promote_serve_model_version", "Version number served (0: none loaded yet).",
                 _number(served.version if served else None)),
                ("promote_serve_alias_version", "Version number the alias pointed at on the last "
                 "successful check.", _number(state.alias_version)),
                ("promote_serve_in_sync", "1 when the served version is the one the alias points "
                 "at.", float(state.in_sync)),
                ("promote_serve_model_loaded_timestamp_seconds", "When the served version was "
                 "loaded (Unix time).", served.loaded_at if served else 0.0),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric(key, value)
                yield gauge
            for name, doc, count in (
                ("promote_serve_swaps", "Versions swapped in after the first one.", state.swaps),
                ("promote_serve_load_failures", "Versions that could not be loaded.",
                 state.load_failures),
            ):
                counter = CounterMetricFamily(name, doc, labels=labels)
                counter.add_metric(key, count)
                yield counter

    return FollowerCollector()


def _number(version: str | None) -> float:
    return float(version) if version and version.isdigit() else 0.0


# -- the app -------------------------------------------------------------------------------------


def version_document(follower: AliasFollower) -> dict[str, Any]:
    """What GET /version answers: enough to tell what is served and why."""
    state: FollowerState = follower.state
    served = state.served
    error = state.last_error
    return {
        "model": follower.model,
        "alias": follower.alias,
        "version": served.version if served else None,
        "run_id": served.run_id if served else None,
        "loaded_at": _iso(served.loaded_at) if served else None,
        "load_seconds": round(served.load_seconds, 3) if served else None,
        "serving_since": _iso(state.serving_since),
        "alias_version": state.alias_version,
        "in_sync": state.in_sync,
        "checked_at": _iso(state.checked_at),
        "poll_interval_seconds": follower.poll_interval,
        "swaps": state.swaps,
        "load_failures": state.load_failures,
        "last_error": None if error is None else {
            "message": error.message, "at": _iso(error.at), "version": error.version},
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def create_app(follower: AliasFollower, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
               scoring_threads: int = DEFAULT_SCORING_THREADS,
               manage_follower: bool = True) -> FastAPI:
    """The ASGI app. With `manage_follower`, the app starts and stops the follower's thread.

    /health, /version and /metrics never wait for scoring: they answer from the event loop.
    """
    # Imported now, not by the first request (it takes seconds): no request pays for it.
    import mlflow.pyfunc.scoring_server  # noqa: F401

    metrics = Metrics(follower)
    scoring = anyio.CapacityLimiter(scoring_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_follower:
            follower.start()
        try:
            yield
        finally:
            if manage_follower:
                await run_in_threadpool(follower.stop)

    app = FastAPI(title=f"promote serve {follower.model}@{follower.alias}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        # Taken once: the whole request runs on this version even if a swap happens meanwhile.
        served = follower.state.served
        version = served.version if served is not None else "none"
        try:
            if served is None:
                raise RequestError(503, "not_ready", "no model version is loaded yet; "
                                   "see GET /version")
            body = await _read_body(request, max_body_bytes)
            work = functools.partial(score, served, body, request.headers.get("content-type"))
            # The timeout includes the wait for a scoring thread: an overloaded endpoint sheds
            # requests with 504 instead of queueing them without bound.
            async with asyncio.timeout(request_timeout):
                content = await anyio.to_thread.run_sync(work, limiter=scoring)
            response = Response(content, media_type="application/json",
                                headers={VERSION_HEADER: version})
        except RequestError as exc:
            metrics.errors.labels(version, exc.reason).inc()
            response = _error_response(exc, version)
        except ClientDisconnect:  # the client left while sending: nobody to answer, no fault
            metrics.errors.labels(version, "client_disconnected").inc()
            response = Response(status_code=499)
        except TimeoutError:
            metrics.errors.labels(version, "timeout").inc()
            response = _error_response(RequestError(
                504, "timeout", f"scoring took longer than {request_timeout:g} s"), version)
        except Exception as exc:  # a fault of the model itself: log it, answer 500, keep serving
            log.exception("version %s failed to score a request", version)
            metrics.errors.labels(version, "model_error").inc()
            response = _error_response(RequestError(
                500, "model_error", _clip(f"the model failed: {type(exc).__name__}: {exc}")),
                version)
        metrics.requests.labels(version, str(response.status_code)).inc()
        metrics.latency.labels(version).observe(time.perf_counter() - started)
        return response

    async def health() -> Response:
        served = follower.state.served
        if served is None:
            return _json({"status": "loading", "model": follower.model, "version": None}, 503)
        return _json({"status": "ok", "model": follower.model, "version": served.version}, 200,
                     headers={VERSION_HEADER: served.version})

    app.get("/health")(health)
    app.get("/ping")(health)

    @app.get("/version")
    async def version() -> Response:
        return _json(version_document(follower), 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    app.state.follower = follower
    app.state.metrics = metrics
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes before reading them where the size is known."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "too_large", f"the body is {int(declared)} bytes; the limit is "
                           f"{limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body with no declared size
            raise RequestError(413, "too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(document: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status_code=status, media_type="application/json",
                    headers=headers)


def _error_response(exc: RequestError, version: str) -> Response:
    headers = {VERSION_HEADER: version} if version != "none" else None
    return _json({"error_code": exc.error_code, "message": exc.message}, exc.status, headers)
