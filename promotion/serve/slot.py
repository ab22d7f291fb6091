"""One model in an endpoint: its follower, canary, metrics, and the handlers of its routes.

An endpoint serves one slot per model (promotion.serve.fleet). With one model its handlers answer
at the root (/invocations, /feedback, /health, /version) and under /models/<name>/; with several,
under /models/<name>/ only.

A lazy model is loaded by its first request: the request (and any that arrive meanwhile) waits
for the load, at most --request-timeout, then gets 503 with Retry-After if the load is still on
its way. One watcher per model follows the load; requests share it. A request to a lazy model
only ever waits for its own model: another model's load, eviction or failure never fails it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from promotion.errors import InvalidInput, LogUnavailable
from promotion.monitoring.logstore import LogWriter
from promotion.serve.batching import DEFAULT_BATCHING, Batcher, BatchLimits, Scorer
from promotion.serve.budget import MemoryBudget
from promotion.serve.canary import Canary
from promotion.serve.documents import (
    events_document,
    iso,
    log_document,
    model_status,
    registry_document,
    registry_view,
    version_document,
)
from promotion.serve.follower import AliasFollower
from promotion.serve.hooks import Webhooks
from promotion.serve.metrics import Metrics
from promotion.serve.protocol import RequestError, clip, parse_feedback
from promotion.serve.requestlog import RequestLog
from promotion.serve.routing import (
    VERSION_HEADER,
    Invocations,
    error_response,
    json_response,
    read_body,
)

FEEDBACK_SOURCE = "POST /feedback"
WATCH_EVERY = 0.02  # seconds between two looks at a lazy model's load


class ModelSlot:
    """The parts and handlers of one model. `log_metrics`: the inference log's metrics go in
    this model's registry (one model per endpoint) or in the endpoint's (several)."""

    def __init__(self, follower: AliasFollower, requests: RequestLog, hooks: Webhooks,
                 budget: MemoryBudget, scoring: anyio.CapacityLimiter, *, max_body_bytes: int,
                 request_timeout: float, scoring_threads: int, shadow_queue: int,
                 log_metrics: bool, batching: BatchLimits = DEFAULT_BATCHING,
                 scorer: Scorer | None = None) -> None:
        self.follower = follower
        self.name = follower.model
        self.log = requests
        self.hooks = hooks
        self.budget = budget
        self.request_timeout = request_timeout
        self.canary = Canary(follower, requests, request_timeout=request_timeout,
                             scoring_threads=scoring_threads, shadow_queue=shadow_queue)
        self.metrics = Metrics(follower, requests.writer if log_metrics else None, self.canary,
                               deliveries=hooks.counts if log_metrics else None)
        self.batcher = Batcher(scoring, batching, self.metrics.observe_batch, scorer) \
            if batching.on else None
        self.invocations = Invocations(follower, self.metrics, requests, self.canary,
                                       max_body_bytes=max_body_bytes,
                                       request_timeout=request_timeout, scoring=scoring,
                                       batcher=self.batcher)
        self._watcher: asyncio.Task[str | None] | None = None

    @property
    def required(self) -> bool:
        """Loaded at start, gating readiness, never evicted (not lazy)."""
        return not self.follower.lazy

    @property
    def footprint(self) -> int:
        """The estimated bytes this model holds in memory (its served version and canary)."""
        state = self.follower.state
        held = (state.served, state.canary.served if state.canary else None)
        return sum(s.footprint or 0 for s in held if s is not None)

    # -- scoring ---------------------------------------------------------------------------------

    async def invoke(self, request: Request) -> Response:
        """POST /invocations for this model (a lazy one is loaded first)."""
        loading = None
        if self.follower.lazy:
            self.budget.touch(self.name)
            if self.follower.state.served is None:
                loading = await self._load_on_demand()
        return await self.invocations.handle(request, loading)

    async def _load_on_demand(self) -> str | None:
        """Wait for this lazy model's load, at most the request timeout: None once it is
        served, else why it is not (the 503's message)."""
        loop = asyncio.get_running_loop()
        watcher = self._watcher
        if watcher is None or watcher.done() or watcher.get_loop() is not loop:
            watcher = self._watcher = loop.create_task(self._watch(time.time()))
        try:
            return await asyncio.wait_for(asyncio.shield(watcher), self.request_timeout)
        except TimeoutError:
            return (f"model {self.name} is loading (it is loaded on its first request) and "
                    f"was not ready within {self.request_timeout:g} s; retry")

    async def _watch(self, asked: float) -> str | None:
        """Activate the follower and watch its state until the model is served (None) or its
        load fails (the reason)."""
        follower = self.follower
        while True:
            if not follower.active:  # asked for, or evicted meanwhile: load it (again)
                follower.activate()
            state = follower.state
            if state.served is not None:
                return None
            error = state.last_error
            if error is not None and error.at >= asked:
                return f"model {self.name} could not be loaded: {error.message}"
            await asyncio.sleep(WATCH_EVERY)

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
                                  model=self.name))
        except RequestError as exc:
            return error_response(exc, "none")
        except InvalidInput as exc:
            return error_response(RequestError(400, "bad_input", clip(str(exc))), "none")
        except LogUnavailable as exc:
            return error_response(RequestError(503, "log_unavailable", clip(str(exc))), "none")
        except ClientDisconnect:
            return Response(status_code=499)
        return json_response({"written": result.written, "by_version": result.by_version}, 200)

    # -- reports ---------------------------------------------------------------------------------

    def health_document(self) -> tuple[dict[str, Any], int]:
        """(this model's /health, its status code): 200 when it can answer (a version is
        served, or it is lazy: loaded on demand); the canary never changes readiness."""
        follower, state = self.follower, self.follower.state
        served = state.served
        view = registry_view(state, follower.poll_interval, time.time())
        status = model_status(state, view, lazy=follower.lazy, active=follower.active)
        document = {"status": status, "model": self.name,
                    "version": served.version if served else None,
                    "canary": self.canary.document(state), "log": log_document(self.log.writer),
                    "events": events_document(self.hooks, state),
                    "registry": registry_document(view), "alias": follower.alias,
                    "pinned": follower.pinned, "lazy": follower.lazy}
        return document, 200 if served is not None or follower.lazy else 503

    async def health(self) -> Response:
        document, status = self.health_document()
        version = document["version"]
        return json_response(document, status,
                             headers={VERSION_HEADER: version} if version else None)

    def version_document(self) -> dict[str, Any]:
        follower, state = self.follower, self.follower.state
        log = log_document(self.log.writer, full=True)
        if self.log.writer is not None:
            log.update(sample_rate=self.log.sample_rate, max_rows=self.log.max_rows,
                       row_key=self.log.row_key)
        loads, evictions = self.budget.counts().get(self.name, (0, 0))
        view = registry_view(state, follower.poll_interval, time.time())
        return {**version_document(follower, state),
                "canary": self.canary.document(state, full=True),
                "canary_totals": self.canary.totals(), "log": log,
                "events": events_document(self.hooks, state, full=True),
                "registry": registry_document(view), "pinned": follower.pinned,
                "lazy": follower.lazy,
                "memory": {"footprint_bytes": self.footprint,
                           "resident": state.served is not None,
                           "last_used_at": iso(self.budget.last_used(self.name)),
                           "loads": loads, "evictions": evictions,
                           "budget_bytes": self.budget.limit}}

    async def version(self) -> Response:
        return json_response(self.version_document(), 200)


def log_writer_of(slots: list[ModelSlot]) -> LogWriter | None:
    """The inference log's writer the slots share."""
    return slots[0].log.writer if slots else None
