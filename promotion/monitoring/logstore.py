"""The inference log: every scoring request `promote serve` answers, a sample of their input rows
with the predictions, and the ground truth sent back for them later.

`LogStore` is the database (SQLite or PostgreSQL, SQLAlchemy Core): the endpoint's writer writes
to it, `promote watch` reads windows of it per version, `POST /feedback` adds labels to it.
`LogWriter` (promotion.monitoring.logwriter) batches the endpoint's records to it on a thread of
its own. The tables and migrations are in promotion.monitoring.logschema, the encoding of
records in promotion.monitoring.logencode, the checks of a feedback batch in
promotion.monitoring.logfeedback; everything a caller needs is importable from here.

Every database failure is LogUnavailable (exit 3) naming the log by its redacted URI; bad input
is InvalidInput (exit 2). A window is [start, end): start included, end excluded; naive datetimes
are taken as UTC. SQLAlchemy, numpy and pandas are imported inside the methods.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from promotion.errors import InvalidInput, LogUnavailable, redact
from promotion.monitoring import logfeedback
from promotion.monitoring.logencode import (
    decode_objects,
    encode,
    frame_of,
    numbers,
    numeric_or_text,
)
from promotion.monitoring.logrecords import (
    FeedbackResult,
    Label,
    Outcome,
    RequestRecord,
    RequestSummary,
    outcome_of,
)
from promotion.monitoring.logschema import (
    DEFAULT_LOG_URI,
    LOG_URI_ENV,
    SCHEMA_VERSION,
    create_log_engine,
    engine_url,
    migrate,
    tables,
)
from promotion.monitoring.logwriter import LogStats, LogWriter

if TYPE_CHECKING:
    import numpy
    import pandas
    from sqlalchemy import ColumnElement, Engine, Table

__all__ = [
    "DEFAULT_LOG_URI", "LOG_URI_ENV", "SCHEMA_VERSION", "FeedbackResult", "Label", "LogStats",
    "LogStore", "LogWriter", "Outcome", "RequestRecord", "RequestSummary", "engine_url",
    "outcome_of",
]


class LogStore:
    """One inference log database. Lazy: nothing connects until the first call that needs it.
    Safe to share between threads (SQLAlchemy's pool gives each its own connection)."""

    def __init__(self, uri: str, *, timeout: float = 5.0) -> None:
        engine_url(uri)  # a bad scheme is InvalidInput now, not at the first write
        self.uri = uri
        self.timeout = timeout
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """The URI without credentials, for messages."""
        return redact(self.uri)

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = create_log_engine(self.uri, self.timeout)
            return self._engine

    @contextmanager
    def _database(self, doing: str) -> Iterator[Engine]:
        """The engine; any failure of the database inside becomes LogUnavailable."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield self.engine()
        except (SQLAlchemyError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise LogUnavailable(f"cannot {doing} the inference log at {self.where}: "
                                 f"{redact(reason[0] if reason else type(exc).__name__)}"
                                 ) from exc

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent; safe when several replicas start at once);
        SCHEMA_VERSION. A schema newer than this code is LogUnavailable."""
        with self._database("create the tables of") as engine:
            return migrate(engine)

    def write(self, records: Sequence[RequestRecord]) -> None:
        """Write records (requests and their sampled rows) in one transaction."""
        if not records:
            return
        request_rows, row_rows = encode(records)
        t = tables()
        with self._database("write") as engine, engine.begin() as conn:
            conn.execute(t.requests.insert(), request_rows)
            if row_rows:
                conn.execute(t.rows.insert(), row_rows)

    def request_summary(self, model: str, version: str, start: datetime,
                        end: datetime) -> RequestSummary:
        """Counts and latency percentiles of one version's requests in [start, end), computed
        by the database (percentiles by ORDER BY ... LIMIT 1 OFFSET k, numpy's "lower")."""
        import sqlalchemy as sa

        r = tables().requests
        window = _window(r, model, version, start, end)

        def count(outcome: str) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((r.c.outcome == outcome, 1), else_=0)), 0)

        totals = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(r.c.rows), 0),
                           count("ok"), count("client_error"), count("model_error")
                           ).where(*window)
        with self._database("read") as engine, engine.connect() as conn:
            requests, rows, ok, client, model_errors = (int(v) for v in conn.execute(totals).one())

            def latency(q: float) -> float | None:
                if ok == 0:
                    return None
                query = (sa.select(r.c.latency_ms).where(*window, r.c.outcome == "ok")
                         .order_by(r.c.latency_ms).limit(1).offset(math.floor(q * (ok - 1))))
                return float(conn.execute(query).scalar_one())

            return RequestSummary(requests=requests, rows=rows, ok=ok, client_errors=client,
                                  model_errors=model_errors, latency_p50_ms=latency(0.5),
                                  latency_p95_ms=latency(0.95))

    def iter_rows(self, model: str, version: str, start: datetime, end: datetime, *,
                  chunk_rows: int = 50_000, max_rows: int | None = None,
                  ) -> Iterator[tuple[pandas.DataFrame, numpy.ndarray]]:
        """The logged input rows of one version in [start, end) and their predictions (float64,
        NaN where not a number), oldest first, in chunks of at most `chunk_rows`, streamed.

        With `max_rows`, at most that many rows: every k-th row of the window in logged order,
        k = ceil(rows in the window / max_rows), so the sample spans the whole window.
        """
        import sqlalchemy as sa

        if chunk_rows < 1 or (max_rows is not None and max_rows < 1):
            raise InvalidInput("chunk_rows and max_rows must be at least 1")
        rows = tables().rows
        window = _window(rows, model, version, start, end)
        # The JSON as text, decoded a chunk at a time in one call (not a call per row).
        columns = (sa.cast(rows.c.inputs, sa.Text), rows.c.prediction, rows.c.prediction_json)
        with self._database("read") as engine, engine.connect() as conn:
            step = 1
            if max_rows is not None:
                total = conn.execute(sa.select(sa.func.count()).where(*window)).scalar_one()
                step = max(1, math.ceil(total / max_rows))
            if step == 1:
                query = sa.select(*columns).where(*window).order_by(rows.c.id)
            else:
                # The sample is chosen among the ids alone (the window's index covers them);
                # only the chosen rows' inputs are read.
                numbered = sa.select(rows.c.id, sa.func.row_number().over(
                    order_by=rows.c.id).label("n")).where(*window).subquery()
                chosen = sa.select(numbered.c.id).where((numbered.c.n - 1) % step == 0)
                query = sa.select(*columns).where(rows.c.id.in_(chosen)).order_by(rows.c.id)
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows
                                            ).execute(query)
            for part in result.partitions(chunk_rows):
                yield frame_of(decode_objects([p[0] for p in part])), _predictions(part)

    def labelled(self, model: str, version: str, start: datetime, end: datetime,
                 ) -> tuple[numpy.ndarray, numpy.ndarray]:
        """(predictions, labels) of the logged rows of one version's requests in [start, end)
        that have a label, in logged order. Each is float64 when every value is a number, else
        an object array of strings (class labels)."""
        import sqlalchemy as sa

        t = tables()
        rows, feedback = t.rows, t.feedback
        query = (sa.select(rows.c.prediction, rows.c.prediction_json, feedback.c.label,
                           feedback.c.label_text)
                 .join_from(rows, feedback, sa.and_(
                     feedback.c.request_id == rows.c.request_id, feedback.c.row == rows.c.row,
                     sa.or_(feedback.c.model == rows.c.model, feedback.c.model.is_(None))))
                 .where(*_window(rows, model, version, start, end)).order_by(rows.c.id))
        with self._database("read") as engine, engine.connect() as conn:
            found = conn.execute(query).all()
        predictions = [p if p is not None else other for p, other, _, _ in found]
        labels = [number if number is not None else text for _, _, number, text in found]
        return numeric_or_text(predictions), numeric_or_text(labels)

    def paired(self, model: str, first: str, second: str, start: datetime, end: datetime, *,
               max_rows: int = 100_000) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The predictions two versions of `model` made for the same logged rows (same request
        id and row: a request and its shadow copy) in [start, end), at most `max_rows`, in the
        order `first` logged them. Each is float64 when every value is a number, else an object
        array of strings (class labels)."""
        import sqlalchemy as sa

        rows = tables().rows
        a, b = rows.alias("a"), rows.alias("b")
        query = (sa.select(a.c.prediction, a.c.prediction_json, b.c.prediction,
                           b.c.prediction_json)
                 .join_from(a, b, sa.and_(b.c.request_id == a.c.request_id, b.c.row == a.c.row,
                                          b.c.model == a.c.model, b.c.version == second))
                 .where(*_window(a, model, first, start, end))
                 .order_by(a.c.id).limit(max_rows))
        with self._database("read") as engine, engine.connect() as conn:
            found = conn.execute(query).all()
        one = [p if p is not None else other for p, other, _, _ in found]
        two = [p if p is not None else other for _, _, p, other in found]
        return numeric_or_text(one), numeric_or_text(two)

    def add_feedback(self, labels: Sequence[Label], *, source: str,
                     model: str | None = None) -> FeedbackResult:
        """Write a batch of labels, all or nothing (see promotion.monitoring.logfeedback).
        With `model`, row keys are looked up among that model's rows only."""
        with self._database("write feedback to") as engine:
            return logfeedback.add_feedback(engine, labels, source=source, model=model)

    def versions(self, model: str, start: datetime, end: datetime) -> dict[str, int]:
        """Requests per served version of `model` in [start, end)."""
        import sqlalchemy as sa

        r = tables().requests
        query = (sa.select(r.c.version, sa.func.count())
                 .where(r.c.model == model, r.c.version.is_not(None), r.c.at >= start,
                        r.c.at < end)
                 .group_by(r.c.version).order_by(r.c.version))
        with self._database("read") as engine, engine.connect() as conn:
            return {str(version): int(n) for version, n in conn.execute(query)}

    def close(self) -> None:
        """Close the pooled connections (the store can be used again: it reconnects)."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def _window(table: Table | Any, model: str, version: str, start: datetime,
            end: datetime) -> list[ColumnElement[bool]]:
    return [table.c.model == model, table.c.version == version, table.c.at >= start,
            table.c.at < end]


def _predictions(part: Sequence[Any]) -> numpy.ndarray:
    """float64 (NaN where missing) when every prediction is a number, which is the common
    case; else class labels (strings, booleans) as an object array, as a profile of them
    counts them."""
    if all(p[2] is None for p in part):
        return numbers([p[1] for p in part])
    return numeric_or_text([p[1] if p[1] is not None else p[2] for p in part])
