"""An endpoint's models together: their slots, the routes, the root documents, the lifespan.

With ONE model the endpoint is what it always was: its handlers answer at the root
(/invocations, /feedback, /health, /ping, /version) and /metrics is its registry. With several,
each model answers under /models/<name>/ (invocations, feedback, health, version: also there with
one model), and the root speaks for all of them:

  POST /invocations, /feedback   404, naming the models (the model must be named)
  GET  /health (/ping)           200 iff every required (not lazy) model is served; `status` is
                                 loading, degraded (a model's registry cannot be read) or ok,
                                 with each model's own health document under `models`
  GET  /version                  each model's version document, and the memory budget
  GET  /metrics                  every model's metrics as one exposition, labelled `model`
  POST /hooks/mlflow             one receiver: each delivery wakes the model it names

The memory budget (promotion.serve.budget) sees the models through `residents` and unloads one
through `evict`. promotion.serve.app puts the routes on an ASGI app.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from promotion.monitoring.logstore import LogWriter
from promotion.serve.batching import DEFAULT_BATCHING, BatchLimits, Scorer
from promotion.serve.budget import MemoryBudget, Resident
from promotion.serve.documents import log_document
from promotion.serve.follower import AliasFollower
from promotion.serve.hooks import Webhooks
from promotion.serve.metrics import (
    deliveries_collector,
    log_collector,
    memory_collector,
    merged_collector,
)
from promotion.serve.requestlog import RequestLog
from promotion.serve.routing import json_response
from promotion.serve.slot import ModelSlot

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class Fleet:
    """The models of one endpoint, and the handlers that speak for all of them."""

    def __init__(self, slots: Sequence[ModelSlot], budget: MemoryBudget, hooks: Webhooks,
                 log: LogWriter | None) -> None:
        from prometheus_client import CollectorRegistry

        if not slots:
            raise ValueError("an endpoint serves at least one model")
        self.slots = {slot.name: slot for slot in slots}
        self.single = len(self.slots) == 1
        self.budget, self.hooks, self.log = budget, hooks, log
        budget.attach(self.residents, self.evict)
        if self.single:
            self.registry = slots[0].metrics.registry  # as it always was
        else:
            self.registry = CollectorRegistry(auto_describe=True)
            extra = [deliveries_collector(hooks.counts)] + ([log_collector(log)] if log else [])
            self.registry.register(merged_collector(
                [(slot.name, slot.metrics.registry) for slot in slots], extra))
        self.registry.register(memory_collector(budget, self._memory_rows))

    @property
    def first(self) -> ModelSlot:
        return next(iter(self.slots.values()))

    def describe(self) -> str:
        return ", ".join(slot.follower.what for slot in self.slots.values())

    # -- the memory budget's view ---------------------------------------------------------------

    def residents(self) -> list[Resident]:
        return [Resident(slot.name, slot.footprint, slot.follower.lazy,
                         self.budget.last_used(slot.name) or 0.0)
                for slot in self.slots.values() if slot.follower.state.served is not None]

    def evict(self, name: str) -> None:
        self.slots[name].follower.unload()

    def _memory_rows(self) -> list[tuple[str, int, bool]]:
        return [(slot.name, slot.footprint, slot.follower.state.served is not None)
                for slot in self.slots.values()]

    def memory_document(self) -> dict[str, Any]:
        counts = self.budget.counts()
        return {"budget_bytes": self.budget.limit, "used_bytes": self.budget.used(),
                "footprint_basis": "model directory size on disk",
                "loads": sum(loads for loads, _ in counts.values()),
                "evictions": sum(evicted for _, evicted in counts.values())}

    # -- handlers --------------------------------------------------------------------------------

    def _slot(self, name: str) -> ModelSlot | None:
        return self.slots.get(name)

    def _unknown(self, name: str) -> Response:
        return json_response({"error_code": NOT_FOUND, "message": f"no model {name!r} here; "
                              f"this endpoint serves: {', '.join(self.slots)}"}, 404)

    async def not_here(self, request: Request) -> Response:
        """POST /invocations or /feedback at the root of an endpoint of several models."""
        path = request.url.path
        return json_response({"error_code": NOT_FOUND, "message": f"this endpoint serves "
                              f"several models: POST /models/<name>{path}, where <name> is one "
                              f"of: {', '.join(self.slots)}"}, 404)

    async def model_invocations(self, name: str, request: Request) -> Response:
        slot = self._slot(name)
        return await slot.invoke(request) if slot else self._unknown(name)

    async def model_feedback(self, name: str, request: Request) -> Response:
        slot = self._slot(name)
        return await slot.feedback(request) if slot else self._unknown(name)

    async def model_health(self, name: str) -> Response:
        slot = self._slot(name)
        return await slot.health() if slot else self._unknown(name)

    async def model_version(self, name: str) -> Response:
        slot = self._slot(name)
        return await slot.version() if slot else self._unknown(name)

    async def health(self) -> Response:
        """200 iff every required model is served; degraded when any registry check fails."""
        models: dict[str, Any] = {}
        ready, degraded = True, False
        for slot in self.slots.values():
            document, _ = slot.health_document()
            models[slot.name] = document
            ready = ready and (document["version"] is not None or not slot.required)
            degraded = degraded or document["status"] == "degraded" \
                or document["registry"]["status"] != "ok"
        status = "loading" if not ready else "degraded" if degraded else "ok"
        return json_response({"status": status, "models": models,
                              "log": log_document(self.log), "memory": self.memory_document()},
                             200 if ready else 503)

    async def version(self) -> Response:
        return json_response({"models": {slot.name: slot.version_document()
                                          for slot in self.slots.values()},
                              "memory": self.memory_document()}, 200)

    async def prometheus(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def build_fleet(followers: Sequence[AliasFollower], *, budget: MemoryBudget | None = None,
                log: LogWriter | None = None, sample_rate: float, max_rows: int,
                row_key: str | None = None, rng: random.Random | None = None,
                max_body_bytes: int, request_timeout: float, scoring_threads: int,
                shadow_queue: int, webhook_secret: str | None = None,
                batching: BatchLimits = DEFAULT_BATCHING, scorer: Scorer | None = None) -> Fleet:
    """The slots of `followers` (one scoring limiter, one log, one webhook receiver for all;
    each model batches its own requests, `batching`, scored by `scorer`: on a thread of this
    process by default, or in scoring processes, serve.workers)."""
    if not 0.0 <= sample_rate <= 1.0 or max_rows < 0:
        raise ValueError("sample_rate must be within [0, 1] and max_rows >= 0")
    requests = RequestLog(log, sample_rate, max_rows, row_key, rng or random.Random())
    hooks = Webhooks({f.model: f for f in followers}, webhook_secret)
    budget = budget or MemoryBudget(None, [f.model for f in followers if f.lazy])
    scoring = anyio.CapacityLimiter(scoring_threads)
    slots = [ModelSlot(f, requests, hooks, budget, scoring, max_body_bytes=max_body_bytes,
                       request_timeout=request_timeout, scoring_threads=scoring_threads,
                       shadow_queue=shadow_queue, log_metrics=len(followers) == 1,
                       batching=batching, scorer=scorer)
             for f in followers]
    return Fleet(slots, budget, hooks, log)
