"""The HTTP face of `promote serve`: a FastAPI app around an `AliasFollower`.

Endpoints:
  POST /invocations  MLflow's scoring protocol (JSON `dataframe_split`, `dataframe_records`,
                     `inputs`, `instances`, optional `params`; or CSV) -> {"predictions": [...]},
                     with the version that scored it in the `X-Model-Version` header; during a
                     rollout, the canary's share of requests goes to it (`serve.routing`).
  POST /feedback     ground truth for logged requests: {"labels": [{"request_id", "row",
                     "label"} or {"row_key", "label"}, ...]} -> {"written", "by_version"}.
  GET  /health       200 once a version is loaded, 503 before (also at /ping, as MLflow has it);
                     the canary, if a rollout is in force (it never changes readiness).
  GET  /version      model, alias, served version, when it was loaded, the last error, the
                     canary and its counters.
  GET  /metrics      Prometheus text format, from a registry of this app's own.
  POST /hooks/mlflow MLflow's registry webhooks, signed: an alias event for the served model
                     makes the follower check the registry now (`serve.hooks`); polling stays
                     the ground truth.

Every problem with a request is the client's to fix and gets a 4xx with a one-line message in
MLflow's error shape ({"error_code", "message"}); only a fault of the model itself is a 500.
Parsing and scoring are in `promotion.serve.protocol`, routing a request (and its canary) in
`promotion.serve.routing`, the canary's guard and shadow mirror in `promotion.serve.canary`, the
metrics in `promotion.serve.metrics`.

Every scoring answer carries X-Request-Id (the client's, when usable, else a new one). With an
inference log (`log`, a LogWriter), every request is logged once its answer is built, and the
rows of a `sample_rate` share of them (at most `max_rows` each) with their predictions: the
record is handed to the writer's queue, which never blocks; a slow or dead log database is
reported on /health, /version and /metrics, and never fails a request.
"""

from __future__ import annotations

import functools
import logging
import random
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

from promotion.errors import InvalidInput, LogUnavailable
from promotion.monitoring.logstore import LogWriter
from promotion.serve.canary import Canary
from promotion.serve.follower import AliasFollower, FollowerState
from promotion.serve.hooks import HOOK_PATH, Webhooks
from promotion.serve.metrics import Metrics
from promotion.serve.protocol import RequestError, clip, parse_feedback
from promotion.serve.requestlog import RequestLog
from promotion.serve.routing import (
    REQUEST_ID_HEADER,
    ROUTING_KEY_HEADER,
    VERSION_HEADER,
    Invocations,
    error_response,
    json_response,
    read_body,
)
from promotion.serve.shadow import DEFAULT_SHADOW_QUEUE, SHADOW_STOP_TIMEOUT

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("promotion.serving")

# The names other modules and tests use from here.
__all__ = ["REQUEST_ID_HEADER", "ROUTING_KEY_HEADER", "VERSION_HEADER", "RequestLog",
           "create_app", "events_document", "log_document", "version_document"]

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


def version_document(follower: AliasFollower, state: FollowerState | None = None
                     ) -> dict[str, Any]:
    """What GET /version answers: enough to tell what is served and why."""
    state = state if state is not None else follower.state
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
        "rollout_note": state.note,
    }


