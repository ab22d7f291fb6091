"""The HTTP face of `promote serve`: a FastAPI app around an `AliasFollower`.

Endpoints:
  POST /invocations  MLflow's scoring protocol (JSON `dataframe_split`, `dataframe_records`,
                     `inputs`, `instances`, optional `params`; or CSV) -> {"predictions": [...]},
                     with the version that scored it in the `X-Model-Version` header; during a
                     rollout, the canary's share of requests goes to it (`serve.routing`).
  POST /feedback     ground truth for logged requests: {"labels": [{"request_id", "row",
                     "label"} or {"row_key", "label"}, ...]} -> {"written", "by_version"}.
  GET  /health       200 once a version is loaded, 503 before (also at /ping, as MLflow has it);
                     the canary, if a rollout is in force (it never changes readiness); the
                     registry's condition (`status` degraded while it cannot be read).
  GET  /version      model, alias, served version, when it was loaded, the last error, the
                     canary and its counters.
  GET  /metrics      Prometheus text format, from a registry of this app's own.
  POST /hooks/mlflow MLflow's registry webhooks, signed: an alias event for the served model
                     makes the follower check the registry now (`serve.hooks`); polling stays
                     the ground truth.

The same handlers answer under /models/<name>/ (invocations, feedback, health, version), and an
endpoint of several models answers there only (promotion.serve.fleet, which builds every app;
promotion.serve.slot holds one model's handlers).

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

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from promotion.monitoring.logstore import LogWriter
from promotion.serve.batching import DEFAULT_BATCHING, BatchLimits
from promotion.serve.documents import events_document, log_document, version_document
from promotion.serve.fleet import Fleet, build_fleet
from promotion.serve.follower import AliasFollower
from promotion.serve.hooks import HOOK_PATH
from promotion.serve.requestlog import RequestLog
from promotion.serve.routing import REQUEST_ID_HEADER, ROUTING_KEY_HEADER, VERSION_HEADER
from promotion.serve.shadow import DEFAULT_SHADOW_QUEUE, SHADOW_STOP_TIMEOUT
from promotion.serve.slot import FEEDBACK_SOURCE

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("promotion.serving")

# The names other modules and tests use from here.
__all__ = ["FEEDBACK_SOURCE", "REQUEST_ID_HEADER", "ROUTING_KEY_HEADER", "VERSION_HEADER",
           "RequestLog", "create_app", "events_document", "fleet_app", "log_document",
           "version_document"]

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


def create_app(follower: AliasFollower, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
               scoring_threads: int = DEFAULT_SCORING_THREADS,
               manage_follower: bool = True, log: LogWriter | None = None,
               sample_rate: float = DEFAULT_SAMPLE_RATE, max_rows: int = DEFAULT_MAX_ROWS,
               row_key: str | None = None, rng: random.Random | None = None,
               shadow_queue: int = DEFAULT_SHADOW_QUEUE,
               webhook_secret: str | None = None,
               batching: BatchLimits = DEFAULT_BATCHING) -> FastAPI:
    """The ASGI app of one model. With `manage_follower`, the app starts and stops the
    follower's thread; the log writer, when there is one, is always started with the app and
    closed after it (closing writes what is queued). `rng` draws the sampled requests (seed it
    in tests). `shadow_queue` bounds the request copies waiting for a shadow canary; its thread
    starts with the first copy and stops with the app (`app.state.canary.mirror.stop()` without
    one). `webhook_secret` (PROMOTE_WEBHOOK_SECRET) checks MLflow's deliveries to POST
    /hooks/mlflow; without it every delivery is refused. `batching` merges concurrent requests
    into one predict call (`serve.batching`; `BatchLimits(0)`: every request scored alone).

    /health, /version and /metrics never wait for scoring: they answer from the event loop.
    """
    fleet = build_fleet([follower], log=log, sample_rate=sample_rate, max_rows=max_rows,
                        row_key=row_key, rng=rng, max_body_bytes=max_body_bytes,
                        request_timeout=request_timeout, scoring_threads=scoring_threads,
                        shadow_queue=shadow_queue, webhook_secret=webhook_secret,
                        batching=batching)
    return fleet_app(fleet, manage_follower=manage_follower)


def fleet_app(fleet: Fleet, *, manage_follower: bool = True) -> FastAPI:
    """The ASGI app of `fleet` (routes as in this module's docstring). With `manage_follower`,
    the app starts and stops the followers' threads; the log writer is always started with the
    app and closed after it."""
    # Imported now, not by the first request (it takes seconds): no request pays for it.
    import mlflow.pyfunc.scoring_server  # noqa: F401
    from fastapi import FastAPI

    app = FastAPI(title=f"promote serve {fleet.describe()}",
                  lifespan=_lifespan(fleet, manage_follower), docs_url=None, redoc_url=None,
                  openapi_url=None)
    if fleet.single:
        slot = fleet.first
        root: dict[str, Callable[..., Any]] = {
            "invocations": slot.invoke, "feedback": slot.feedback, "health": slot.health,
            "version": slot.version}
    else:
        root = {"invocations": fleet.not_here, "feedback": fleet.not_here,
                "health": fleet.health, "version": fleet.version}
    app.post("/invocations")(root["invocations"])
    app.post("/feedback")(root["feedback"])
    app.get("/health")(root["health"])
    app.get("/ping")(root["health"])
    app.get("/version")(root["version"])
    app.get("/metrics")(fleet.prometheus)
    app.post("/models/{name}/invocations")(fleet.model_invocations)
    app.post("/models/{name}/feedback")(fleet.model_feedback)
    app.get("/models/{name}/health")(fleet.model_health)
    app.get("/models/{name}/version")(fleet.model_version)
    app.post(HOOK_PATH)(fleet.hooks.handle)
    first = fleet.first
    app.state.fleet = fleet
    app.state.follower = first.follower
    app.state.metrics = first.metrics
    app.state.log = fleet.log
    app.state.canary = first.canary
    app.state.hooks = fleet.hooks
    return app


def _lifespan(fleet: Fleet, manage: bool) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start the followers' and the log's threads with the app and stop them (off the event
    loop) after it: the followers first, then the shadow mirrors (a bounded wait: a hung canary
    cannot hold the shutdown), then the log, which writes what is still queued."""
    slots = list(fleet.slots.values())
    log = fleet.log

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if manage:
            for slot in slots:
                slot.follower.start()
        if log is not None:
            log.start()
        try:
            yield
        finally:
            if manage:
                await asyncio.gather(*(run_in_threadpool(s.follower.stop) for s in slots))
            await asyncio.gather(*(run_in_threadpool(s.canary.mirror.stop, SHADOW_STOP_TIMEOUT)
                                   for s in slots))
            if log is not None:
                await run_in_threadpool(log.close, LOG_CLOSE_TIMEOUT)
                stats = log.stats()
                logger.info("inference log: %d requests written, %d dropped", stats.written,
                            stats.dropped)

    return lifespan
