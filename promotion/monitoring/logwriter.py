"""Write request records to the inference log off the request path, and never hold a request up.

`submit` puts a record on a bounded queue and returns at once; a full queue drops the record and
counts it. One daemon thread takes batches off the queue (up to `batch_size` records, or what
arrived within `flush_interval`), encodes them and writes each in one transaction. A failed
batch is retried once after a short pause, then dropped and counted: the queue keeps draining,
so a dead database costs at most the queue's memory. While the database keeps failing the thread
waits longer between attempts (1 s doubling to 30 s), and what the full queue refuses meanwhile
is counted too; once it answers again, writing resumes by itself. The schema is created (or
checked) before the first write, and again after every failure.

`stats()` is what /health, /version and /metrics report. `close()` writes what is still queued,
but waits at most its timeout: a hung database cannot hold a shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from promotion.errors import redact
from promotion.monitoring.logrecords import RequestRecord

log = logging.getLogger("promotion.monitoring")

RETRY_PAUSE = 0.2  # seconds before the one retry of a failed batch
WAKE_EVERY = 0.05  # seconds; how often a thread waiting for records checks for close()
# A write that has not returned after this long makes the log unhealthy while it waits.
STALLED_AFTER = 10.0


class LogSink(Protocol):
    """What the writer writes to (a LogStore)."""

    @property
    def where(self) -> str: ...

    def migrate(self) -> int: ...

    def write(self, records: Sequence[RequestRecord]) -> None: ...


@dataclass(frozen=True)
class LogStats:
    """The writer's counters since it started."""

    queued: int  # records waiting to be written
    written: int  # records written
    dropped_queue_full: int  # refused by submit: the queue was full
    dropped_database: int  # taken off the queue but not written: the database failed twice
    last_error: str | None  # the last database failure, redacted
    last_error_at: datetime | None
    healthy: bool  # the last attempt to write succeeded and none is stuck
    sampled_rows: int  # input rows written with their predictions

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_database


class LogWriter:
    """Batches RequestRecords to a LogStore on a thread of its own."""

    def __init__(self, store: LogSink, *, queue_size: int = 10_000, batch_size: int = 500,
                 flush_interval: float = 0.2, min_backoff: float = 1.0,
                 max_backoff: float = 30.0) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._queue: queue.Queue[RequestRecord] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = self._sampled = self._full = self._failed = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._healthy = True
        self._busy_since: float | None = None
        self._migrated = False
        self._backoff = 0.0

    def start(self) -> None:
        """Start the writing thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="promote-log-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, record: RequestRecord) -> bool:
        """Queue a record; False when it was dropped (queue full, or the writer closed)."""
        try:
            if self._stop.is_set():
                raise queue.Full
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            with self._lock:
                self._full += 1
            return False
        except Exception:
            return False

    def stats(self) -> LogStats:
        with self._lock:
            busy = self._busy_since
            stalled = busy is not None and time.monotonic() - busy > STALLED_AFTER
            return LogStats(queued=self._queue.qsize(), written=self._written,
                            dropped_queue_full=self._full, dropped_database=self._failed,
                            last_error=self._last_error, last_error_at=self._last_error_at,
                            healthy=self._healthy and not stalled, sampled_rows=self._sampled)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, within `timeout` seconds, and stop the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the inference log at %s did not finish writing within %g s; "
                            "%d records were not written", self.store.where, timeout,
                            self._queue.qsize())

    # -- the writing thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._attempt([])  # create the schema now: /health tells the truth before any request
        while not self._stop.is_set():
            if self._backoff and self._stop.wait(self._backoff):
                break
            batch = self._take(self.flush_interval)
            if batch:
                self._write(batch)
        self._drain()

    def _take(self, wait: float) -> list[RequestRecord]:
        """Up to batch_size records: what is queued or arrives within `wait` (under load, one
        transaction per interval rather than one per request)."""
        batch: list[RequestRecord] = []
        deadline = time.monotonic() + wait
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            try:
                if left > 0 and not self._stop.is_set():
                    # In short slices: close() must not wait for a whole interval.
                    batch.append(self._queue.get(timeout=min(left, WAKE_EVERY)))
                else:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                if left <= 0 or self._stop.is_set():
                    break
        return batch

    def _write(self, batch: list[RequestRecord]) -> None:
        if self._attempt(batch):
            return
        if not self._refused and not self._stop.wait(RETRY_PAUSE) and self._attempt(batch):
            return
        if self._refused and len(batch) > 1:
            # The database answered and refused a value: one record must not cost its batch.
            # Halves are written on their own, down to the record(s) it refuses.
            middle = len(batch) // 2
            self._write(batch[:middle])
            self._write(batch[middle:])
            return
        with self._lock:
            self._failed += len(batch)
        if not self._refused:  # unreachable: wait longer before the next try
            self._backoff = min(self.max_backoff, max(self.min_backoff, 2 * self._backoff))

    def _drain(self) -> None:
        """At close: write what is left, each batch once; what fails is counted as dropped."""
        while batch := self._take(0):
            if not self._attempt(batch):
                if self._refused:  # the database answers: keep what it takes
                    self._write(batch)
                    continue
                lost = len(batch)
                while rest := self._take(0):
                    lost += len(rest)
                with self._lock:
                    self._failed += lost
                return

    def _attempt(self, batch: list[RequestRecord]) -> bool:
        """Migrate if needed, write the batch; True when it was written."""
        with self._lock:
            self._busy_since = time.monotonic()
        self._refused = False
        try:
            if not self._migrated:
                self.store.migrate()
                self._migrated = True
            if batch:
                self.store.write(batch)
        except Exception as exc:
            self._refused = _refused_a_value(exc)
            self._failed_once(exc)
            return False
        self._succeeded(batch)
        return True

    _refused = False  # the last attempt reached the database, which refused a value

    def _failed_once(self, exc: Exception) -> None:
        message = redact(" ".join(str(exc).split()))[:500] or type(exc).__name__
        with self._lock:
            was_healthy = self._healthy
            self._healthy = False
            self._migrated = False  # the database may have been replaced: check it again
            self._busy_since = None
            self._last_error = message
            self._last_error_at = datetime.now(UTC)
        if was_healthy:
            log.warning("cannot write the inference log at %s (serving goes on; records are "
                        "counted as dropped until it answers): %s", self.store.where, message)

    def _succeeded(self, batch: list[RequestRecord]) -> None:
        with self._lock:
            recovered = not self._healthy
            self._healthy = True
            self._busy_since = None
            self._written += len(batch)
            self._sampled += sum(len(r.inputs) for r in batch if r.inputs is not None
                                 and r.version is not None)
        self._backoff = 0.0
        if recovered:
            log.info("the inference log at %s is written again", self.store.where)


def _refused_a_value(exc: BaseException) -> bool:
    """The database answered and refused what was sent (a value it cannot store, a constraint),
    as opposed to not answering: then the records, not the connection, are the problem."""
    from sqlalchemy.exc import DataError, IntegrityError

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return isinstance(cause, DataError | IntegrityError)
