"""POST /invocations: score a request on the version the alias points at, or on the canary.

A request reads the follower's state once and runs entirely on what it found: the primary (the
alias's version) and, during a rollout, the canary with its share. Then:

- canary mode: when the canary is loaded and not benched and the request's routing key (its
  X-Routing-Key, else its request id) falls in the share (`in_slice`), the canary answers it. If
  the canary fails (a model error, or no answer within half the request timeout), the request is
  scored again on the primary and answered from it: the client never sees the canary's failure.
  Both attempts are logged and counted (the canary's under the canary alias). A request the
  canary refuses as bad input is answered as it is: the primary would refuse it too.
- shadow mode: the primary answers every request; those in the share are also copied to the
  shadow mirror (`serve.shadow.ShadowMirror`), which scores them on the canary off the request
  path and logs its answers under the same request id.

With batching on, scoring goes through the model's queue (`serve.batching`): concurrent requests
for the same version are scored in one predict call, and each gets only its own rows back.

Every answer names the version that produced it in X-Model-Version. Whether a request's rows are
logged is drawn once, when it arrives, and shared by every record about it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from promotion.serve.batching import Arrival, Batcher
from promotion.serve.batchscore import Raw
from promotion.serve.canary import Canary
from promotion.serve.follower import AliasFollower, CanaryState, Served
from promotion.serve.metrics import Metrics
from promotion.serve.protocol import RequestError, Scoring, clip, request_id, routing_key, score
from promotion.serve.requestlog import RequestLog
from promotion.serve.shadow import ShadowCopy

logger = logging.getLogger("promotion.serving")

VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-Id"
ROUTING_KEY_HEADER = "X-Routing-Key"
RETRY_AFTER = 1  # seconds, on a 503 while a lazy model loads


@dataclass(frozen=True)
class Incoming:
    """What one request is from its arrival: its id, routing key, and the log's sampling."""

    rid: str
    key: str
    arrived: datetime
    started: float  # time.perf_counter()
    sampled: bool
    content_type: str | None

    @classmethod
    def of(cls, request: Request, sampled: bool) -> Incoming:
        started, arrived = time.perf_counter(), datetime.now(UTC)
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        return cls(rid, routing_key(request.headers.get(ROUTING_KEY_HEADER), rid), arrived,
                   started, sampled, request.headers.get("content-type"))


