"""The canary's traffic on one endpoint: the guard of its step, the shadow mirror, the reports.

  StepGuard     counts, per step of the rollout (its `step_key`), the canary's requests and model
                errors and the primary's, since this replica saw the step; a breach of the
                rollout's error_rate rule (`guard_breach`) benches the canary here for the rest
                of the step. A new step resets both.
  LateAttempts  canary attempts given up on (timed out) whose thread still runs. Threads cannot
                be stopped: while as many are stuck as there are scoring threads, the canary
                gets no more requests (until one returns), so a hung canary cannot pile them up.
  ShadowMirror  shadow mode (promotion.serve.shadow): the bounded queue of request copies and
                the ONE daemon thread that scores them, in batches, on the canary.
  Canary        the three together, as the request path (`serve.routing`) and the reports use
                them. Nothing here may fail a request: every entry point used on the request path
                catches what goes wrong, logs it and leaves the request to the primary.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promotion.engine.rollout import GUARD_MIN_REQUESTS, CanaryRoute, guard_breach, in_slice
from promotion.serve.follower import AliasFollower, CanaryState, FollowerState
from promotion.serve.requestlog import RequestLog
from promotion.serve.shadow import DEFAULT_SHADOW_QUEUE, ShadowMirror

logger = logging.getLogger("promotion.serving")

PAST_STEPS = 64  # step keys remembered as over: a request that read the state before a new
# step began must not reset the new step's counters when it ends


@dataclass(frozen=True)
class StepCounts:
    """One step's requests on this replica (what the guard judges)."""

    canary_requests: int = 0
    canary_errors: int = 0
    primary_requests: int = 0
    primary_errors: int = 0


class StepGuard:
    """The per-replica guard of the step in force. Thread-safe; one lock per request."""

    def __init__(self, min_requests: int = GUARD_MIN_REQUESTS) -> None:
        self.min_requests = min_requests
        self._lock = threading.Lock()
        self._key: str | None = None
        self._past: deque[str] = deque(maxlen=PAST_STEPS)
        self._counts = [0, 0, 0, 0]  # as StepCounts
        self._benched: str | None = None

    def _enter(self, key: str) -> bool:
        """Make `key` the step counted (a new one starts from zero); False for a step over."""
        if key == self._key:
            return True
        if key in self._past:
            return False
        if self._key is not None:
            self._past.append(self._key)
        self._key, self._counts, self._benched = key, [0, 0, 0, 0], None
        return True

    def benched(self, key: str) -> str | None:
        """Why the canary gets no more traffic in step `key` on this replica, or None."""
        with self._lock:
            return self._benched if self._enter(key) else "the step is over"

    def counts(self, key: str) -> StepCounts:
        with self._lock:
            return StepCounts(*self._counts) if self._enter(key) else StepCounts()

    def record(self, route: CanaryRoute, *, canary: bool, error: bool) -> str | None:
        """Count one outcome in the route's step; the reason when it has just benched the
        canary (a canary outcome breaching the rollout's error_rate rule)."""
        with self._lock:
            if not self._enter(route.step_key):
                return None
            at = 0 if canary else 2
            self._counts[at] += 1
            self._counts[at + 1] += error
            if not canary or self._benched is not None:
                return None
            canary_requests, canary_errors, primary_requests, primary_errors = self._counts
            breach = guard_breach(route.guard, canary_requests, canary_errors, primary_requests,
                                  primary_errors, min_requests=self.min_requests)
            if breach is None:
                return None
            self._benched = f"errors: {breach}"
            return self._benched


