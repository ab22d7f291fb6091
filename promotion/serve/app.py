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
Parsing and scoring are in `promotion.serve.protocol`, the metrics in `promotion.serve.metrics`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# FastAPI reads the handlers' annotations, so their names must be importable at module level:
# they are Starlette's own classes (fastapi.Request and fastapi.Response are these). FastAPI
# itself, and pydantic under it (~0.2 s), is imported by `create_app`: `promote serve --help`
# imports this module and must not pay for it.
import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from promotion.serve.follower import AliasFollower, FollowerState, Served
from promotion.serve.metrics import Metrics
from promotion.serve.protocol import RequestError, clip, score

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("promotion.serving")

VERSION_HEADER = "X-Model-Version"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds; MLflow's scoring server default
# Scoring requests run at the same time. Python models hold the GIL while they score, so more
# threads only interleave them: each request then takes longer and the tail grows (measured with
# bench/serve.py). Models whose libraries release the GIL and use their own threads (XGBoost,
# LightGBM, PyTorch, ONNX Runtime) use every core from one calling thread anyway.
DEFAULT_SCORING_THREADS = 1


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
    from fastapi import FastAPI

    routes = Routes(follower, Metrics(follower), max_body_bytes=max_body_bytes,
                    request_timeout=request_timeout, scoring_threads=scoring_threads)
    app = FastAPI(title=f"promote serve {follower.model}@{follower.alias}",
                  lifespan=_lifespan(follower, manage_follower),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.post("/invocations")(routes.invocations)
    app.get("/health")(routes.health)
    app.get("/ping")(routes.health)
    app.get("/version")(routes.version)
    app.get("/metrics")(routes.prometheus)
    app.state.follower = follower
    app.state.metrics = routes.metrics
    return app


def _lifespan(follower: AliasFollower,
              manage: bool) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the follower's thread with the app and stop it (off the event loop) after it."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if manage:
            follower.start()
        try:
            yield
        finally:
            if manage:
                await run_in_threadpool(follower.stop)

    return lifespan


class Routes:
    """The handlers of one app, sharing its follower, metrics and limits."""

    def __init__(self, follower: AliasFollower, metrics: Metrics, *, max_body_bytes: int,
                 request_timeout: float, scoring_threads: int) -> None:
        self.follower = follower
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.scoring = anyio.CapacityLimiter(scoring_threads)

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        # Taken once: the whole request runs on this version even if a swap happens meanwhile.
        served = self.follower.state.served
        version = served.version if served is not None else "none"
        errors = self.metrics.errors
        try:
            response = await self._score(request, served, version)
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
            log.exception("version %s failed to score a request", version)
            errors.labels(version, "model_error").inc()
            response = _error_response(RequestError(
                500, "model_error", clip(f"the model failed: {type(exc).__name__}: {exc}")),
                version)
        self.metrics.requests.labels(version, str(response.status_code)).inc()
        self.metrics.latency.labels(version).observe(time.perf_counter() - started)
        return response

    async def _score(self, request: Request, served: Served | None, version: str) -> Response:
        if served is None:
            raise RequestError(503, "not_ready", "no model version is loaded yet; "
                               "see GET /version")
        body = await _read_body(request, self.max_body_bytes)
        work = functools.partial(score, served, body, request.headers.get("content-type"))
        # The timeout includes the wait for a scoring thread: an overloaded endpoint sheds
        # requests with 504 instead of queueing them without bound.
        async with asyncio.timeout(self.request_timeout):
            content = await anyio.to_thread.run_sync(work, limiter=self.scoring)
        return Response(content, media_type="application/json",
                        headers={VERSION_HEADER: version})

    async def health(self) -> Response:
        served = self.follower.state.served
        model = self.follower.model
        if served is None:
            return _json({"status": "loading", "model": model, "version": None}, 503)
        return _json({"status": "ok", "model": model, "version": served.version}, 200,
                     headers={VERSION_HEADER: served.version})

    async def version(self) -> Response:
        return _json(version_document(self.follower), 200)

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
