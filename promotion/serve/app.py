"""The HTTP face of `promote serve`: a FastAPI app around an `AliasFollower`.

Endpoints:
  POST /invocations  MLflow's scoring protocol (JSON `dataframe_split`, `dataframe_records`,
                     `inputs`, `instances`, optional `params`; or CSV) -> {"predictions": [...]},
                     with the version that scored it in the `X-Model-Version` header.
  POST /feedback     ground truth for logged requests: {"labels": [{"request_id", "row",
                     "label"} or {"row_key", "label"}, ...]} -> {"written", "by_version"}.
  GET  /health       200 once a version is loaded, 503 before (also at /ping, as MLflow has it).
  GET  /version      model, alias, served version, when it was loaded, the last error.
  GET  /metrics      Prometheus text format, from a registry of this app's own.

Every problem with a request is the client's to fix and gets a 4xx with a one-line message in
MLflow's error shape ({"error_code", "message"}); only a fault of the model itself is a 500.
Parsing and scoring are in `promotion.serve.protocol`, the metrics in `promotion.serve.metrics`.

Every scoring answer carries X-Request-Id (the client's, when usable, else a new one). With an
inference log (`log`, a LogWriter), every request is logged once its answer is built, and the
rows of a `sample_rate` share of them (at most `max_rows` each) with their predictions: the
record is handed to the writer's queue, which never blocks; a slow or dead log database is
reported on /health, /version and /metrics, and never fails a request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

# FastAPI reads the handlers' annotations, so their names must be importable at module level:
# they are Starlette's own classes (fastapi.Request and fastapi.Response are these). FastAPI
# itself, and pydantic under it (~0.2 s), is imported by `create_app`: `promote serve --help`
# imports this module and must not pay for it.
import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from promotion.errors import InvalidInput, LogUnavailable
from promotion.monitoring.logstore import LogStore, LogWriter, RequestRecord, outcome_of
from promotion.serve.follower import AliasFollower, FollowerState, Served
from promotion.serve.metrics import Metrics
from promotion.serve.protocol import (
    RequestError,
    Scoring,
    clip,
    parse_feedback,
    request_id,
    sample_rows,
    score,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("promotion.serving")

VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-Id"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds; MLflow's scoring server default
# Scoring requests run at the same time. Python models hold the GIL while they score, so more
# threads only interleave them: each request then takes longer and the tail grows (measured with
# bench/serve.py). Models whose libraries release the GIL and use their own threads (XGBoost,
# LightGBM, PyTorch, ONNX Runtime) use every core from one calling thread anyway.
DEFAULT_SCORING_THREADS = 1
DEFAULT_SAMPLE_RATE = 1.0  # share of requests whose rows are logged
DEFAULT_MAX_ROWS = 100  # rows of one request logged at most
LOG_CLOSE_TIMEOUT = 10.0  # seconds the log may take to write what is queued at shutdown
FEEDBACK_SOURCE = "POST /feedback"


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


def log_document(log: LogWriter | None, *, full: bool = False) -> dict[str, Any]:
    """The inference log's state, for /health (and with `full`, for /version)."""
    if log is None:
        return {"status": "off", "dropped": 0, "last_error": None,
                **({"uri": None} if full else {})}
    stats = log.stats()
    document: dict[str, Any] = {"status": "ok" if stats.healthy else "degraded",
                                "dropped": stats.dropped, "last_error": stats.last_error}
    if full:
        document.update({
            "uri": log.store.where, "written": stats.written, "queued": stats.queued,
            "sampled_rows": stats.sampled_rows, "dropped_queue_full": stats.dropped_queue_full,
            "dropped_database": stats.dropped_database,
            "last_error_at": stats.last_error_at.isoformat(timespec="milliseconds")
            if stats.last_error_at else None})
    return document


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def create_app(follower: AliasFollower, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
               scoring_threads: int = DEFAULT_SCORING_THREADS,
               manage_follower: bool = True, log: LogWriter | None = None,
               sample_rate: float = DEFAULT_SAMPLE_RATE, max_rows: int = DEFAULT_MAX_ROWS,
               row_key: str | None = None, rng: random.Random | None = None) -> FastAPI:
    """The ASGI app. With `manage_follower`, the app starts and stops the follower's thread;
    the log writer, when there is one, is always started with the app and closed after it
    (closing writes what is queued). `rng` draws the sampled requests (seed it in tests).

    /health, /version and /metrics never wait for scoring: they answer from the event loop.
    """
    # Imported now, not by the first request (it takes seconds): no request pays for it.
    import mlflow.pyfunc.scoring_server  # noqa: F401
    from fastapi import FastAPI

    if not 0.0 <= sample_rate <= 1.0 or max_rows < 0:
        raise ValueError("sample_rate must be within [0, 1] and max_rows >= 0")
    routes = Routes(follower, Metrics(follower, log), max_body_bytes=max_body_bytes,
                    request_timeout=request_timeout, scoring_threads=scoring_threads,
                    log=RequestLog(log, sample_rate, max_rows, row_key, rng or random.Random()))
    app = FastAPI(title=f"promote serve {follower.model}@{follower.alias}",
                  lifespan=_lifespan(follower, manage_follower, log),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.post("/invocations")(routes.invocations)
    app.post("/feedback")(routes.feedback)
    app.get("/health")(routes.health)
    app.get("/ping")(routes.health)
    app.get("/version")(routes.version)
    app.get("/metrics")(routes.prometheus)
    app.state.follower = follower
    app.state.metrics = routes.metrics
    app.state.log = log
    return app


def _lifespan(follower: AliasFollower, manage: bool,
              log: LogWriter | None) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the follower's and the log's threads with the app and stop them (off the event
    loop) after it: the follower first, then the log, which writes what is still queued."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if manage:
            follower.start()
        if log is not None:
            log.start()
        try:
            yield
        finally:
            if manage:
                await run_in_threadpool(follower.stop)
            if log is not None:
                await run_in_threadpool(log.close, LOG_CLOSE_TIMEOUT)
                stats = log.stats()
                logger.info("inference log: %d requests written, %d dropped", stats.written,
                            stats.dropped)

    return lifespan


class RequestLog:
    """How an app logs its requests: the writer (None: the log is off) and the sampling."""

    def __init__(self, writer: LogWriter | None, sample_rate: float, max_rows: int,
                 row_key: str | None, rng: random.Random) -> None:
        self.writer = writer
        # Feedback is written to the writer's own store, synchronously.
        self.store = cast(LogStore, writer.store) if writer is not None else None
        self.sample_rate = sample_rate
        self.max_rows = max_rows
        self.row_key = row_key
        self.rng = rng

    def submit(self, rid: str, arrived: datetime, model: str, alias: str, served: Served | None,
               seconds: float, status: int, seen: Scoring) -> None:
        """Hand one request to the writer; never raises, never blocks."""
        if self.writer is None:
            return
        inputs = predictions = keys = None
        if (status == 200 and seen.raw is not None and self.max_rows > 0
                and self.rng.random() < self.sample_rate):
            try:
                inputs, predictions, keys = sample_rows(seen.data, seen.raw, self.max_rows,
                                                        self.row_key)
            except Exception:  # inputs no table holds (tensors): the request is still logged
                inputs = predictions = keys = None
        try:
            self.writer.submit(RequestRecord(
                request_id=rid, at=arrived, model=model, alias=alias,
                version=served.version if served is not None else None, rows=seen.rows,
                latency_ms=seconds * 1000.0, outcome=outcome_of(status), status=status,
                inputs=inputs, predictions=predictions, row_keys=keys))
        except Exception:  # a request is never failed by its log
            logger.exception("could not log request %s", rid)


class Routes:
    """The handlers of one app, sharing its follower, metrics and limits."""

    def __init__(self, follower: AliasFollower, metrics: Metrics, *, max_body_bytes: int,
                 request_timeout: float, scoring_threads: int, log: RequestLog) -> None:
        self.follower = follower
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.scoring = anyio.CapacityLimiter(scoring_threads)
        self.log = log

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        arrived = datetime.now(UTC)
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        # Taken once: the whole request runs on this version even if a swap happens meanwhile.
        served = self.follower.state.served
        version = served.version if served is not None else "none"
        errors = self.metrics.errors
        seen = Scoring()
        try:
            response = await self._score(request, served, version, seen)
        except RequestError as exc:
            errors.labels(version, exc.reason).inc()
            response = _error_response(exc, version)
        except ClientDisconnect:  # the client left while sending: nobody to answer, no fault
            errors.labels(version, "client_disconnected").inc()
            response = Response(status_code=499)
        except TimeoutError:
            errors.labels(version, "timeout").inc()
            response = _error_response(RequestError(
                504, "timeout", f"scoring took longer than {self.request_timeout:g} s"), version)
        except Exception as exc:  # a fault of the model itself: log it, answer 500, keep serving
            logger.exception("version %s failed to score a request", version)
            errors.labels(version, "model_error").inc()
            response = _error_response(RequestError(
                500, "model_error", clip(f"the model failed: {type(exc).__name__}: {exc}")),
                version)
        response.headers[REQUEST_ID_HEADER] = rid
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(version, str(response.status_code)).inc()
        self.metrics.latency.labels(version).observe(seconds)
        self.log.submit(rid, arrived, self.follower.model, self.follower.alias, served, seconds,
                        response.status_code, seen)
        return response

    async def _score(self, request: Request, served: Served | None, version: str,
                     seen: Scoring) -> Response:
        if served is None:
            raise RequestError(503, "not_ready", "no model version is loaded yet; "
                               "see GET /version")
        body = await _read_body(request, self.max_body_bytes)
        work = functools.partial(score, served, body, request.headers.get("content-type"), seen)
        # The timeout includes the wait for a scoring thread: an overloaded endpoint sheds
        # requests with 504 instead of queueing them without bound.
        async with asyncio.timeout(self.request_timeout):
            content = await anyio.to_thread.run_sync(work, limiter=self.scoring)
        return Response(content, media_type="application/json",
                        headers={VERSION_HEADER: version})

    async def feedback(self, request: Request) -> Response:
        """Write a batch of labels to the inference log, off the event loop."""
        store = self.log.store
        try:
            if store is None:
                raise RequestError(503, "log_off", "the inference log is off (promote serve "
                                   "--log-uri none): there is nothing to join labels to")
            body = await _read_body(request, self.max_body_bytes)
            labels, source = parse_feedback(body, request.headers.get("content-type"))
            result = await run_in_threadpool(
                functools.partial(store.add_feedback, labels, source=source or FEEDBACK_SOURCE,
                                  model=self.follower.model))
        except RequestError as exc:
            return _error_response(exc, "none")
        except InvalidInput as exc:
            return _error_response(RequestError(400, "bad_input", clip(str(exc))), "none")
        except LogUnavailable as exc:
            return _error_response(RequestError(503, "log_unavailable", clip(str(exc))), "none")
        except ClientDisconnect:
            return Response(status_code=499)
        return _json({"written": result.written, "by_version": result.by_version}, 200)

    async def health(self) -> Response:
        served = self.follower.state.served
        model = self.follower.model
        log = log_document(self.log.writer)
        if served is None:
            return _json({"status": "loading", "model": model, "version": None, "log": log},
                         503)
        return _json({"status": "ok", "model": model, "version": served.version, "log": log},
                     200, headers={VERSION_HEADER: served.version})

    async def version(self) -> Response:
        log = log_document(self.log.writer, full=True)
        if self.log.writer is not None:
            log.update(sample_rate=self.log.sample_rate, max_rows=self.log.max_rows,
                       row_key=self.log.row_key)
        return _json({**version_document(self.follower), "log": log}, 200)

    async def prometheus(self) -> Response:
        content, media_type = self.metrics.render()
        return Response(content, media_type=media_type)


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
