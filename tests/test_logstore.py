"""The inference log on real databases: a SQLite file per test and the machine's PostgreSQL (a
database of this module's own, dropped afterwards). Nothing is mocked: a database that is down
is a closed port or a directory that does not exist.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promotion.errors import InvalidInput, LogUnavailable
from promotion.monitoring.logstore import (
    SCHEMA_VERSION,
    Label,
    LogStore,
    LogWriter,
    RequestRecord,
    engine_url,
)

PG_HOST = "127.0.0.1:5432"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (URI as a user writes it), dropped WITH (FORCE) at the end."""
    import sqlalchemy as sa

    name = f"promote_test_{uuid.uuid4().hex}"
    admin = sa.create_engine(f"postgresql+psycopg://postgres@{PG_HOST}/postgres",
                             isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {PG_HOST}: {exc.orig}")
    try:
        yield f"postgresql://postgres@{PG_HOST}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    with pg_database() as uri:
        yield uri


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[LogStore]:
    """A migrated store on each database. The PostgreSQL one is shared by the module's tests,
    which keep apart by model name (`model` fixture) and request ids (uuids)."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'log.db'}"
    else:
        uri = request.getfixturevalue("pg_uri")
    s = LogStore(uri)
    assert s.migrate() == SCHEMA_VERSION
    yield s
    s.close()


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def record(model: str, version: str | None = "1", *, rows: int = 0, at: datetime = T0,
           latency: float = 1.0, status: int = 200, inputs=None, predictions=None,
           row_keys=None, request_id: str | None = None, role: str = "answer") -> RequestRecord:
    outcome = "ok" if status < 400 else "client_error" if status < 500 else "model_error"
    if inputs is not None and not rows:
        rows = len(inputs)
    return RequestRecord(request_id or uuid.uuid4().hex, at, model, "Production", version, rows,
                         latency, outcome, status, inputs, predictions, row_keys, role)


def scored(model: str, version: str = "1", n: int = 2, at: datetime = T0, factor: float = 1.0,
           **kwargs) -> RequestRecord:
    """A request of n rows x = 0..n-1 whose predictions are factor * x."""
    x = np.arange(n, dtype=float)
    return record(model, version, at=at, inputs=pd.DataFrame({"x": x}), predictions=factor * x,
                  **kwargs)


def sql(store: LogStore, query: str, **params) -> list[tuple]:
    import sqlalchemy as sa

    with store.engine().connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


# -- URIs and schema ------------------------------------------------------------------------------


def test_engine_url_maps_postgres_to_psycopg_and_refuses_the_rest():
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgres://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert engine_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("sqlite:///rel.db") == "sqlite:///rel.db"
    for bad in ("mysql://bob:s3cret@db/x", "promote-log.db", "http://h/x", "sqlite://"):
        with pytest.raises(InvalidInput) as caught:
            engine_url(bad)
        assert "s3cret" not in str(caught.value) and "sqlite:///PATH" in str(caught.value)
    with pytest.raises(InvalidInput):
        LogStore("mysql://db/x")  # at construction, before any connection


def test_migrate_creates_the_schema_and_is_idempotent(store):
    import sqlalchemy as sa

    assert store.migrate() == SCHEMA_VERSION == store.migrate()
    names = set(sa.inspect(store.engine()).get_table_names())
    assert {"promote_log_schema", "inference_requests", "inference_rows", "feedback"} <= names
    assert sql(store, "SELECT version FROM promote_log_schema") == [(SCHEMA_VERSION,)]
    indexes = {i["name"] for i in sa.inspect(store.engine()).get_indexes("inference_rows")}
    assert {"ix_inference_rows_window", "ix_inference_rows_row_key"} <= indexes


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_replicas_migrating_at_once_all_succeed(kind, tmp_path):
    with (pg_database() if kind == "postgresql" else _sqlite(tmp_path)) as uri:
        stores = [LogStore(uri) for _ in range(4)]  # an engine each, as separate processes
        barrier = threading.Barrier(len(stores))
        results: list[object] = []

        def go(s: LogStore) -> None:
            barrier.wait()
            try:
                results.append(s.migrate())
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=go, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [SCHEMA_VERSION] * 4
        assert sql(stores[0], "SELECT count(*) FROM promote_log_schema") == [(1,)]
        for s in stores:
            s.close()


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'fresh.db'}"


def test_a_schema_newer_than_the_code_is_refused(store):
    sql_write(store, "UPDATE promote_log_schema SET version = 99")
    try:
        fresh = LogStore(store.uri)
        with pytest.raises(LogUnavailable) as caught:
            fresh.migrate()
        assert "schema version 99" in str(caught.value) and "upgrade Promote" in str(caught.value)
        fresh.close()
    finally:
        sql_write(store, f"UPDATE promote_log_schema SET version = {SCHEMA_VERSION}")


def sql_write(store: LogStore, query: str) -> None:
    import sqlalchemy as sa

    with store.engine().begin() as conn:
        conn.execute(sa.text(query))


# -- requests: summary and versions ---------------------------------------------------------------


@pytest.mark.parametrize("n_ok", [1, 2, 7, 20, 101])
def test_request_summary_counts_and_percentiles_match_numpy_lower(store, model, n_ok):
    rng = np.random.default_rng(n_ok)
    latencies = rng.exponential(20.0, size=n_ok).round(3)
    records = [record(model, "3", latency=float(v), rows=2, at=T0 + timedelta(seconds=i))
               for i, v in enumerate(latencies)]
    records += [record(model, "3", status=400, latency=1e6), record(model, "3", status=500),
                record(model, "3", status=503, latency=0.0)]
    # Outside the window, another version, another model: not counted.
    records += [record(model, "3", at=T0 - timedelta(seconds=1)), record(model, "3", at=T0 + DAY),
                record(model, "4"), record(model + "x", "3")]
    store.write(records)
    s = store.request_summary(model, "3", T0, T0 + DAY)
    assert (s.requests, s.ok, s.client_errors, s.model_errors) == (n_ok + 3, n_ok, 1, 2)
    assert s.rows == 2 * n_ok
    assert s.error_rate == pytest.approx(2 / (n_ok + 3))
    assert s.latency_p50_ms == pytest.approx(np.percentile(latencies, 50, method="lower"))
    assert s.latency_p95_ms == pytest.approx(np.percentile(latencies, 95, method="lower"))


def test_summary_of_a_window_without_ok_requests(store, model):
    store.write([record(model, "1", status=500)])
    s = store.request_summary(model, "1", T0, T0 + DAY)
    assert (s.requests, s.ok, s.model_errors) == (1, 0, 1) and s.error_rate == 1.0
    assert s.latency_p50_ms is None and s.latency_p95_ms is None
    empty = store.request_summary(model, "2", T0, T0 + DAY)
    assert empty.requests == 0 and empty.error_rate is None and empty.latency_p95_ms is None


def test_versions_counts_requests_per_served_version(store, model):
    store.write([record(model, "1"), record(model, "1"), record(model, "2"),
                 record(model, None, status=503), record(model, "9", at=T0 + DAY)])
    assert store.versions(model, T0, T0 + DAY) == {"1": 2, "2": 1}
    # Naive datetimes are UTC.
    assert store.versions(model, T0.replace(tzinfo=None), (T0 + DAY).replace(tzinfo=None)) \
        == {"1": 2, "2": 1}


# -- rows -------------------------------------------------------------------------------------


def test_iter_rows_streams_the_window_in_chunks(store, model):
    frames = [pd.DataFrame({"x": [10.0 * r + i for i in range(5)], "c": ["a"] * 5})
              for r in range(5)]
    store.write([record(model, "1", at=T0 + timedelta(minutes=r), inputs=f,
                        predictions=f["x"].to_numpy() * 2) for r, f in enumerate(frames)])
    store.write([scored(model, "2", n=3), scored(model, "1", n=3, at=T0 + DAY)])
    chunks = list(store.iter_rows(model, "1", T0, T0 + DAY, chunk_rows=10))
    assert [len(f) for f, _ in chunks] == [10, 10, 5]
    assert all(len(f) == len(p) and p.dtype == np.float64 for f, p in chunks)
    got = pd.concat([f for f, _ in chunks], ignore_index=True)
    want = pd.concat(frames, ignore_index=True)
    assert got["x"].tolist() == want["x"].tolist() and set(got["c"]) == {"a"}
    assert np.concatenate([p for _, p in chunks]).tolist() == (want["x"] * 2).tolist()


def test_iter_rows_max_rows_is_a_sample_spread_over_the_window(store, model):
    n = 1000
    frame = pd.DataFrame({"i": np.arange(n)})
    store.write([record(model, "1", at=T0 + timedelta(seconds=r), inputs=frame.iloc[r::10],
                        predictions=frame["i"].to_numpy()[r::10] * 1.0) for r in range(10)])
    rows = pd.concat([f for f, _ in store.iter_rows(model, "1", T0, T0 + DAY, max_rows=100,
                                                     chunk_rows=30)])
    # Logged order is request by request: every 10th logged row, from the first to the last.
    logged = np.concatenate([frame["i"].to_numpy()[r::10] for r in range(10)])
    assert rows["i"].tolist() == logged[::10].tolist()
    assert len(rows) == 100 and rows["i"].nunique() == 100
    few = list(store.iter_rows(model, "1", T0, T0 + DAY, max_rows=300))
    assert sum(len(f) for f, _ in few) == 250  # every 4th: ceil(1000 / 300) = 4
    everything = list(store.iter_rows(model, "1", T0, T0 + DAY, max_rows=5000))
    assert sum(len(f) for f, _ in everything) == n


def test_rows_encode_nan_inf_numpy_scalars_timestamps_and_non_numeric_predictions(store, model):
    inputs = pd.DataFrame({
        "f": [1.5, np.nan, np.inf], "i": np.array([1, 2, 3], dtype=np.int64),
        "s": ["a", None, "c"], "b": [True, False, True],
        "t": pd.to_datetime(["2024-01-02T03:04:05Z", None, "2024-01-03T00:00:00Z"]),
    })
    rid = uuid.uuid4().hex
    store.write([record(model, "1", inputs=inputs, request_id=rid,
                        predictions=np.array(["setosa", "virginica", "setosa"], dtype=object)),
                 record(model, "2", inputs=inputs.iloc[:2], predictions=np.array([[0.1, 0.9],
                                                                                 [0.8, 0.2]])),
                 record(model, "3", inputs=inputs.iloc[:1],
                        predictions=pd.DataFrame({"a": [1.0], "b": ["x"]}))])
    frame, predictions = next(store.iter_rows(model, "1", T0, T0 + DAY))
    assert frame["f"].tolist()[0] == 1.5 and math.isnan(frame["f"][1]) and math.isnan(frame["f"][2])
    assert frame["i"].tolist() == [1, 2, 3] and frame["s"].tolist()[0] == "a"
    assert frame["t"][0].startswith("2024-01-02T03:04:05")
    assert predictions.tolist() == ["setosa", "virginica", "setosa"]  # class names, as logged
    json_of = sql(store, "SELECT prediction_json FROM inference_rows WHERE request_id = :r "
                  "ORDER BY row", r=rid)
    decode = json.loads if store.uri.startswith("sqlite") else (lambda v: v)  # psycopg decodes
    assert [decode(v) for (v,) in json_of] == ["setosa", "virginica", "setosa"]
    probabilities = sql(store, "SELECT prediction, prediction_json FROM inference_rows "
                        "WHERE model = :m AND version = '2'", m=model)
    assert [p for p, _ in probabilities] == [None, None]
    # Plain SQL reads one input column: json_extract on SQLite, ->> on PostgreSQL.
    column = ("json_extract(inputs, '$.f')" if store.uri.startswith("sqlite")
              else "(inputs->>'f')::float")
    assert sql(store, f"SELECT {column} FROM inference_rows WHERE request_id = :r ORDER BY row",
               r=rid) == [(1.5,), (None,), (None,)]


# -- feedback ---------------------------------------------------------------------------------


def feedback_count(store: LogStore) -> int:
    return sql(store, "SELECT count(*) FROM feedback")[0][0]


def test_labels_join_the_rows_and_the_version_that_served_them(store, model):
    v1 = scored(model, "1", n=3, factor=1.0, at=T0)
    v2 = scored(model, "2", n=2, factor=10.0, at=T0 + timedelta(hours=1))
    store.write([v1, v2])
    # Late labels: both arrive after version 2 took over; each joins its own request's version.
    result = store.add_feedback([Label(0.5, v1.request_id, 1), Label(2.5, v1.request_id, 2),
                                 Label(9.0, v2.request_id, 1)], source="test")
    assert result.written == 3 and result.by_version == {"1": 2, "2": 1}
    predictions, labels = store.labelled(model, "1", T0, T0 + DAY)
    assert predictions.tolist() == [1.0, 2.0] and labels.tolist() == [0.5, 2.5]
    predictions, labels = store.labelled(model, "2", T0, T0 + DAY)
    assert predictions.tolist() == [10.0] and labels.tolist() == [9.0]
    assert store.labelled(model, "1", T0 + DAY, T0 + 2 * DAY)[0].size == 0
    assert sql(store, "SELECT source FROM feedback WHERE request_id = :r", r=v2.request_id) == [
        ("test",)]


def test_class_labels_come_back_as_strings(store, model):
    r = record(model, "1", inputs=pd.DataFrame({"x": [1, 2]}),
               predictions=np.array(["cat", "dog"], dtype=object))
    store.write([r])
    store.add_feedback([Label("cat", r.request_id, 0), Label("cat", r.request_id, 1)],
                       source="test")
    predictions, labels = store.labelled(model, "1", T0, T0 + DAY)
    assert predictions.dtype == object and predictions.tolist() == ["cat", "dog"]
    assert labels.tolist() == ["cat", "cat"]


def test_a_row_key_labels_the_most_recent_row_with_it(store, model):
    old = scored(model, "1", n=2, at=T0, row_keys=("cust-1", "cust-2"))
    new = scored(model, "2", n=1, at=T0 + timedelta(hours=1), factor=5.0, row_keys=("cust-1",))
    other_model = scored(model + "-other", "1", n=1, at=T0 + timedelta(hours=2),
                         row_keys=("cust-1",))
    store.write([old, new, other_model])
    result = store.add_feedback([Label(4.0, row_key="cust-1"), Label(1.0, row_key="cust-2")],
                                source="test", model=model)
    assert result.by_version == {"1": 1, "2": 1}
    labelled = sql(store, "SELECT request_id, row, label FROM feedback WHERE request_id IN "
                   "(:a, :b) ORDER BY label", a=old.request_id, b=new.request_id)
    assert labelled == [(old.request_id, 1, 1.0), (new.request_id, 0, 4.0)]


def refused(store: LogStore, labels: list[Label], **kwargs) -> str:
    before = feedback_count(store)
    with pytest.raises(InvalidInput) as caught:
        store.add_feedback(labels, source="test", **kwargs)
    assert feedback_count(store) == before, "a refused batch wrote something"
    return str(caught.value)


def test_every_bad_label_refuses_the_whole_batch(store, model):
    r = scored(model, "1", n=2)
    failed = record(model, "1", status=500)
    store.write([r, failed])
    store.add_feedback([Label(1.0, r.request_id, 0)], source="test")
    good = Label(2.0, r.request_id, 1)
    cases = {
        "unknown request": (Label(1.0, "no-such-request"), "'no-such-request' is not in the"),
        "already labelled": (Label(1.0, r.request_id, 0), "already labelled"),
        "row out of range": (Label(1.0, r.request_id, 2), "row 2 is out of range"),
        "negative row": (Label(1.0, r.request_id, -1), "row must be a whole number"),
        "null label": (Label(None, r.request_id, 1), "got null"),  # type: ignore[arg-type]
        "dict label": (Label({"a": 1}, r.request_id, 1), "got an object"),  # type: ignore
        "boolean label": (Label(True, r.request_id, 1), "got the boolean true"),
        "NaN label": (Label(float("nan"), r.request_id, 1), "finite"),
        "no target": (Label(1.0), "exactly one of them"),
        "both targets": (Label(1.0, r.request_id, 0, row_key="k"), "exactly one of them"),
        "unknown row key": (Label(1.0, row_key="nobody"), "no logged row has this row key"),
        "failed request": (Label(1.0, failed.request_id), "was not scored (model_error)"),
    }
    for name, (bad, words) in cases.items():
        message = refused(store, [good, bad])
        assert words in message and "1 of 2 labels refused" in message, (name, message)
    duplicate = refused(store, [good, Label(3.0, r.request_id, 1)])
    assert "labels[1]" in duplicate and "the same row as labels[0]" in duplicate
    assert "empty" in refused(store, [])
    # Many offenders: five named, the rest counted.
    many = refused(store, [Label(1.0, f"missing-{i}") for i in range(8)] + [good])
    assert many.startswith("8 of 9 labels refused") and "and 3 more" in many
    assert many.count("is not in the inference log") == 5
    # And the good label alone still goes in.
    assert store.add_feedback([good], source="test").written == 1


def test_an_unreachable_database_is_log_unavailable_without_credentials(tmp_path):
    down = LogStore("postgresql://alice:s3cret@127.0.0.1:1/log", timeout=1)
    for call in (down.migrate, lambda: down.versions("m", T0, T0 + DAY),
                 lambda: down.add_feedback([Label(1.0, "r")], source="t"),
                 lambda: list(down.iter_rows("m", "1", T0, T0 + DAY))):
        with pytest.raises(LogUnavailable) as caught:
            call()
        message = str(caught.value)
        assert "127.0.0.1:1" in message and "s3cret" not in message and "alice" not in message
    missing = LogStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'log.db'}")
    with pytest.raises(LogUnavailable, match="unable to open database file"):
        missing.migrate()


# -- the writer -------------------------------------------------------------------------------


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_dead_database_never_blocks_submit_and_every_record_is_counted(model):
    store = LogStore("postgresql://postgres@127.0.0.1:1/log", timeout=1)
    writer = LogWriter(store, queue_size=5, batch_size=2, flush_interval=0.01,
                       min_backoff=0.05, max_backoff=0.2)
    writer.start()
    slowest = 0.0
    accepted = 0
    for _ in range(50):
        started = time.perf_counter()
        accepted += writer.submit(scored(model))
        slowest = max(slowest, time.perf_counter() - started)
    print(f"slowest submit while the database is down: {slowest * 1e3:.3f} ms")
    wait_for(lambda: writer.stats().dropped_database > 0, what="a dropped batch")
    stats = writer.stats()
    assert stats.healthy is False and "127.0.0.1" in (stats.last_error or "")
    assert stats.written == 0 and stats.last_error_at is not None
    assert accepted + stats.dropped_queue_full == 50 and stats.dropped_queue_full > 0
    writer.close(timeout=5)
    after = writer.stats()
    assert after.dropped_database + after.dropped_queue_full + after.queued == 50
    assert writer.submit(scored(model)) is False  # closed


def test_writing_resumes_when_the_database_comes_back(tmp_path, model):
    directory = tmp_path / "created-later"
    store = LogStore(f"sqlite:///{directory / 'log.db'}", timeout=1)
    writer = LogWriter(store, batch_size=10, flush_interval=0.01, min_backoff=0.05,
                       max_backoff=0.2)
    writer.start()
    try:
        for _ in range(3):
            assert writer.submit(scored(model))
        wait_for(lambda: writer.stats().dropped_database == 3, what="the first records dropped")
        assert writer.stats().healthy is False
        directory.mkdir()
        submitted = 0
        # Records submitted after the directory exists are written once the writer retries.
        while writer.stats().written == 0:
            writer.submit(scored(model, request_id=f"after-{submitted}"))
            submitted += 1
            wait_for(lambda: writer.stats().queued == 0 or writer.stats().written > 0,
                     what="the queue drained")
        wait_for(lambda: writer.stats().healthy, what="healthy again")
    finally:
        writer.close(timeout=5)
    stats = writer.stats()
    assert stats.written >= 1 and stats.dropped_database >= 3
    assert sql(store, "SELECT count(*) FROM inference_requests")[0][0] == stats.written
    assert stats.written + stats.dropped_database == 3 + submitted
    assert stats.sampled_rows == 2 * stats.written
    store.close()


def test_close_writes_what_is_queued(tmp_path, model):
    store = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    writer = LogWriter(store, batch_size=100, flush_interval=5.0)
    for i in range(1000):  # queued before the thread runs: close must write them all
        assert writer.submit(scored(model, request_id=f"r{i}"))
    writer.start()
    writer.close(timeout=30)
    assert writer.stats().written == 1000 and writer.stats().queued == 0
    assert sql(store, "SELECT count(DISTINCT request_id), count(*) FROM inference_requests") == [
        (1000, 1000)]
    assert sql(store, "SELECT count(*) FROM inference_rows") == [(2000,)]
    store.close()


def test_a_full_queue_drops_and_counts(tmp_path, model):
    writer = LogWriter(LogStore(f"sqlite:///{tmp_path / 'log.db'}"), queue_size=3)
    results = [writer.submit(scored(model)) for _ in range(5)]  # not started: nothing drains
    assert results == [True, True, True, False, False]
    stats = writer.stats()
    assert stats.queued == 3 and stats.dropped_queue_full == 2 and stats.dropped == 2


def test_close_does_not_wait_for_a_database_that_hangs(model):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        writer = LogWriter(LogStore(f"postgresql://postgres@127.0.0.1:{port}/log", timeout=30))
        writer.start()
        writer.submit(scored(model))
        wait_for(lambda: writer._busy_since is not None, what="a write in progress")
        writer.close(timeout=0.2)
        assert writer._thread is not None and writer._thread.is_alive()  # still waiting
        assert writer.submit(scored(model)) is False


def test_two_writers_on_one_postgresql_log_write_every_request_once(pg_uri, model):
    stores = [LogStore(pg_uri), LogStore(pg_uri)]
    writers = [LogWriter(s, batch_size=50, flush_interval=0.01) for s in stores]
    for w in writers:
        w.start()

    def send(w: LogWriter, name: str) -> None:
        for i in range(500):
            assert w.submit(scored(model, n=2, request_id=f"{name}-{i}"))

    threads = [threading.Thread(target=send, args=(w, f"w{k}")) for k, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.close(timeout=30)
        assert w.stats().written == 500 and w.stats().dropped == 0
    counts = sql(stores[0], "SELECT request_id, count(*) FROM inference_requests WHERE model = :m "
                 "GROUP BY request_id", m=model)
    assert len(counts) == 1000 and {n for _, n in counts} == {1}
    assert sql(stores[0], "SELECT count(*) FROM inference_rows WHERE model = :m", m=model) == [
        (2000,)]
    for s in stores:
        s.close()


def test_logged_values_read_back_exactly(store, model):
    """A value that came back rounded could cross a reference bin's edge: a 0/1 column's edges
    are its own values, so drift would be reported where there is none."""
    values = [-0.044641636506989144, 0.05068011873981862, 1e-17, 123456789.12345679]
    frame = pd.DataFrame({"x": values})
    predictions = np.array(values) * 3.0
    store.write([RequestRecord(request_id=f"exact-{i}", at=T0, model=model, alias="Production",
                               version="1", rows=1, latency_ms=1.0, outcome="ok", status=200,
                               inputs=frame.iloc[[i]], predictions=predictions[[i]])
                 for i in range(len(values))])
    (inputs, read), = store.iter_rows(model, "1", T0, T0 + timedelta(seconds=1))
    assert inputs["x"].tolist() == values
    assert read.tolist() == predictions.tolist()


def test_a_record_the_database_refuses_costs_only_itself(store, model):
    """A value the database refuses (here a CHECK constraint; in the field a character
    PostgreSQL cannot store) drops that record, not the 199 others of its batch."""
    sql_write(store, "ALTER TABLE inference_requests ADD CONSTRAINT refuse_bad "
                     "CHECK (request_id <> 'bad')" if store.uri.startswith("postgres") else
              "CREATE TRIGGER refuse_bad BEFORE INSERT ON inference_requests "
              "WHEN NEW.request_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    writer = LogWriter(store, batch_size=200, flush_interval=5.0, min_backoff=0.05)
    for i in range(200):
        assert writer.submit(scored(model, request_id="bad" if i == 117 else f"ok-{i}"))
    writer.start()
    try:
        writer.close(timeout=60)
    finally:
        sql_write(store, "ALTER TABLE inference_requests DROP CONSTRAINT refuse_bad"
                  if store.uri.startswith("postgres") else "DROP TRIGGER refuse_bad")
    stats = writer.stats()
    assert (stats.written, stats.dropped_database) == (199, 1)
    ids = {r[0] for r in sql(store, "SELECT request_id FROM inference_requests WHERE "
                                    "model = :model", model=model)}
    assert "bad" not in ids and len(ids) == 199


def test_a_schema_1_log_gains_feedback_model_and_keeps_its_labels(tmp_path, model):
    """A log written by the first schema (no feedback.model) is upgraded in place; its old
    labels still join."""
    import sqlalchemy as sa

    store = LogStore(f"sqlite:///{tmp_path / 'v1.db'}")
    store.migrate()
    store.write([scored(model, request_id="old")])
    store.add_feedback([Label(label=7.0, request_id="old")], source="test")
    # Back to schema 1, as a database written by that code would be.
    sql_write(store, "ALTER TABLE feedback DROP COLUMN model")
    sql_write(store, "ALTER TABLE inference_requests DROP COLUMN role")
    sql_write(store, "UPDATE promote_log_schema SET version = 1")
    store.close()
    upgraded = LogStore(store.uri)
    assert upgraded.migrate() == SCHEMA_VERSION == 3
    inspector = sa.inspect(upgraded.engine())
    assert "model" in {c["name"] for c in inspector.get_columns("feedback")}
    assert "role" in {c["name"] for c in inspector.get_columns("inference_requests")}
    _, labels = upgraded.labelled(model, "1", T0 - DAY, T0 + DAY)
    assert labels.tolist() == [7.0]
    upgraded.close()


def test_a_label_joins_only_its_own_models_rows(store, model):
    """Another model's client may later log a request under the same id: it does not get the
    label."""
    store.write([scored(model, request_id="shared-id", n=1)])
    store.add_feedback([Label(label=3.0, request_id="shared-id")], source="test", model=model)
    other = f"{model}-other"
    store.write([scored(other, request_id="shared-id", n=1, at=T0 + timedelta(minutes=1))])
    assert labelled_of(store, model) == [3.0]
    assert labelled_of(store, other) == []


def labelled_of(store: LogStore, model: str) -> list:
    return store.labelled(model, "1", T0 - DAY, T0 + DAY)[1].tolist()


def test_a_label_joins_each_versions_prediction_of_a_canary_or_shadowed_request(store, model):
    """During a rollout one request can have several records: a canary's failed attempt, then
    the primary's answer; or the answer and a shadow copy. They are one request: its label is
    accepted and joins every version's prediction of the row."""
    store.write([record(model, "2", request_id="tried", rows=1, role="attempt", status=500),
                 scored(model, "1", request_id="tried", n=1),
                 scored(model, "1", request_id="mirrored", n=2, factor=1.0),
                 scored(model, "2", request_id="mirrored", n=2, factor=3.0, role="shadow")])
    result = store.add_feedback([Label(1.0, "tried", 0), Label(2.0, "mirrored", 1)],
                                source="test", model=model)
    assert result.by_version == {"1": 2}  # the versions that answered
    predictions, labels = store.labelled(model, "1", T0 - DAY, T0 + DAY)
    assert (predictions.tolist(), labels.tolist()) == ([0.0, 1.0], [1.0, 2.0])
    predictions, labels = store.labelled(model, "2", T0 - DAY, T0 + DAY)
    assert (predictions.tolist(), labels.tolist()) == ([3.0], [2.0])  # the shadow's row 1
    ours, theirs = store.paired(model, "1", "2", T0 - DAY, T0 + DAY)
    assert (ours.tolist(), theirs.tolist()) == ([0.0, 1.0], [0.0, 3.0])