class LateAttempts:
    """Canary attempts timed out whose scoring thread has not returned yet."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def track(self, work: Callable[[], bytes]) -> Attempt:
        return Attempt(self, work)


class Attempt:
    """One canary attempt: run on a worker thread; `give_up` when its wait timed out."""

    def __init__(self, owner: LateAttempts, work: Callable[[], bytes]) -> None:
        self._owner, self._work = owner, work
        self._done = self._late = False

    def __call__(self) -> bytes:
        try:
            return self._work()
        finally:
            with self._owner._lock:
                self._done = True
                if self._late:
                    self._owner.count -= 1

    def give_up(self) -> None:
        with self._owner._lock:
            if not self._done and not self._late:
                self._late = True
                self._owner.count += 1


@dataclass(frozen=True)
class CanaryView:
    """The canary as reported: its route, and whether it gets its share here now."""

    route: CanaryRoute
    status: str  # serving, loading, benched
    reason: str | None

    @property
    def share_in_force(self) -> float:
        return self.route.share if self.status == "serving" else 0.0


class Canary:
    """One endpoint's canary traffic: routing decisions, the guard, the mirror, the reports."""

    def __init__(self, follower: AliasFollower, log: RequestLog, *, request_timeout: float,
                 scoring_threads: int, shadow_queue: int = DEFAULT_SHADOW_QUEUE,
                 min_requests: int = GUARD_MIN_REQUESTS) -> None:
        self.follower = follower
        self.guard = StepGuard(min_requests)
        self.late = LateAttempts(scoring_threads)
        self.mirror = ShadowMirror(follower.model, log, lambda: follower.state.canary,
                                   self.guard.benched, self._settle, queue_size=shadow_queue,
                                   request_timeout=request_timeout)
        self._lock = threading.Lock()
        self.fallbacks = 0

    def answering(self, held: CanaryState | None, key: str) -> CanaryState | None:
        """The canary that answers this request (canary mode, loaded, not benched, the key in
        its share), or None: the primary answers."""
        return held if self._takes(held, key, "canary") else None

    def mirrors(self, held: CanaryState | None, key: str) -> bool:
        """Whether a copy of this request goes to the shadow canary."""
        return self._takes(held, key, "shadow")

    def _takes(self, held: CanaryState | None, key: str, mode: str) -> bool:
        try:
            if held is None or held.served is None or held.benched is not None:
                return False
            route = held.route
            if route.mode != mode or (mode == "canary" and self.late.full):
                return False
            return (in_slice(key, route.share, route.salt)
                    and self.guard.benched(route.step_key) is None)
        except Exception:
            logger.exception("could not route a request to the canary; the primary answers")
            return False

    def settle(self, route: CanaryRoute, *, canary: bool, error: bool) -> None:
        """Count one outcome for the guard (and bench the canary on a breach)."""
        self._settle(route, canary, error)

    def _settle(self, route: CanaryRoute, canary: bool, error: bool) -> None:
        try:
            reason = self.guard.record(route, canary=canary, error=error)
        except Exception:
            logger.exception("could not count a request for the canary's guard")
            return
        if reason is not None:
            logger.warning("canary %s version %s (@%s) benched on this endpoint for the rest of "
                           "step %d of %d: %s", self.follower.model, route.version, route.alias,
                           route.step + 1, route.steps, reason)

    def fell_back(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def view(self, state: FollowerState) -> CanaryView | None:
        held = state.canary
        if held is None:
            return None
        status, reason = held.status, held.benched
        if status == "serving":
            guarded = self.guard.benched(held.route.step_key)
            if guarded is not None:
                status, reason = "benched", guarded
            elif held.route.mode == "canary" and self.late.full:
                status, reason = "benched", (f"busy: {self.late.count} requests to it timed out "
                                             "and are still running")
        return CanaryView(held.route, status, reason)

    def document(self, state: FollowerState, *, full: bool = False) -> dict[str, Any] | None:
        """The canary for /health (and with `full`, with this step's counts, for /version)."""
        view = self.view(state)
        if view is None:
            return None
        route = view.route
        document: dict[str, Any] = {
            "alias": route.alias, "version": route.version, "mode": route.mode,
            "share": route.share, "step": route.step + 1, "steps": route.steps,
            "status": view.status, "reason": view.reason}
        if full:
            counts = self.guard.counts(route.step_key)
            document["this_step"] = {
                "canary_requests": counts.canary_requests, "canary_errors": counts.canary_errors,
                "primary_requests": counts.primary_requests,
                "primary_errors": counts.primary_errors}
        return document

    def totals(self) -> dict[str, int]:
        """Counters since the endpoint started, for /version."""
        shadow = self.mirror.stats()
        return {"fallbacks": self.fallbacks, "shadow_scored": shadow.scored,
                "shadow_failed": shadow.failed, "shadow_dropped": shadow.dropped,
                "shadow_queued": shadow.queued, "shadow_batches": shadow.batches}
