"""How an endpoint logs its requests: the writer (None: the log is off) and the sampling.

Whether a request's rows are logged is drawn once, when it arrives (`draw`), and handed to every
record written about it: the answer, a failed canary attempt before it, its shadow copy. The two
predictions of a row (Production's and the canary's) can then be paired by request id and row.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime
from typing import cast

from promotion.monitoring.logrecords import Role
from promotion.monitoring.logstore import LogStore, LogWriter, RequestRecord, outcome_of
from promotion.serve.follower import Served
from promotion.serve.protocol import Scoring, sample_rows

logger = logging.getLogger("promotion.serving")


class RequestLog:
    """How an app logs its requests: the writer (None: the log is off) and the sampling."""

    def __init__(self, writer: LogWriter | None, sample_rate: float, max_rows: int,
                 row_key: str | None, rng: random.Random) -> None:
        self.writer = writer
        # Feedback is written to the writer's own store, synchronously.
        self.store = cast(LogStore, writer.store) if writer is not None else None
        self.sample_rate = sample_rate
        self.max_rows = max_rows
        self.row_key = row_key
        self.rng = rng

    def draw(self) -> bool:
        """Whether the rows of the request arriving now are logged (once per request)."""
        return (self.writer is not None and self.max_rows > 0
                and self.rng.random() < self.sample_rate)

    def submit(self, rid: str, arrived: datetime, model: str, alias: str, served: Served | None,
               seconds: float, status: int, seen: Scoring, sampled: bool | None = None,
               role: Role = "answer") -> None:
        """Hand one record to the writer; never raises, never blocks. Its rows are logged when
        `sampled` (drawn now when not given) and it was scored (status 200)."""
        if self.writer is None:
            return
        if sampled is None:
            sampled = self.draw()
        try:
            self.writer.submit(record(rid, arrived, model, alias, served.version if served
                                      else None, seconds, status, seen, sampled and
                                      self.max_rows > 0, self.max_rows, self.row_key, role))
        except Exception:  # a request is never failed by its log
            logger.exception("could not log request %s", rid)


def record(rid: str, arrived: datetime, model: str, alias: str, version: str | None,
           seconds: float, status: int, seen: Scoring, sampled: bool, max_rows: int,
           row_key: str | None, role: Role = "answer") -> RequestRecord:
    """The log record of one request (its rows when `sampled` and it was scored)."""
    inputs = predictions = keys = encoded = None
    if status == 200 and sampled and seen.logged is not None:
        encoded = seen.logged  # encoded where it was scored
    elif status == 200 and seen.raw is not None and sampled:
        try:
            inputs, predictions, keys = sample_rows(seen.data, seen.raw, max_rows, row_key)
        except Exception:  # inputs no table holds (tensors): the request is still logged
            inputs = predictions = keys = None
    return RequestRecord(request_id=rid, at=arrived, model=model, alias=alias, version=version,
                         rows=seen.rows, latency_ms=seconds * 1000.0,
                         outcome=outcome_of(status), status=status, inputs=inputs,
                         predictions=predictions, row_keys=keys, role=role, encoded=encoded)
