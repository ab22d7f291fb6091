"""Adaptive micro-batching: concurrent requests for one model version scored together.

Many models cost about the same to call for 1 row as for 64 (a random forest's per-tree Python
work dominates a small call), so an endpoint that calls the model once per request is capped near
one request per call time per core. A `Batcher` merges the requests that are waiting anyway:

1. a request joins its model's queue as it arrived (its body, not yet parsed), tagged with the
   version it is to be scored on, taken once when it arrived: a swap, a canary or a shadow copy
   never mixes versions in a batch;
2. when a scoring slot is free (a thread, or a scoring process: serve.workers), the head of the
   queue and the queued requests for the same version (at most `max_rows` of them) are handed
   to the scorer as one batch. While other requests are still on their way (accepted, body
   being read) and the batch is not full, it waits for them, at most `max_wait` after its first
   request was queued; with nothing on its way (an idle endpoint, a lone request) it goes at
   once;
3. the scorer parses, merges what can be merged, predicts and splits back
   (`serve.batchscore`): each request gets its own rows, or its own error.

A request's timeout covers all of it: a request that times out while queued leaves the queue; one
whose batch is running is answered 504 and its share of the batch is dropped. `--max-batch-rows
0` turns batching off (each request is then parsed and scored alone, on a scoring thread).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from promotion.serve.batchscore import Raw, Result, Scored, score_raw
from promotion.serve.protocol import Scoring
from promotion.serve.state import Served

DEFAULT_MAX_BATCH_ROWS = 64
DEFAULT_MAX_BATCH_WAIT_MS = 2.0


@dataclass(frozen=True)
class BatchLimits:
    """How requests are merged: at most `max_rows` rows per predict call and requests per batch
    (0: never merged), waiting at most `max_wait` seconds for requests on their way."""

    max_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_wait: float = DEFAULT_MAX_BATCH_WAIT_MS / 1000

    def __post_init__(self) -> None:
        if self.max_rows < 0 or self.max_wait < 0:
            raise ValueError("max_rows and max_wait must be >= 0")

    @property
    def on(self) -> bool:
        return self.max_rows > 0


DEFAULT_BATCHING = BatchLimits()

# Scores a batch on the calling (worker) thread, there or in a scoring process.
Scorer = Callable[[Served, Sequence[Raw], int], Scored]


def score_in_thread(served: Served, raws: Sequence[Raw], max_rows: int) -> Scored:
    return score_raw(served, raws, max_rows)


class Late(Protocol):
    """What a canary attempt is tracked by once it times out (serve.canary.LateAttempts)."""

    def track(self, work: Callable[[], bytes]) -> Any: ...


class BatchObserver(Protocol):
    """Told of every batch: its version, what the scorer did, each request's wait in the queue
    (seconds)."""

    def __call__(self, version: str, scored: Scored, waits: Sequence[float]) -> None: ...


@dataclass(eq=False)
class Job:
    """One request waiting for (or in) a batch."""

    served: Served
    raw: Raw
    future: asyncio.Future[Result]
    queued: float = field(default_factory=time.perf_counter)
    started: bool = False  # taken into a batch
    gone: bool = False  # its request stopped waiting
    done: Callable[[], Any] | None = None  # called when its batch returns (late tracking)
    batch: Running | None = None  # the batch it was taken into

    @property
    def live(self) -> bool:
        return not self.gone and not self.future.done()


@dataclass(eq=False)
class Running:
    """A batch being scored, and the scoring slot it holds until its thread returns or, for
    canary attempts (tracked as late), until every request in it has stopped waiting."""

    jobs: list[Job]
    token: object
    released: bool = False

    @property
    def abandoned(self) -> bool:
        return all(job.gone and job.done is not None for job in self.jobs)


class Arrival:
    """A request on its way to the queue (accepted, its body being read): a batch about to go
    may wait for it. Closed once it is queued, or once it is answered without being queued."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher
        batcher._arriving += 1

    def close(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher._arriving -= 1
            batcher._notify()


class Batcher:
    """The queue of one model's requests, drained into batches.

    `scoring` bounds the batches scored at once (the endpoint's scoring threads or processes;
    shared by every model of an endpoint); `scorer` scores a batch. Used from the event loop
    only: the queue needs no lock.
    """

    def __init__(self, scoring: anyio.CapacityLimiter, limits: BatchLimits,
                 observe: BatchObserver, scorer: Scorer | None = None) -> None:
        self.scoring = scoring
        self.limits = limits
        self.observe = observe
        self.scorer = scorer or score_in_thread
        self._queue: deque[Job] = deque()
        self._arriving = 0
        self._changed: asyncio.Future[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return sum(1 for job in self._queue if job.live)

    def arrive(self) -> Arrival:
        return Arrival(self)

    async def score(self, served: Served, raw: Raw, seen: Scoring, *, late: Late | None = None,
                    arrival: Arrival | None = None) -> bytes:
        """The encoded predictions for one request, scored in a batch with its neighbours.
        Raises what scoring it alone would: a RequestError for its own input, else the model's
        fault. `seen` gets what scoring saw (what `raw` asked for); `late` tracks a canary
        attempt that times out while its batch runs."""
        loop = asyncio.get_running_loop()
        job = Job(served, raw, loop.create_future())
        attempt = late.track(_nothing) if late is not None else None
        job.done = attempt
        self._queue.append(job)
        if arrival is not None:
            arrival.close()
        self._notify()
        self._drain_soon(loop)
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.gone = True
            if job.started and attempt is not None:
                attempt.give_up()
            if job.batch is not None and job.batch.abandoned:
                # Canary attempts that all timed out: their thread runs on, counted as late; the
                # primary must not wait for it (as with batching off).
                self._release(job.batch)
            raise
        seen.rows, seen.params, seen.data, seen.raw, seen.logged = (
            result.rows, result.params, result.data, result.raw, result.logged)
        if result.error is not None:
            raise result.error
        return result.content

    # -- the queue ------------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _drain_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        drainer = self._drainer
        if drainer is None or drainer.done() or drainer.get_loop() is not loop:
            self._drainer = loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Take batches while requests are queued, each once a scoring slot is free."""
        while self._head() is not None:
            token = object()
            await self.scoring.acquire_on_behalf_of(token)
            try:
                await self._gather()
                batch = self._take()
            except BaseException:
                self.scoring.release_on_behalf_of(token)
                raise
            if not batch:
                self.scoring.release_on_behalf_of(token)
                continue
            running = Running(batch, token)
            for job in batch:
                job.batch = running
            task = asyncio.get_running_loop().create_task(self._run(running))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _head(self) -> Job | None:
        while self._queue and not self._queue[0].live:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    async def _gather(self) -> None:
        """Wait while requests are on their way and the head's batch is not full, at most
        `max_wait` after the head was queued."""
        head = self._head()
        if head is None:
            return
        deadline = head.queued + self.limits.max_wait
        loop = asyncio.get_running_loop()
        while self._arriving > 0 and head.live and self._like(head) < self.limits.max_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            if self._changed is None:
                self._changed = loop.create_future()
            await asyncio.wait({self._changed}, timeout=remaining)

    def _like(self, head: Job) -> int:
        return sum(1 for job in self._queue if job.live and job.served is head.served)

    def _take(self) -> list[Job]:
        """The head and the queued requests for its version, in their order of arrival."""
        head = self._head()
        if head is None:
            return []
        self._queue.popleft()
        batch = [head]
        kept: deque[Job] = deque()
        for job in self._queue:
            if not job.live:
                continue
            if job.served is head.served and len(batch) < self.limits.max_rows:
                batch.append(job)
            else:
                kept.append(job)
        self._queue = kept
        for job in batch:
            job.started = True
        return batch

    def _release(self, running: Running) -> None:
        if not running.released:
            running.released = True
            self.scoring.release_on_behalf_of(running.token)

    async def _run(self, running: Running) -> None:
        """Score a batch on a worker thread (holding its scoring slot) and hand out the
        results."""
        batch = running.jobs
        served = batch[0].served
        taken = time.perf_counter()
        waits = [taken - job.queued for job in batch]
        # A lone request on an otherwise idle endpoint is scored on this process's thread: with
        # nothing to merge it with, a hop to a scoring process would only add to its latency.
        alone = len(batch) == 1 and len(self._running) <= 1 and self._arriving == 0
        scorer = score_in_thread if alone else self.scorer
        scored: Scored | None = None
        try:
            scored = await anyio.to_thread.run_sync(_scored_then_done, scorer, served, batch,
                                                    self.limits.max_rows)
        finally:
            self._release(running)
            results = scored.results if scored is not None else [
                Result(error=RuntimeError("scoring was interrupted")) for _ in batch]
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
        self.observe(served.version, scored, waits)


def _nothing() -> bytes:
    return b""


def _scored_then_done(scorer: Scorer, served: Served, batch: Sequence[Job],
                      max_rows: int) -> Scored:
    """Score on this thread, then tell the late trackers: only the thread knows when it has
    really returned (the event loop may have stopped waiting for it)."""
    try:
        return scorer(served, [job.raw for job in batch], max_rows)
    finally:
        for job in batch:
            if job.done is not None:
                job.done()
