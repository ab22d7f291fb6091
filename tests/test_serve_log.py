"""`promote serve` and its inference log: in-process against real SQLite / PostgreSQL logs (the
app of test_serve_app.py, with a real LogWriter and LogStore), and once as a real process
against the real MLflow test server.
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from test_logstore import sql, wait_for
from test_serve_app import PAYLOAD, Models, call, sample

from promotion.cli import run
from promotion.errors import ExitCode
from promotion.monitoring.logstore import LogStore, LogWriter
from promotion.serve.app import create_app
from promotion.serve.follower import AliasFollower
from promotion.serve.server import ServeOptions, _open_log

EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture
def models() -> Models:
    return Models()


@pytest.fixture
def follower(models: Models) -> AliasFollower:
    f = AliasFollower("m", "Production", 60, models.resolve, models.load)
    f.refresh()  # version 1 is served
    return f


@pytest.fixture
def store(tmp_path) -> Iterator[LogStore]:
    s = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def writer(store) -> Iterator[LogWriter]:
    w = LogWriter(store, flush_interval=0.01)
    w.start()
    yield w
    w.close(timeout=5)


def logged_app(follower, writer, **kwargs):
    return create_app(follower, manage_follower=False, max_body_bytes=10_000,
                      request_timeout=5, log=writer, **kwargs)


def settled(writer: LogWriter, n: int) -> None:
    """Wait until n records have been written or dropped."""
    wait_for(lambda: (s := writer.stats()).written + s.dropped >= n and s.queued == 0,
             what=f"{n} records written")


def requests_logged(store: LogStore) -> list[tuple]:
    return sql(store, "SELECT request_id, version, rows, outcome, status, sampled_rows "
               "FROM inference_requests ORDER BY id")


# -- X-Request-Id ------------------------------------------------------------------------------


def test_every_answer_carries_a_request_id(follower, writer, store):
    app = logged_app(follower, writer)
    echoed = call(app, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": "abc-1"})
    assert echoed.status_code == 200 and echoed.headers["X-Request-Id"] == "abc-1"
    generated = [call(app, "POST", "/invocations", json=PAYLOAD).headers["X-Request-Id"]
                 for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated)
    assert generated[0] != generated[1]
    for bad in ("has space", "x" * 129, "é".encode(), b"tab\there", ""):
        r = call(app, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"]), bad
    assert call(app, "POST", "/invocations", json=PAYLOAD,
                headers={"X-Request-Id": "x" * 128}).headers["X-Request-Id"] == "x" * 128
    error = call(app, "POST", "/invocations", content=b"{", headers={"X-Request-Id": "bad-1"})
    assert error.status_code == 400 and error.headers["X-Request-Id"] == "bad-1"
    settled(writer, 10)
    ids = [r[0] for r in requests_logged(store)]
    assert ids[0] == "abc-1" and ids[1:3] == generated and ids[-1] == "bad-1"


# -- what is logged ---------------------------------------------------------------------------


def test_rows_and_predictions_are_logged_and_queryable(follower, writer, store, models):
    app = logged_app(follower, writer)
    assert call(app, "POST", "/invocations", json=PAYLOAD,
                headers={"X-Request-Id": "r1"}).json() == {"predictions": [3, 7]}
    models.target = "2"
    follower.refresh()
    assert call(app, "POST", "/invocations", json=PAYLOAD,
                headers={"X-Request-Id": "r2"}).json() == {"predictions": [30, 70]}
    settled(writer, 2)
    assert requests_logged(store) == [("r1", "1", 2, "ok", 200, 2), ("r2", "2", 2, "ok", 200, 2)]
    for version, factor in (("1", 1), ("2", 10)):
        [(frame, predictions)] = list(store.iter_rows("m", version, *EVER))
        assert frame[["a", "b"]].to_numpy().tolist() == [[1, 2], [3, 4]]
        assert predictions.tolist() == [3.0 * factor, 7.0 * factor]
    summary = store.request_summary("m", "1", *EVER)
    assert summary.requests == summary.ok == 1 and summary.rows == 2
    assert summary.latency_p50_ms is not None and summary.latency_p50_ms > 0


def test_failed_requests_are_logged_with_their_outcome(follower, writer, store, models):
    from test_serve_app import SumModel

    app = logged_app(follower, writer)
    call(app, "POST", "/invocations", content=b"{", headers={"X-Request-Id": "malformed"})
    models.models["2"] = SumModel(fail=RuntimeError("boom"))
    models.target = "2"
    follower.refresh()
    call(app, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": "fault"})
    empty = AliasFollower("m", "Production", 60, models.resolve, models.load)  # nothing loaded
    not_ready = logged_app(empty, writer)
    call(not_ready, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": "early"})
    settled(writer, 3)
    assert requests_logged(store) == [("malformed", "1", 0, "client_error", 400, 0),
                                      ("fault", "2", 2, "model_error", 500, 0),
                                      ("early", None, 0, "model_error", 503, 0)]
    assert store.request_summary("m", "2", *EVER).error_rate == 1.0


def test_sample_rate_zero_logs_requests_but_no_rows(follower, writer, store):
    app = logged_app(follower, writer, sample_rate=0.0)
    for _ in range(5):
        assert call(app, "POST", "/invocations", json=PAYLOAD).status_code == 200
    settled(writer, 5)
    assert [r[5] for r in requests_logged(store)] == [0] * 5
    assert sql(store, "SELECT count(*) FROM inference_rows") == [(0,)]
    assert writer.stats().sampled_rows == 0


def test_a_sample_rate_draws_from_the_apps_own_random(follower, writer, store):
    app = logged_app(follower, writer, sample_rate=0.3, rng=random.Random(7))
    for _ in range(40):
        call(app, "POST", "/invocations", json=PAYLOAD)
    settled(writer, 40)
    draws = random.Random(7)
    want = [2 if draws.random() < 0.3 else 0 for _ in range(40)]
    assert [r[5] for r in requests_logged(store)] == want and 0 < sum(want) < 80


def test_at_most_max_rows_of_a_request_are_logged(follower, writer, store):
    app = logged_app(follower, writer, max_rows=3)
    data = [[i, 10 * i] for i in range(10)]
    r = call(app, "POST", "/invocations",
             json={"dataframe_split": {"columns": ["a", "b"], "data": data}})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 10
    settled(writer, 1)
    assert [row[2:] for row in requests_logged(store)] == [(10, "ok", 200, 3)]
    [(frame, predictions)] = list(store.iter_rows("m", "1", *EVER))
    assert frame["a"].tolist() == [0, 1, 2] and predictions.tolist() == [0.0, 11.0, 22.0]


# -- POST /feedback ---------------------------------------------------------------------------


def test_feedback_joins_labels_to_logged_rows(follower, writer, store):
    app = logged_app(follower, writer, row_key="id")
    rid = call(app, "POST", "/invocations", json=PAYLOAD).headers["X-Request-Id"]
    keyed = {"dataframe_split": {"columns": ["id", "a"], "data": [[1001, 1], [1002, 2]]}}
    assert call(app, "POST", "/invocations", json=keyed).json() == {"predictions": [1002, 1004]}
    settled(writer, 2)
    r = call(app, "POST", "/feedback", json={"labels": [
        {"request_id": rid, "row": 1, "label": 6.5}, {"row_key": "1002", "label": 1000}],
        "source": "labelling-job"})
    assert r.status_code == 200 and r.json() == {"written": 2, "by_version": {"1": 2}}
    predictions, labels = store.labelled("m", "1", *EVER)
    assert predictions.tolist() == [7.0, 1004.0] and labels.tolist() == [6.5, 1000.0]
    assert sql(store, "SELECT DISTINCT source FROM feedback") == [("labelling-job",)]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{", 400, "malformed JSON"),
    (b"[]", 400, '{"labels": ['),
    (b'{"labels": {}}', 400, '{"labels": ['),
    (b'{"labels": [], "extra": 1}', 400, '{"labels": ['),
    (b'{"labels": [1]}', 400, "labels[0] is not an object"),
    (b'{"labels": [{"request_id": "x"}]}', 400, "found: request_id"),
    (b'{"labels": [{"label": 1, "rows": 0}]}', 400, "found: label, rows"),
    (b'{"labels": []}', 400, "empty"),
    (b'{"labels": [{"request_id": "nope", "label": 1}]}', 400, "'nope' is not in the"),
    (b'{"labels": [{"request_id": "r1", "label": null}]}', 400, "got null"),
    (b'{"labels": [{"request_id": "r1", "label": {"a": 1}}]}', 400, "got an object"),
    (b'{"labels": [{"request_id": "r1", "row": 9, "label": 1}]}', 400, "out of range"),
    (b'{"labels": [{"request_id": "r1", "label": 1}], "source": 3}', 400, "source"),
])
def test_feedback_refuses_bad_batches_with_one_clear_message(follower, writer, store, body,
                                                             status, words):
    app = logged_app(follower, writer)
    call(app, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": "r1"})
    settled(writer, 1)
    r = call(app, "POST", "/feedback", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and words in r.json()["message"], r.text
    assert r.json()["error_code"] == "BAD_REQUEST"
    assert sql(store, "SELECT count(*) FROM feedback") == [(0,)]


def test_feedback_twice_for_a_row_and_other_media_types_are_refused(follower, writer, store):
    app = logged_app(follower, writer)
    call(app, "POST", "/invocations", json=PAYLOAD, headers={"X-Request-Id": "r1"})
    settled(writer, 1)
    one = {"labels": [{"request_id": "r1", "row": 0, "label": 1}]}
    assert call(app, "POST", "/feedback", json=one).status_code == 200
    again = call(app, "POST", "/feedback", json=one)
    assert again.status_code == 400 and "already labelled" in again.json()["message"]
    r = call(app, "POST", "/feedback", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_feedback_without_a_log_or_without_its_database_is_503(follower):
    off = create_app(follower, manage_follower=False)
    r = call(off, "POST", "/feedback", json={"labels": [{"request_id": "r", "label": 1}]})
    assert r.status_code == 503 and "the inference log is off" in r.json()["message"]
    down = LogWriter(LogStore("postgresql://alice:s3cret@127.0.0.1:1/log", timeout=1))
    r = call(create_app(follower, manage_follower=False, log=down), "POST", "/feedback",
             json={"labels": [{"request_id": "r", "label": 1}]})
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "127.0.0.1:1" in r.json()["message"] and "s3cret" not in r.text


# -- health, version, metrics ---------------------------------------------------------------------


def test_a_dead_log_database_never_fails_a_request(follower):
    store = LogStore("postgresql://alice:s3cret@127.0.0.1:1/log", timeout=1)
    writer = LogWriter(store, queue_size=3, batch_size=1, flush_interval=0.01,
                       min_backoff=0.05, max_backoff=0.1)
    writer.start()
    app = logged_app(follower, writer)
    try:
        for _ in range(10):
            r = call(app, "POST", "/invocations", json=PAYLOAD)
            assert r.status_code == 200 and r.json() == {"predictions": [3, 7]}
        wait_for(lambda: not writer.stats().healthy and writer.stats().dropped_database > 0,
                 what="the log reported down")
        health = call(app, "GET", "/health")
        assert health.status_code == 200
        log = health.json()["log"]
        assert log["status"] == "degraded" and log["dropped"] > 0
        assert "127.0.0.1:1" in log["last_error"] and "s3cret" not in health.text
        version = call(app, "GET", "/version").json()["log"]
        assert version["status"] == "degraded" and "s3cret" not in version["uri"]
        assert version["uri"].endswith("@127.0.0.1:1/log")
        assert sample(app, "promote_serve_log_healthy") == 0
        assert sample(app, "promote_serve_log_dropped_total", reason="database") > 0
        assert sample(app, "promote_serve_log_records_total") == 0
        stats = writer.stats()
        assert (sample(app, "promote_serve_log_dropped_total", reason="queue_full")
                == stats.dropped_queue_full)
    finally:
        writer.close(timeout=2)


def test_health_version_and_metrics_report_a_working_log(follower, writer, store):
    app = logged_app(follower, writer, sample_rate=0.5, max_rows=7, row_key="id")
    for _ in range(3):
        call(app, "POST", "/invocations", json=PAYLOAD)
    settled(writer, 3)
    assert call(app, "GET", "/health").json()["log"] == {"status": "ok", "dropped": 0,
                                                        "last_error": None}
    doc = call(app, "GET", "/version").json()["log"]
    assert doc["uri"] == store.uri and doc["written"] == 3 and doc["queued"] == 0
    assert (doc["sample_rate"], doc["max_rows"], doc["row_key"]) == (0.5, 7, "id")
    assert sample(app, "promote_serve_log_records_total") == 3
    assert sample(app, "promote_serve_log_healthy") == 1
    assert sample(app, "promote_serve_log_queue_depth") == 0
    assert sample(app, "promote_serve_log_dropped_total", reason="queue_full") == 0


def test_with_the_log_off_health_says_so_and_metrics_have_no_log_series(follower):
    app = create_app(follower, manage_follower=False)
    assert call(app, "GET", "/health").json()["log"]["status"] == "off"
    assert call(app, "GET", "/version").json()["log"]["uri"] is None
    assert "promote_serve_log" not in call(app, "GET", "/metrics").text
    assert call(app, "POST", "/invocations", json=PAYLOAD).headers["X-Request-Id"]


def test_the_app_lifespan_starts_the_writer_and_closing_flushes_it(follower, store):
    writer = LogWriter(store, flush_interval=10.0)  # only closing flushes within the test
    app = logged_app(follower, writer)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                for _ in range(20):
                    assert (await http.post("/invocations", json=PAYLOAD)).status_code == 200

    asyncio.run(scenario())
    assert writer.stats().written == 20
    assert sql(store, "SELECT count(*) FROM inference_rows") == [(40,)]


# -- start-up ---------------------------------------------------------------------------------


def test_a_log_database_that_is_down_at_start_up_is_a_warning(caplog):
    options = ServeOptions(model="m", log_uri="postgresql://alice:s3cret@127.0.0.1:1/log")
    with caplog.at_level("WARNING", logger="promotion.serving"):
        writer = _open_log(LogStore(str(options.log_uri), timeout=1), options)
    assert writer is not None
    assert "serving anyway" in caplog.text and "127.0.0.1:1" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(("args", "words"), [
    (["--log-uri", "mysql://bob:s3cret@db/log"], "--log-uri"),
    (["--log-sample-rate", "1.5"], "--log-sample-rate"),
    (["--log-max-rows", "-1"], "--log-max-rows"),
    (["--log-queue", "0"], "--log-queue"),
    (["--row-key", " "], "--row-key"),
])
def test_bad_log_options_are_invalid_input(args, words, capsys):
    assert run(["serve", "m", *args]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert words in err and "s3cret" not in err


def test_serve_help_imports_no_database_driver():
    code = ("import sys; from promotion.cli import run; rc = run(['serve', '--help']); "
            "print('RC', rc, 'HEAVY', sorted(m for m in ('sqlalchemy', 'pandas', 'fastapi') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "RC 0 HEAVY []" in out and "--log-uri" in out and "PROMOTE_LOG_URI" in out


# -- a real `promote serve` -----------------------------------------------------------------------


@pytest.mark.mlflow
def test_a_real_endpoint_logs_to_sqlite_and_takes_feedback(tracking_uri, client, model_name,
                                                          tmp_path):
    from test_serve import ROWS, expected, log_version, serving, split_payload

    version = log_version(model_name, "a")
    client.set_registered_model_alias(model_name, "Production", version)
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    started = datetime.now(UTC) - timedelta(seconds=1)
    with serving(tracking_uri, model_name, "--poll-interval", "30", "--log-uri", uri) as endpoint:
        ids = []
        for _ in range(3):
            r = endpoint.post(split_payload(), headers={"X-Request-Id": uuid.uuid4().hex})
            assert r.status_code == 200 and r.json()["predictions"] == pytest.approx(expected("a"))
            ids.append(r.headers["X-Request-Id"])
        assert endpoint.get("/health").json()["log"]["status"] == "ok"
        # The writer flushes within its interval: feedback needs the request logged first.
        _wait_written(endpoint, 3)
        r = httpx.post(endpoint.url + "/feedback", timeout=30, json={"labels": [
            {"request_id": ids[0], "row": 2, "label": 11.0}]})
        assert r.status_code == 200 and r.json() == {"written": 1, "by_version": {version: 1}}
    store = LogStore(uri)
    window = (started, datetime.now(UTC) + timedelta(seconds=1))
    assert store.versions(model_name, *window) == {version: 3}
    frames = list(store.iter_rows(model_name, version, *window))
    assert sum(len(f) for f, _ in frames) == 3 * len(ROWS)
    assert frames[0][0][["x1", "x2"]].to_numpy().tolist()[:3] == ROWS
    predictions, labels = store.labelled(model_name, version, *window)
    assert labels.tolist() == [11.0]
    assert predictions == pytest.approx([expected("a")[2]])
    assert np.isfinite(predictions).all()
    store.close()


def _wait_written(endpoint, n: int) -> None:
    deadline = time.monotonic() + 30
    while endpoint.get("/version").json()["log"]["written"] < n:
        assert time.monotonic() < deadline, endpoint.log()[-3000:]
        time.sleep(0.05)


# -- what a request leaves in the queue ----------------------------------------------------------


def test_sampled_rows_are_copies_not_views_of_the_request():
    """A queued record must not keep the whole request alive (the queue is bounded in records)."""
    import pandas as pd

    from promotion.serve.protocol import sample_rows

    frame = pd.DataFrame({"x": np.arange(10_000.0)})
    raw = np.arange(10_000.0)
    inputs, predictions, _ = sample_rows(frame, raw, 100, None)
    assert len(inputs) == 100 and predictions.base is None
    assert not np.shares_memory(inputs["x"].to_numpy(), frame["x"].to_numpy())


def test_a_request_whose_inputs_no_table_holds_is_still_logged(writer, store):
    """Tensor inputs cannot be sampled as rows: the request is logged all the same (dropping it
    would make the version's error rate look worse than it is)."""
    from promotion.serve.app import RequestLog
    from promotion.serve.protocol import Scoring

    log = RequestLog(writer, 1.0, 100, None, random.Random(0))
    tensor = Scoring(data=np.zeros((2, 3, 4)), rows=2, raw=np.zeros(2))
    log.submit("tensor-1", datetime.now(UTC), "m", "Production", None, 0.01, 200, tensor)
    settled(writer, 1)
    assert requests_logged(store) == [("tensor-1", None, 2, "ok", 200, 0)]


@pytest.mark.parametrize("label", ["NaN", "inf", 10**400])
def test_a_label_that_is_not_a_finite_number_is_refused(store, label):
    from promotion.errors import InvalidInput
    from promotion.monitoring.logstore import Label

    with pytest.raises(InvalidInput, match="finite number"):
        store.add_feedback([Label(label=label, request_id="any")], source="test")