class Invocations:
    """The POST /invocations handler of one app."""

    def __init__(self, follower: AliasFollower, metrics: Metrics, log: RequestLog,
                 canary: Canary, *, max_body_bytes: int, request_timeout: float,
                 scoring: anyio.CapacityLimiter, batcher: Batcher | None = None) -> None:
        self.follower = follower
        self.metrics = metrics
        self.log = log
        self.canary = canary
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.scoring = scoring
        self.batcher = batcher  # None: every request parsed and scored alone

    async def handle(self, request: Request, loading: str | None = None) -> Response:
        """Answer one request. `loading` says why nothing is served yet when a lazy model's
        load is still on its way: the 503 then carries Retry-After."""
        arrival = self.batcher.arrive() if self.batcher is not None else None
        try:
            return await self._handle(request, loading, arrival)
        finally:
            if arrival is not None:
                arrival.close()

    async def _handle(self, request: Request, loading: str | None,
                      arrival: Arrival | None) -> Response:
        incoming = Incoming.of(request, self.log.draw())
        # Taken once: the whole request runs on this state even if a swap happens meanwhile.
        state = self.follower.state
        served, held = state.served, state.canary
        version = served.version if served is not None else "none"
        try:
            if served is None:
                raise RequestError(503, "not_ready", loading or "no model version is loaded "
                                   "yet; see GET /version")
            body = await read_body(request, self.max_body_bytes)
        except Exception as exc:
            answer = self._answer(incoming, served, self._failed(exc, version), Scoring(), held)
            if served is None and loading is not None:
                answer.headers["Retry-After"] = str(RETRY_AFTER)
            return answer
        budget = self.request_timeout
        first = self.canary.answering(held, incoming.key)
        # Its parsed input and raw predictions are needed for a shadow copy.
        keep = self.canary.mirrors(held, incoming.key)
        if first is not None:
            answered, spent = await self._on_canary(incoming, first, body, keep, arrival)
            if answered is not None:
                return answered
            # The primary has what the canary left: at least half.
            budget -= min(spent, self.request_timeout / 2)
        seen = Scoring()
        own = time.perf_counter()
        try:
            response = await self._score(served, body, incoming.content_type, seen, budget,
                                         keep=keep, sampled=incoming.sampled, arrival=arrival)
        except Exception as exc:
            response = self._failed(exc, version)
        # After a canary's failed attempt, the log holds each version's own time (the client
        # waited for both: the metrics count that).
        response = self._answer(incoming, served, response, seen, held,
                                logged_from=own if first is not None else None)
        if self.canary.mirrors(held, incoming.key):
            assert held is not None
            self.canary.mirror.offer(ShadowCopy(
                body, incoming.content_type, incoming.rid, incoming.arrived,
                incoming.sampled and response.status_code == 200, held,
                data=seen.data if seen.params is None else None))
        return response

    async def _on_canary(self, incoming: Incoming, held: CanaryState, body: bytes, keep: bool,
                         arrival: Arrival | None) -> tuple[Response | None, float]:
        """(the canary's answer, or None when it failed and the primary must answer; the
        seconds it took)."""
        served, route = held.served, held.route
        assert served is not None
        seen = Scoring()
        started = time.perf_counter()
        try:
            response = await self._score(served, body, incoming.content_type, seen,
                                         self.request_timeout / 2, canary=True, keep=keep,
                                         sampled=incoming.sampled, arrival=arrival)
        except RequestError as exc:  # the input's fault: answered as it is, no fallback
            response = self._failed(exc, served.version)
        except Exception as exc:
            spent = time.perf_counter() - started
            failed = self._failed(exc, served.version, canary=True)
            status = failed.status_code
            if status == 504:
                logger.warning("canary version %s did not answer within %g s; answering from "
                               "the primary", served.version, self.request_timeout / 2)
            self.metrics.requests.labels(served.version, str(status)).inc()
            self.metrics.latency.labels(served.version).observe(spent)
            self.log.submit(incoming.rid, incoming.arrived, self.follower.model, route.alias,
                            served, spent, status, seen, sampled=False, role="attempt")
            self.canary.settle(route, canary=True, error=True)
            self.canary.fell_back()
            return None, spent
        return self._answer(incoming, served, response, seen, held, canary=True), 0.0

    async def _score(self, served: Served, body: bytes, content_type: str | None,
                     seen: Scoring, timeout: float, *, canary: bool = False, keep: bool = False,
                     sampled: bool = False, arrival: Arrival | None = None) -> Response:
        if self.batcher is not None:
            # Timed out while queued, it leaves the queue; while its batch runs, the batch goes
            # on without it (a canary attempt is then counted as late until the batch returns).
            raw = Raw(body, content_type, keep=keep,
                      log_rows=self.log.max_rows if sampled else 0, row_key=self.log.row_key)
            async with asyncio.timeout(timeout):
                content = await self.batcher.score(served, raw, seen, arrival=arrival,
                                                   late=self.canary.late if canary else None)
            return Response(content, media_type="application/json",
                            headers={VERSION_HEADER: served.version})
        work = functools.partial(score, served, body, content_type, seen)
        # A canary attempt is abandoned when it times out (its thread runs on, counted as late):
        # the primary must not wait for it.
        attempt = self.canary.late.track(work) if canary else None
        # The timeout includes the wait for a scoring thread: an overloaded endpoint sheds
        # requests with 504 instead of queueing them without bound.
        try:
            async with asyncio.timeout(timeout):
                content = await anyio.to_thread.run_sync(attempt or work, limiter=self.scoring,
                                                         abandon_on_cancel=canary)
        except TimeoutError:
            if attempt is not None:
                attempt.give_up()
            raise
        return Response(content, media_type="application/json",
                        headers={VERSION_HEADER: served.version})

    def _answer(self, incoming: Incoming, served: Served | None, response: Response,
                seen: Scoring, held: CanaryState | None, *, canary: bool = False,
                logged_from: float | None = None) -> Response:
        """Name the request, count it, log it, tell the guard; the response, ready to send."""
        response.headers[REQUEST_ID_HEADER] = incoming.rid
        ended = time.perf_counter()
        seconds = ended - incoming.started
        version = served.version if served is not None else "none"
        status = response.status_code
        self.metrics.requests.labels(version, str(status)).inc()
        self.metrics.latency.labels(version).observe(seconds)
        alias = held.route.alias if canary and held is not None else self.follower.alias
        self.log.submit(incoming.rid, incoming.arrived, self.follower.model, alias, served,
                        ended - (incoming.started if logged_from is None else logged_from),
                        status, seen, sampled=incoming.sampled)
        if held is not None:
            self.canary.settle(held.route, canary=canary, error=status >= 500)
        return response

    def _failed(self, exc: Exception, version: str, *, canary: bool = False) -> Response:
        """The answer to a request that could not be scored (and its error counted)."""
        errors = self.metrics.errors
        if isinstance(exc, RequestError):
            errors.labels(version, exc.reason).inc()
            return error_response(exc, version)
        if isinstance(exc, ClientDisconnect):  # the client left while sending: no fault
            errors.labels(version, "client_disconnected").inc()
            return Response(status_code=499)
        if isinstance(exc, TimeoutError):
            errors.labels(version, "timeout").inc()
            limit = self.request_timeout / 2 if canary else self.request_timeout
            return error_response(RequestError(
                504, "timeout", f"scoring took longer than {limit:g} s"), version)
        # A fault of the model itself: log it, answer 500, keep serving.
        logger.error("%sversion %s failed to score a request", "canary " if canary else "",
                     version, exc_info=exc)
        errors.labels(version, "model_error").inc()
        return error_response(RequestError(
            500, "model_error", clip(f"the model failed: {type(exc).__name__}: {exc}")), version)


async def read_body(request: Request, limit: int) -> bytes:
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


def json_response(document: dict[str, Any], status: int,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status_code=status, media_type="application/json",
                    headers=headers)


def error_response(exc: RequestError, version: str) -> Response:
    headers = {VERSION_HEADER: version} if version != "none" else None
    return json_response({"error_code": exc.error_code, "message": exc.message}, exc.status,
                         headers)