def events_document(hooks: Webhooks, state: FollowerState, *, full: bool = False
                    ) -> dict[str, Any]:
    """How the endpoint learns of moves, for /health (and with `full`, for /version): webhooks
    on or off, the last event that asked for a check, the last successful registry check."""
    event = state.last_event
    document: dict[str, Any] = {"webhook": "on" if hooks.enabled else "off",
                                "last_event_at": _iso(event.at) if event else None,
                                "last_poll_at": _iso(state.checked_at)}
    if full:
        document.update({
            "last_event": None if event is None else {
                "delivery_id": event.delivery_id, "alias": event.alias, "action": event.action,
                "version": event.version, "at": _iso(event.at)},
            "deliveries": hooks.counts(),
            "swaps_by_trigger": state.swaps_by_trigger.as_dict()})
    return document


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
               row_key: str | None = None, rng: random.Random | None = None,
               shadow_queue: int = DEFAULT_SHADOW_QUEUE,
               webhook_secret: str | None = None) -> FastAPI:
    """The ASGI app. With `manage_follower`, the app starts and stops the follower's thread;
    the log writer, when there is one, is always started with the app and closed after it
    (closing writes what is queued). `rng` draws the sampled requests (seed it in tests).
    `shadow_queue` bounds the request copies waiting for a shadow canary; its thread starts
    with the first copy and stops with the app (`app.state.canary.mirror.stop()` without one).
    `webhook_secret` (PROMOTE_WEBHOOK_SECRET) checks MLflow's deliveries to POST /hooks/mlflow;
    without it every delivery is refused.

    /health, /version and /metrics never wait for scoring: they answer from the event loop.
    """
    # Imported now, not by the first request (it takes seconds): no request pays for it.
    import mlflow.pyfunc.scoring_server  # noqa: F401
    from fastapi import FastAPI

    if not 0.0 <= sample_rate <= 1.0 or max_rows < 0:
        raise ValueError("sample_rate must be within [0, 1] and max_rows >= 0")
    requests = RequestLog(log, sample_rate, max_rows, row_key, rng or random.Random())
    canary = Canary(follower, requests, request_timeout=request_timeout,
                    scoring_threads=scoring_threads, shadow_queue=shadow_queue)
    hooks = Webhooks(follower, webhook_secret)
    metrics = Metrics(follower, log, canary, deliveries=hooks.counts)
    routes = Routes(follower, metrics, requests, canary, hooks, Invocations(
        follower, metrics, requests, canary, max_body_bytes=max_body_bytes,
        request_timeout=request_timeout, scoring=anyio.CapacityLimiter(scoring_threads)))
    app = FastAPI(title=f"promote serve {follower.model}@{follower.alias}",
                  lifespan=_lifespan(follower, manage_follower, log, canary),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.post("/invocations")(routes.invocations.handle)
    app.post("/feedback")(routes.feedback)
    app.get("/health")(routes.health)
    app.get("/ping")(routes.health)
    app.get("/version")(routes.version)
    app.get("/metrics")(routes.prometheus)
    app.post(HOOK_PATH)(hooks.handle)
    app.state.follower = follower
    app.state.metrics = routes.metrics
    app.state.log = log
    app.state.canary = canary
    app.state.hooks = hooks
    return app


def _lifespan(follower: AliasFollower, manage: bool, log: LogWriter | None,
              canary: Canary) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the follower's and the log's threads with the app and stop them (off the event
    loop) after it: the follower first, then the shadow mirror (a bounded wait: a hung canary
    cannot hold the shutdown), then the log, which writes what is still queued."""

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
            await run_in_threadpool(canary.mirror.stop, SHADOW_STOP_TIMEOUT)
            if log is not None:
                await run_in_threadpool(log.close, LOG_CLOSE_TIMEOUT)
                stats = log.stats()
                logger.info("inference log: %d requests written, %d dropped", stats.written,
                            stats.dropped)

    return lifespan


class Routes:
    """The handlers of one app, sharing its follower, metrics and limits."""

    def __init__(self, follower: AliasFollower, metrics: Metrics, log: RequestLog,
                 canary: Canary, hooks: Webhooks, invocations: Invocations) -> None:
        self.follower = follower
        self.metrics = metrics
        self.log = log
        self.canary = canary
        self.hooks = hooks
        self.invocations = invocations

    async def feedback(self, request: Request) -> Response:
        """Write a batch of labels to the inference log, off the event loop."""
        store = self.log.store
        try:
            if store is None:
                raise RequestError(503, "log_off", "the inference log is off (promote serve "
                                   "--log-uri none): there is nothing to join labels to")
            body = await read_body(request, self.invocations.max_body_bytes)
            labels, source = parse_feedback(body, request.headers.get("content-type"))
            result = await run_in_threadpool(
                functools.partial(store.add_feedback, labels, source=source or FEEDBACK_SOURCE,
                                  model=self.follower.model))
        except RequestError as exc:
            return error_response(exc, "none")
        except InvalidInput as exc:
            return error_response(RequestError(400, "bad_input", clip(str(exc))), "none")
        except LogUnavailable as exc:
            return error_response(RequestError(503, "log_unavailable", clip(str(exc))), "none")
        except ClientDisconnect:
            return Response(status_code=499)
        return json_response({"written": result.written, "by_version": result.by_version}, 200)

    async def health(self) -> Response:
        """Ready iff the primary is loaded: the canary never changes readiness."""
        state = self.follower.state
        served = state.served
        model = self.follower.model
        log = log_document(self.log.writer)
        canary = self.canary.document(state)
        events = events_document(self.hooks, state)
        if served is None:
            return json_response({"status": "loading", "model": model, "version": None,
                                  "canary": canary, "log": log, "events": events}, 503)
        return json_response({"status": "ok", "model": model, "version": served.version,
                              "canary": canary, "log": log, "events": events}, 200,
                             headers={VERSION_HEADER: served.version})

    async def version(self) -> Response:
        state = self.follower.state
        log = log_document(self.log.writer, full=True)
        if self.log.writer is not None:
            log.update(sample_rate=self.log.sample_rate, max_rows=self.log.max_rows,
                       row_key=self.log.row_key)
        return json_response({**version_document(self.follower, state),
                              "canary": self.canary.document(state, full=True),
                              "canary_totals": self.canary.totals(), "log": log,
                              "events": events_document(self.hooks, state, full=True)}, 200)

    async def prometheus(self) -> Response:
        content, media_type = self.metrics.render()
        return Response(content, media_type=media_type)
