"""The inference log's database: where it is, its tables, and the migrations that create them.

One database holds the log of every `promote serve` endpoint that points at it: SQLite (a file,
the default, `sqlite:///promote-log.db` in the working directory) or PostgreSQL (several replicas,
one log). Four tables, documented in docs/monitoring.md ("The inference log"):

  promote_log_schema   one row: the schema version this database is at
  inference_requests   one row per scoring request (and per canary attempt or shadow copy of it,
                       `role`): when, which version, how it ended, how long
  inference_rows       the sampled input rows of a request with their predictions; model, version
                       and time are repeated here so that window queries need no join
  feedback             ground truth, one label per (request_id, row)

Migrations are a list of steps keyed by the version they lead to, applied in order in one
transaction. Several replicas may start at once: PostgreSQL migrations take a transaction-level
advisory lock, SQLite ones the database's write lock (BEGIN IMMEDIATE), so they run one after
the other; every step also creates only what does not exist, and an "already exists" race that
slips through anyway is retried after re-reading the version. Plain SQLAlchemy DDL rather than
Alembic: Alembic is here only as a dependency of MLflow, which this layer must not rely on, and
for a handful of tables a list of steps says everything Alembic's `Operations` would.

SQLAlchemy is imported inside the functions: `promote serve --help` imports this module for its
defaults and must not pay for it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from promotion.errors import InvalidInput, LogUnavailable, redact

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table

DEFAULT_LOG_URI = "sqlite:///promote-log.db"  # relative to the working directory, like mlflow.db
LOG_URI_ENV = "PROMOTE_LOG_URI"
SCHEMA_VERSION = 3

# PostgreSQL advisory lock key of the migrations ("promote" in ASCII).
_MIGRATION_LOCK = 0x70726F6D6F7465
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg",
            "postgres": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}


def engine_url(uri: str) -> str:
    """The SQLAlchemy URL of a log URI: PostgreSQL through psycopg 3, SQLite as it is.

    `postgresql://` and `postgres://` (what users and hosting providers write) become
    `postgresql+psycopg://`; anything but SQLite and PostgreSQL is InvalidInput.
    """
    scheme, sep, rest = uri.strip().partition("://")
    driver = _SCHEMES.get(scheme.lower()) if sep else None
    if driver is None or not rest:
        raise InvalidInput(
            f"inference log URI {redact(uri)!r} is not supported: use sqlite:///PATH "
            "(a file) or postgresql://USER@HOST:PORT/DATABASE")
    return f"{driver}://{rest}"


def create_log_engine(uri: str, timeout: float) -> Engine:
    """An engine whose connection attempts give up after `timeout` seconds.

    SQLite waits at most `timeout` for a lock and runs in WAL mode (readers such as `promote
    watch` never block the endpoint's writes); PostgreSQL connections time out, are checked
    before use (a restarted server is reconnected to) and send TCP keepalives (a vanished host
    is noticed instead of waited for).
    """
    import sqlalchemy as sa

    url = engine_url(uri)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": timeout})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return sa.create_engine(
            url, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=timeout,
            connect_args={"connect_timeout": max(1, math.ceil(timeout)), "keepalives": 1,
                          "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                          "application_name": "promote"})
    except ImportError as exc:
        raise InvalidInput(f"inference log {redact(uri)}: PostgreSQL needs psycopg 3 "
                           "(pip install 'mlflow-promote[postgres]')") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except Exception:
        pass
    finally:
        cursor.close()


@dataclass(frozen=True)
class Tables:
    schema: Table
    requests: Table
    rows: Table
    feedback: Table


@functools.cache
def tables() -> Tables:
    """The log's tables (one MetaData for the process)."""
    import sqlalchemy as sa

    meta = sa.MetaData()
    ident = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER
    schema = sa.Table("promote_log_schema", meta,
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("version", sa.Integer, nullable=False),
                      sa.Column("migrated_at", UTCDateTime(), nullable=False))
    requests = sa.Table(
        "inference_requests", meta,
        sa.Column("id", ident, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64)),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("sampled_rows", sa.Integer, nullable=False),
        # Schema 3: NULL for the answer a client got; "attempt" (a canary's failed attempt before
        # the primary answered) or "shadow" (a copy the canary scored off the request path).
        sa.Column("role", sa.String(16)),
        sa.Index("ix_inference_requests_window", "model", "version", "at"),
        sa.Index("ix_inference_requests_request_id", "request_id"))
    rows = sa.Table(
        "inference_rows", meta,
        sa.Column("id", ident, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("inputs", JSONText()),
        sa.Column("prediction", sa.Float),
        sa.Column("prediction_json", JSONText()),
        sa.Column("row_key", sa.Text),
        sa.Index("ix_inference_rows_window", "model", "version", "at"),
        sa.Index("ix_inference_rows_request", "request_id", "row"),
        sa.Index("ix_inference_rows_row_key", "row_key"))
    feedback = sa.Table(
        "feedback", meta,
        sa.Column("id", ident, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("label", sa.Float),
        sa.Column("label_text", sa.Text),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        # The model whose request the label is about (schema 2; NULL in labels written before):
        # a label joins that model's rows only, whatever id another model's client reuses.
        sa.Column("model", sa.String(256)),
        sa.UniqueConstraint("request_id", "row", name="uq_feedback_request_row"))
    return Tables(schema, requests, rows, feedback)


def _types() -> tuple[type, type]:
    import sqlalchemy as sa
    from sqlalchemy.types import TypeDecorator, UserDefinedType

    class PostgresJSON(UserDefinedType):
        """PostgreSQL `json`, bound as the JSON text itself (psycopg sends str untyped)."""

        cache_ok = True

        def get_col_spec(self, **_kw: Any) -> str:
            return "JSON"

    class JSONTextType(TypeDecorator):
        """JSON text written as it is; `json` on PostgreSQL (`inputs->>'age'`), TEXT on SQLite
        (`json_extract(inputs, '$.age')`); read back as the decoded value on both."""

        impl = sa.Text
        cache_ok = True

        def load_dialect_impl(self, dialect: Any) -> Any:
            if dialect.name == "postgresql":
                return dialect.type_descriptor(PostgresJSON())
            return dialect.type_descriptor(sa.Text())

        def process_result_value(self, value: Any, dialect: Any) -> Any:
            if value is None or dialect.name == "postgresql":  # psycopg decodes json itself
                return value
            return json.loads(value)

    class UTCDateTimeType(TypeDecorator):
        """A UTC instant: stored as UTC (naive on SQLite, timestamptz on PostgreSQL), read back
        aware. A naive datetime given to it is taken to be UTC already."""

        impl = sa.DateTime(timezone=True)
        cache_ok = True

        def process_bind_param(self, value: Any, dialect: Any) -> Any:
            if value is None:
                return None
            utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

        def process_result_value(self, value: Any, dialect: Any) -> Any:
            if value is None:
                return None
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    return JSONTextType, UTCDateTimeType


def JSONText() -> Any:
    return _cached_types()[0]()


def UTCDateTime() -> Any:
    return _cached_types()[1]()


_cached_types = functools.cache(_types)


# -- migrations ----------------------------------------------------------------------------------


def _create_v1(conn: Connection) -> None:
    from sqlalchemy.schema import CreateIndex, CreateTable

    t = tables()
    for table in (t.requests, t.rows, t.feedback):
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            conn.execute(CreateIndex(index, if_not_exists=True))


def _feedback_model_v2(conn: Connection) -> None:
    """feedback.model. A database created by this code has it already (v1 creates the tables
    as they are now), one created at schema 1 gains it."""
    import sqlalchemy as sa

    columns = {c["name"] for c in sa.inspect(conn).get_columns("feedback")}
    if "model" not in columns:
        conn.exec_driver_sql("ALTER TABLE feedback ADD COLUMN model VARCHAR(256)")


def _request_role_v3(conn: Connection) -> None:
    """inference_requests.role (NULL: the answer), for rollouts' canary attempts and shadow
    copies. A database created by this code has it already."""
    import sqlalchemy as sa

    columns = {c["name"] for c in sa.inspect(conn).get_columns("inference_requests")}
    if "role" not in columns:
        conn.exec_driver_sql("ALTER TABLE inference_requests ADD COLUMN role VARCHAR(16)")


# version -> the step that brings a database from version - 1 to it. Append; never edit.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _create_v1), (2, _feedback_model_v2), (3, _request_role_v3))


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; SCHEMA_VERSION. Safe when several processes run it at once.

    A database whose schema is newer than this code is LogUnavailable: writing to it could lose
    what the newer schema holds. Database errors propagate (the caller maps them).
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(3):
        try:
            with engine.begin() as conn:
                _lock(conn)
                current = _current_version(conn)
                if current > SCHEMA_VERSION:
                    raise LogUnavailable(
                        f"the inference log at {redact(str(engine.url))} has schema version "
                        f"{current}, newer than this Promote understands ({SCHEMA_VERSION}): "
                        "upgrade Promote")
                if current < SCHEMA_VERSION:
                    for version, step in MIGRATIONS:
                        if version > current:
                            step(conn)
                    _set_version(conn, exists=current > 0)
            return SCHEMA_VERSION
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            # Another process created the same thing between our check and our write: re-read.
            if attempt == 2 or not _already_exists(exc):
                raise
    raise AssertionError("unreachable")


def _lock(conn: Connection) -> None:
    import sqlalchemy as sa

    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    elif conn.dialect.name == "sqlite":
        # pysqlite leaves DDL outside transactions; take the write lock for the whole migration.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _current_version(conn: Connection) -> int:
    import sqlalchemy as sa

    schema = tables().schema
    if not sa.inspect(conn).has_table(schema.name):
        schema.create(conn, checkfirst=True)
        return 0
    found = conn.execute(sa.select(sa.func.max(schema.c.version))).scalar()
    return int(found or 0)


def _set_version(conn: Connection, *, exists: bool) -> None:
    schema = tables().schema
    values = {"version": SCHEMA_VERSION, "migrated_at": datetime.now(UTC)}
    if exists:
        conn.execute(schema.update().where(schema.c.id == 1).values(**values))
    else:
        conn.execute(schema.insert().values(id=1, **values))


def _already_exists(exc: Exception) -> bool:
    from sqlalchemy.exc import IntegrityError

    text = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, IntegrityError) or "already exists" in text or "duplicate" in text
