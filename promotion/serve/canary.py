"""The canary's traffic on one endpoint: the guard of its step, the shadow mirror, the reports.

  StepGuard     counts, per step of the rollout (its `step_key`), the canary's requests and model
                errors and the primary's, since this replica saw the step; a breach of the
                rollout's error_rate rule (`guard_breach`) benches the canary here for the rest
                of the step. A new step resets both.
  LateAttempts  canary attempts given up on (timed out) whose thread still runs. Threads cannot
                be stopped: while as many are stuck as there are scoring threads, the canary
                gets no more requests (until one returns), so a hung canary cannot pile them up.
  ShadowMirror  shadow mode: the bounded queue of request copies and the ONE daemon thread that
                scores them on the canary and logs what it answered under the request's own id.
                A full queue drops the copy and counts it; a hung canary blocks only this thread.
  Canary        the three together, as the request path (`serve.routing`) and the reports use
                them. Nothing here may fail a request: every entry point used on the request path
                catches what goes wrong, logs it and leaves the request to the primary.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promotion.engine.rollout import GUARD_MIN_REQUESTS, CanaryRoute, guard_breach, in_slice
from promotion.serve.follower import AliasFollower, CanaryState, FollowerState, Served
from promotion.serve.protocol import RequestError, Scoring, score
from promotion.serve.requestlog import RequestLog

logger = logging.getLogger("promotion.serving")

DEFAULT_SHADOW_QUEUE = 1000  # request copies waiting for the shadow canary at most
SHADOW_STOP_TIMEOUT = 2.0  # seconds the app's shutdown waits for the shadow thread
WAKE_EVERY = 0.05  # seconds; how often the idle shadow thread checks for stop()
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
class ShadowCopy:
    """A request mirrored to the shadow canary: what it takes to score and log it again."""

    body: bytes
    content_type: str | None
    request_id: str
    arrived: datetime
    sampled: bool  # whether the request's own rows were logged: the copy's are iff they were
    canary: CanaryState  # the canary the request saw


@dataclass(frozen=True)
class ShadowStats:
    scored: int  # copies the canary answered (2xx, or 4xx: the input's fault)
    failed: int  # copies it failed on (model error, or slower than the request timeout)
    dropped: int  # copies never scored: the queue was full, or the canary gone or benched
    queued: int  # copies waiting


Settle = Callable[[CanaryRoute, bool, bool], None]  # (route, canary, error)


class ShadowMirror:
    """The queue of shadow copies and the one thread that scores them (started on first use)."""

    def __init__(self, model: str, log: RequestLog, current: Callable[[], CanaryState | None],
                 benched: Callable[[str], str | None], settle: Settle, *, queue_size: int,
                 request_timeout: float) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self.model = model
        self.request_timeout = request_timeout
        self._log, self._current, self._benched, self._settle = log, current, benched, settle
        self._queue: queue.Queue[ShadowCopy] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = {"scored": 0, "failed": 0, "dropped": 0}

    def offer(self, copy: ShadowCopy) -> bool:
        """Queue a copy without waiting; False (counted as dropped) when the queue is full."""
        try:
            if self._stopped.is_set():
                raise queue.Full
            self._start()
            self._queue.put_nowait(copy)
            return True
        except queue.Full:
            self._count("dropped")
        except Exception:  # never the request's problem
            logger.exception("could not mirror request %s", copy.request_id)
            self._count("dropped")
        return False

    def stats(self) -> ShadowStats:
        with self._lock:
            return ShadowStats(queued=self._queue.qsize(), **self._counts)

    def stop(self, timeout: float = SHADOW_STOP_TIMEOUT) -> None:
        """Stop the thread, waiting at most `timeout` (a hung canary is left behind: the thread
        is a daemon); copies still queued are dropped."""
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the shadow canary was still scoring after %g s; not waiting "
                               "for it", timeout)
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._count("dropped")

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._run, name=f"shadow-{self.model}",
                                                daemon=True)
                self._thread.start()

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                copy = self._queue.get(timeout=WAKE_EVERY)
            except queue.Empty:
                continue
            try:
                self._score(copy)
            except Exception:  # a bug must not end mirroring
                logger.exception("unexpected error while scoring a shadow copy")

    def _score(self, copy: ShadowCopy) -> None:
        now = self._current()
        served = copy.canary.served
        # Still the canary, and still given traffic: the copy is scored in the step in force.
        if (now is None or served is None or now.served is not served
                or now.route.mode != "shadow" or self._benched(now.route.step_key)):
            self._count("dropped")
            return
        seen, status, seconds = self._scored(served, copy)
        failed = status >= 500
        self._settle(now.route, True, failed)
        self._log.submit(copy.request_id, copy.arrived, self.model, now.route.alias, served,
                         seconds, status, seen, sampled=copy.sampled, role="shadow")
        self._count("failed" if failed else "scored")  # last: counted means judged and logged

    def _scored(self, served: Served, copy: ShadowCopy) -> tuple[Scoring, int, float]:
        """(what scoring saw, the status the canary would have answered, its seconds)."""
        seen = Scoring()
        started = time.perf_counter()
        try:
            score(served, copy.body, copy.content_type, seen)
            status = 200
        except RequestError as exc:
            status = exc.status
        except Exception:
            logger.warning("shadow: canary version %s failed to score a copy of request %s",
                           served.version, copy.request_id, exc_info=True)
            status = 500
        seconds = time.perf_counter() - started
        if status == 200 and seconds > self.request_timeout:
            status = 504  # what a client would have got
        return seen, status, seconds


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
                "shadow_queued": shadow.queued}
