"""Shadow mode: copies of requests scored by the canary off the request path, in batches.

The request path only offers a copy (`ShadowMirror.offer`: never waits; a full queue drops the
copy and counts it). ONE daemon thread gathers copies, from the first one for up to `linger`
seconds or until it has `batch` of them, and has them scored with as few model calls as possible
(promotion.serve.shadowscore): most models cost about the same for one row as for dozens (a
forest of 100 trees: ~16 ms for 1 row, ~17 ms for 64 rows), so a batch costs a fraction of
scoring each copy alone.

Where the copies are scored: a canary loaded from artifacts on disk (every real one) is scored
by a worker process of its own (promotion.serve.shadowproc), which also writes the copies'
records to the inference log, so the serving process's interpreter spends next to nothing on
them; a model held only in memory is scored on this thread, which then logs them.

Each scored copy is logged under its request's id and arrival time (role `shadow`), its rows
iff the request's were, so both versions' predictions of a row can be paired. Its latency is the
time of the model call that scored it: for a batch, the batch's. A hung canary blocks only this
thread (or its worker, killed at the request timeout): copies pile up, are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promotion.engine.rollout import CanaryRoute
from promotion.serve.follower import CanaryState, Served
from promotion.serve.protocol import Scoring
from promotion.serve.requestlog import RequestLog
from promotion.serve.shadowproc import ShadowProcess, WorkerFailed
from promotion.serve.shadowscore import Item, Scored, score_items

logger = logging.getLogger("promotion.serving")

DEFAULT_SHADOW_QUEUE = 1000  # request copies waiting for the shadow canary at most
DEFAULT_SHADOW_BATCH = 256  # copies scored in one model call at most
# How long the thread gathers copies after the first before it scores them: nobody waits for a
# shadow answer, and a batch gathered over 0.1 s costs the serving process one model call where
# scoring each copy as it came would cost one per request (measured with bench/rollout.py).
DEFAULT_SHADOW_LINGER = 0.5
SHADOW_STOP_TIMEOUT = 2.0  # seconds the app's shutdown waits for the shadow thread
WAKE_EVERY = 0.05  # seconds; how often the idle shadow thread checks for stop()


@dataclass(frozen=True)
class ShadowCopy:
    """A request mirrored to the shadow canary, and the canary the request saw."""

    body: bytes
    content_type: str | None
    request_id: str
    arrived: datetime
    sampled: bool
    canary: CanaryState
    data: Any = None

    @property
    def item(self) -> Item:
        return Item(self.body, self.content_type, self.request_id, self.arrived, self.sampled,
                    self.data)


@dataclass(frozen=True)
class ShadowStats:
    scored: int  # copies the canary answered (2xx, or 4xx: the input's fault)
    failed: int  # copies it failed on (model error, or slower than the request timeout)
    dropped: int  # copies never scored: the queue was full, or the canary gone or benched
    queued: int  # copies waiting
    batches: int = 0  # model calls that scored several copies at once


Settle = Callable[[CanaryRoute, bool, bool], None]  # (route, canary, error)


class ShadowMirror:
    """The queue of shadow copies and the one thread that scores them (started on first use)."""

    def __init__(self, model: str, log: RequestLog, current: Callable[[], CanaryState | None],
                 benched: Callable[[str], str | None], settle: Settle, *, queue_size: int,
                 request_timeout: float, batch: int = DEFAULT_SHADOW_BATCH,
                 linger: float = DEFAULT_SHADOW_LINGER) -> None:
        if queue_size < 1 or batch < 1 or linger < 0:
            raise ValueError("queue_size and batch must be positive, linger not negative")
        self.model = model
        self.request_timeout = request_timeout
        self.batch, self.linger = batch, linger
        self._log, self._current, self._benched, self._settle = log, current, benched, settle
        self._queue: queue.Queue[ShadowCopy] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_: ShadowProcess | None = None  # used by the mirror's thread only
        self._counts = {"scored": 0, "failed": 0, "dropped": 0, "batches": 0}

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
            else:
                self._retire()
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

    def _count(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self._counts[outcome] += n

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                copies = [self._queue.get(timeout=WAKE_EVERY)]
            except queue.Empty:
                continue
            until = time.monotonic() + self.linger
            while len(copies) < self.batch and not self._stopped.is_set():
                try:
                    copies.append(self._queue.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._score(copies)
            except Exception:  # a bug must not end mirroring
                logger.exception("unexpected error while scoring shadow copies")
                self._count("dropped", len(copies))

    def _score(self, copies: list[ShadowCopy]) -> None:
        now = self._current()
        # Still the canary, and still given traffic: copies are scored in the step in force.
        if (now is None or now.served is None or now.route.mode != "shadow"
                or self._benched(now.route.step_key)):
            self._count("dropped", len(copies))
            self._retire()
            return
        served = now.served
        items = [c.item for c in copies if c.canary.served is served]
        self._count("dropped", len(copies) - len(items))
        if not items:
            return
        if served.model_dir is None:  # a model held in memory only: scored on this thread
            scored, batches = score_items(served, items, self.request_timeout)
            self._logged(now, scored, batches)
            return
        try:
            outcomes, batches = self._worker(served).score(items, self.request_timeout)
        except WorkerFailed as exc:
            logger.warning("shadow: %s; %d copies of requests count as failed", exc, len(items))
            self._worker_ = None
            self._logged(now, [(item, Scoring(), exc.status, 0.0) for item in items], 0)
            return
        self._count("batches", batches)
        for _, status, _ in outcomes:  # logged by the worker
            self._outcome(now, status)

    def _logged(self, now: CanaryState, scored: list[Scored], batches: int) -> None:
        """Log copies scored here (or failed with the worker), then count them."""
        self._count("batches", batches)
        for item, seen, status, seconds in scored:
            self._log.submit(item.request_id, item.arrived, self.model, now.route.alias,
                             now.served, seconds, status, seen, sampled=item.sampled,
                             role="shadow")
            self._outcome(now, status)

    def _outcome(self, now: CanaryState, status: int) -> None:
        failed = status >= 500
        self._settle(now.route, True, failed)
        self._count("failed" if failed else "scored")  # last: counted means judged, logged

    def _worker(self, served: Served) -> ShadowProcess:
        """The worker process of this canary: started for the first batch, or a new version."""
        worker = self._worker_
        if worker is None or not worker.serves(served):
            self._retire()
            log = self._log
            worker = ShadowProcess(
                served, model=self.model, alias=self._alias(), log_uri=log.store.uri
                if log.writer is not None and log.store is not None else None,
                max_rows=log.max_rows, row_key=log.row_key,
                request_timeout=self.request_timeout)
            self._worker_ = worker
        return worker

    def _alias(self) -> str:
        now = self._current()
        return now.route.alias if now is not None else "shadow"

    def _retire(self) -> None:
        worker, self._worker_ = self._worker_, None
        if worker is not None:
            worker.close()
