"""`promote serve` against the real MLflow test server: the real CLI in a subprocess, real HTTP.

Two LinearRegression versions with different coefficients make the served version visible in
the predictions themselves, not only in the X-Model-Version header.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from promotion.cli import run
from promotion.errors import ExitCode

pytestmark = pytest.mark.mlflow

PROMOTE = str(Path(sys.executable).with_name("promote"))
COLUMNS = ["x1", "x2"]
ROWS = [[0.5, 1.0], [2.0, -1.0], [3.0, 4.0]]
# version label -> (coef, intercept); y = coef . x + intercept
COEFS = {"a": ((2.0, 1.0), 0.0), "b": ((-1.0, 3.0), 10.0), "c": ((0.5, 0.5), -5.0)}


def expected(kind: str, rows=ROWS) -> list[float]:
    (c1, c2), b = COEFS[kind]
    return [c1 * x1 + c2 * x2 + b for x1, x2 in rows]


def split_payload(rows=ROWS) -> dict:
    return {"dataframe_split": {"columns": COLUMNS, "data": rows}}


def log_version(name: str, kind: str, score: float = 1.0) -> str:
    """Train a tiny model whose coefficients identify it; register it; return its version.

    The run logs `score`, the metric the gate policy of these tests compares.
    """
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(20, 2)), columns=COLUMNS)
    (c1, c2), b = COEFS[kind]
    y = c1 * x["x1"] + c2 * x["x2"] + b
    model = LinearRegression().fit(x, y)
    mlflow.set_experiment("promote-serve-tests")
    with mlflow.start_run():
        mlflow.log_metric("score", score)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        signature=infer_signature(x, model.predict(x)),
                                        pip_requirements=["scikit-learn"])
    return str(info.registered_model_version)


def log_broken_version(client, name: str, good_version: str) -> str:
    """A version whose artifacts lack the model file: MLmodel is fine, loading is not."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{good_version}",
                                                         dst_path=tmp))
        removed = [p for p in local.iterdir() if p.name.startswith("model.")]
        assert removed, list(local.iterdir())
        for p in removed:
            p.unlink()
        with mlflow.start_run() as run_:
            mlflow.log_artifacts(str(local), "model")
    mv = client.create_model_version(name, source=f"runs:/{run_.info.run_id}/model",
                                     run_id=run_.info.run_id)
    return str(mv.version)


@dataclass
class Endpoint:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)

    def post(self, payload=None, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/invocations", json=payload, timeout=30, **kwargs)


@contextmanager
def serving(tracking_uri: str, model: str, *args: str, ready: bool = True) -> Iterator[Endpoint]:
    """`promote serve MODEL --port 0 ...` as a subprocess; stopped with SIGTERM at the end."""
    fd, name = tempfile.mkstemp(prefix="promote-serve-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    # The inference log goes to a scratch file, not ./promote-log.db, unless a test names one.
    scratch = tempfile.TemporaryDirectory(prefix="promote-serve-log-")
    env = {"PROMOTE_LOG_URI": f"sqlite:///{scratch.name}/promote-log.db", **os.environ,
           "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PROMOTE, "serve", model, "--port", "0", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = _wait_listening(proc, log_path)
        endpoint = Endpoint(url, proc, log_path)
        if ready:
            _wait_until(lambda: endpoint.get("/health").status_code == 200, 120,
                        lambda: f"never healthy:\n{endpoint.log()[-3000:]}")
        yield endpoint
        assert proc.poll() is None, f"the endpoint died:\n{endpoint.log()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        scratch.cleanup()
    # A graceful stop is a clean exit.
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]
    log_path.unlink()


def _wait_listening(proc: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"promote serve exited {proc.returncode}:\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("promote serve never listened")


def _wait_until(condition, timeout: float, why=lambda: "timed out") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(why())


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample, or None when it is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if sample.split("{", 1)[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


# -- predictions ---------------------------------------------------------------------------------


def test_predictions_match_the_model_loaded_directly(tracking_uri, client, model_name):
    import mlflow
    import pandas as pd

    version = log_version(model_name, "a")
    client.set_registered_model_alias(model_name, "Production", version)
    direct = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    want = [float(v) for v in direct.predict(frame)]
    assert want == pytest.approx(expected("a"))

    with serving(tracking_uri, model_name, "--poll-interval", "30") as endpoint:
        payloads = [
            split_payload(),
            {"dataframe_records": [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]},
            {"inputs": {c: [row[i] for row in ROWS] for i, c in enumerate(COLUMNS)}},
        ]
        for payload in payloads:
            r = endpoint.post(payload)
            assert r.status_code == 200, r.text
            assert r.headers["X-Model-Version"] == version
            assert r.json()["predictions"] == want  # exactly what pyfunc itself returns
        csv = "x1,x2\n" + "\n".join(f"{a},{b}" for a, b in ROWS) + "\n"
        r = endpoint.post(None, content=csv, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200 and r.json()["predictions"] == want

        doc = endpoint.get("/version").json()
        assert doc["model"] == model_name and doc["alias"] == "Production"
        assert doc["version"] == version and doc["alias_version"] == version
        assert doc["in_sync"] is True and doc["last_error"] is None
        assert doc["loaded_at"] and doc["serving_since"]
        assert doc["run_id"] == client.get_model_version(model_name, version).run_id
        health = endpoint.get("/health")
        assert health.status_code == 200 and health.json()["version"] == version

        text = endpoint.get("/metrics").text
        assert metric(text, "promote_serve_requests_total", version=version, status="200") == 4
        assert metric(text, "promote_serve_request_duration_seconds_count", version=version) == 4
        assert metric(text, "promote_serve_model_version", model=model_name) == float(version)
        assert metric(text, "promote_serve_model_info", version=version) == 1
        assert metric(text, "promote_serve_in_sync") == 1


# -- batching ------------------------------------------------------------------------------------


def _rows(client: int, k: int) -> list[list[float]]:
    """Client `client`'s k-th request: 1 to 4 rows no other request has."""
    return [[float(client), k + j / 10] for j in range(1 + (client + k) % 4)]


async def _clients(url: str, clients: int, requests: int) -> list[tuple[list, httpx.Response]]:
    async def one(http: httpx.AsyncClient, c: int) -> list[tuple[list, httpx.Response]]:
        out = []
        for k in range(requests):
            rows = _rows(c, k)
            out.append((rows, await http.post(url, json=split_payload(rows))))
        return out

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        answers = await asyncio.gather(*(one(http, c) for c in range(clients)))
    return [a for each in answers for a in each]


def test_concurrent_clients_each_get_their_own_rows_from_merged_batches(tracking_uri, client,
                                                                        model_name):
    version = log_version(model_name, "a")
    client.set_registered_model_alias(model_name, "Production", version)
    with serving(tracking_uri, model_name, "--poll-interval", "30") as endpoint:
        url = endpoint.url + "/invocations"

        def in_process() -> float:
            text = endpoint.get("/metrics").text
            return metric(text, "promote_serve_batch_calls_total", version=version,
                          where="process") or 0.0

        # The scoring process loads the version after the first batch: until then batches are
        # scored in the endpoint's own process. Both must answer the same.
        deadline = time.monotonic() + 120
        rounds = 0
        while True:
            answers = asyncio.run(_clients(url, 32, 6))
            rounds += 1
            for rows, answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.headers["X-Model-Version"] == version
                assert answer.json()["predictions"] == pytest.approx(expected("a", rows))
            if (in_process() > 0 and rounds >= 2) or time.monotonic() > deadline:
                break
        assert in_process() > 0, endpoint.log()[-3000:]
        text = endpoint.get("/metrics").text
        calls = metric(text, "promote_serve_batch_requests_count", version=version)
        merged = metric(text, "promote_serve_batch_requests_sum", version=version)
        assert merged == 32 * 6 * rounds
        assert calls is not None and calls < merged  # some calls scored several requests
        assert metric(text, "promote_serve_batch_rows_sum", version=version) == sum(
            len(_rows(c, k)) for c in range(32) for k in range(6)) * rounds


# -- following the alias under load ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None
    predictions: list | None
    sent: float  # time.monotonic() when the request was sent
    received: float  # ... and when its answer arrived
    error: str | None = None


async def _one(http: httpx.AsyncClient, url: str) -> Answer:
    sent = time.monotonic()
    try:
        r = await http.post(url, json=split_payload())
    except httpx.HTTPError as exc:
        return Answer(0, None, None, sent, time.monotonic(), f"{type(exc).__name__}: {exc}")
    body = r.json() if r.status_code == 200 else None
    return Answer(r.status_code, r.headers.get("X-Model-Version"),
                  body["predictions"] if body else None, sent, time.monotonic(),
                  None if r.status_code == 200 else r.text)


@dataclass(frozen=True)
class Move:
    monotonic: float
    wall: float


def burst_across_move(endpoint: Endpoint, move, new_version: str, concurrency: int = 500,
                      timeout: float = 120) -> tuple[list[Answer], Move]:
    """Keep `concurrency` requests in flight at every instant while `move()` re-points the alias.

    Each of `concurrency` clients sends its next request as soon as the previous one is answered,
    so the swap necessarily happens under that load. The alias moves once every client has a
    request in flight; the burst ends once a request sent well after the new version first
    answered has been answered too.
    """
    moved: list[Move] = []
    answers: list[Answer] = []
    first_new: list[float] = []  # when the new version first answered
    started = asyncio.Event()
    clients_started = 0

    def finished() -> bool:
        return bool(first_new) and any(a.version == new_version and a.sent > first_new[0] + 0.3
                                       for a in answers[-concurrency:])

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        url = endpoint.url + "/invocations"
        deadline = time.monotonic() + timeout

        async def client(http: httpx.AsyncClient) -> None:
            nonlocal clients_started
            clients_started += 1
            if clients_started == concurrency:
                started.set()
            while not finished() and time.monotonic() < deadline:
                answer = await _one(http, url)
                answers.append(answer)
                if answer.version == new_version and not first_new:
                    first_new.append(answer.received)

        async def mover() -> None:
            await started.wait()
            await asyncio.sleep(0.2)  # every client's first request is on the wire
            await asyncio.to_thread(move)
            moved.append(Move(time.monotonic(), time.time()))

        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            await asyncio.gather(mover(), *(client(http) for _ in range(concurrency)))

    asyncio.run(scenario())
    assert moved, "the alias was never moved"
    assert finished(), f"the new version never answered ({len(answers)} answers)"
    return answers, moved[0]


def check_swap(endpoint: Endpoint, answers: list[Answer], old: tuple[str, str],
               new: tuple[str, str], moved: Move, poll_interval: float) -> None:
    (old_version, old_kind), (new_version, new_kind) = old, new
    failures = [a for a in answers if a.status != 200]
    assert not failures, (f"{len(failures)} of {len(answers)} requests failed: {failures[:3]}\n"
                          f"{endpoint.log()[-3000:]}")
    assert {a.version for a in answers} == {old_version, new_version}
    # Every answer was scored entirely by the version its header names.
    for a in answers:
        kind = old_kind if a.version == old_version else new_kind
        assert a.predictions == pytest.approx(expected(kind)), a

    doc = endpoint.get("/version").json()
    assert doc["version"] == new_version and doc["in_sync"] is True
    swapped_wall = datetime.fromisoformat(doc["serving_since"]).timestamp()
    # The endpoint serves the new version within two poll intervals of the move.
    assert swapped_wall - moved.wall <= 2 * poll_interval, (
        f"swapped {swapped_wall - moved.wall:.2f} s after the move (poll interval "
        f"{poll_interval} s)\n{endpoint.log()[-2000:]}")
    swapped = moved.monotonic + (swapped_wall - moved.wall)
    # The swap happened under the burst: 500 requests sent before it were answered after it...
    in_flight = [a for a in answers if a.sent < swapped < a.received]
    assert len(in_flight) >= 500, len(in_flight)
    # ... some of them on the old version (they were being scored when it was swapped out) ...
    assert any(a.version == old_version for a in in_flight)
    # ... and requests sent after the swap never reach the old version again (the margin covers
    # the instant between reading the clock and the swap itself).
    late = [a for a in answers if a.sent > swapped + 0.2]
    assert late and all(a.version == new_version for a in late)


POLL = 3.0


def write_policy(tmp_path: Path, model: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""\
model: {model}
alias: Production
when_no_production: promote
metrics:
  score:
    goal: maximize
    min: 0
    min_improvement: 0.5
""")
    return str(path)


def gate(policy: str, version: str) -> None:
    assert run(["gate", policy, "--candidate", version]) == ExitCode.OK


def test_follows_a_gate_promotion_and_500_concurrent_requests_see_no_error(
        tracking_uri, client, model_name, tmp_path):
    v1, v2 = log_version(model_name, "a", score=1.0), log_version(model_name, "b", score=2.0)
    policy = write_policy(tmp_path, model_name)
    gate(policy, v1)

    with serving(tracking_uri, model_name, "--poll-interval", str(POLL)) as endpoint:
        answers, moved = burst_across_move(endpoint, lambda: gate(policy, v2), v2)
        check_swap(endpoint, answers, (v1, "a"), (v2, "b"), moved, POLL)

        doc = endpoint.get("/version").json()
        assert doc["swaps"] == 1 and doc["last_error"] is None
        text = endpoint.get("/metrics").text
        for version in (v1, v2):
            assert metric(text, "promote_serve_requests_total", version=version,
                          status="200") == sum(a.version == version for a in answers)
        assert metric(text, "promote_serve_swaps_total") == 1
        assert "Traceback" not in endpoint.log()


def test_follows_a_rollback_and_500_concurrent_requests_see_no_error(
        tracking_uri, client, model_name, tmp_path):
    v1, v2 = log_version(model_name, "a", score=1.0), log_version(model_name, "b", score=2.0)
    policy = write_policy(tmp_path, model_name)
    gate(policy, v1)
    gate(policy, v2)

    with serving(tracking_uri, model_name, "--poll-interval", str(POLL)) as endpoint:
        assert endpoint.post(split_payload()).headers["X-Model-Version"] == v2
        answers, moved = burst_across_move(
            endpoint, lambda: run(["rollback", model_name]) == ExitCode.OK or pytest.fail(), v1)
        check_swap(endpoint, answers, (v2, "b"), (v1, "a"), moved, POLL)
        assert client.get_model_version_by_alias(model_name, "Production").version == v1


# -- a broken version never replaces a working one -------------------------------------------


def test_a_version_with_broken_artifacts_does_not_replace_a_working_one(tracking_uri, client,
                                                                         model_name):
    good = log_version(model_name, "a")
    client.set_registered_model_alias(model_name, "Production", good)
    broken = log_broken_version(client, model_name, good)

    with serving(tracking_uri, model_name, "--poll-interval", "0.5") as endpoint:
        client.set_registered_model_alias(model_name, "Production", broken)
        _wait_until(lambda: (endpoint.get("/version").json()["last_error"] or {})
                    .get("version") == broken, 60, lambda: endpoint.log()[-3000:])

        doc = endpoint.get("/version").json()
        assert doc["version"] == good and doc["alias_version"] == broken
        assert doc["in_sync"] is False
        assert f"version {broken}" in doc["last_error"]["message"]
        assert f"still serving version {good}" in doc["last_error"]["message"]
        assert endpoint.get("/health").status_code == 200
        r = endpoint.post(split_payload())
        assert r.status_code == 200 and r.headers["X-Model-Version"] == good
        assert r.json()["predictions"] == pytest.approx(expected("a"))
        text = endpoint.get("/metrics").text
        assert metric(text, "promote_serve_load_failures_total") >= 1
        assert metric(text, "promote_serve_in_sync") == 0
        assert f"cannot load {model_name} version {broken}" in endpoint.log()

        # It keeps following: a good version promoted after the broken one is served.
        fixed = log_version(model_name, "c")
        client.set_registered_model_alias(model_name, "Production", fixed)
        _wait_until(lambda: endpoint.post(split_payload()).headers["X-Model-Version"] == fixed,
                    60, lambda: endpoint.log()[-3000:])
        assert endpoint.post(split_payload()).json()["predictions"] == pytest.approx(expected("c"))
        assert endpoint.get("/version").json()["in_sync"] is True


def test_an_endpoint_whose_first_version_is_broken_stays_unready_then_recovers(
        tracking_uri, client, model_name):
    good = log_version(model_name, "a")
    broken = log_broken_version(client, model_name, good)
    client.set_registered_model_alias(model_name, "Production", broken)

    with serving(tracking_uri, model_name, "--poll-interval", "0.5", ready=False) as endpoint:
        _wait_until(lambda: endpoint.get("/version").json()["last_error"] is not None, 120,
                    lambda: endpoint.log()[-3000:])
        assert endpoint.get("/health").status_code == 503
        r = endpoint.post(split_payload())
        assert r.status_code == 503 and "no model version is loaded" in r.json()["message"]
        client.set_registered_model_alias(model_name, "Production", good)
        _wait_until(lambda: endpoint.get("/health").status_code == 200, 60,
                    lambda: endpoint.log()[-3000:])
        assert endpoint.post(split_payload()).headers["X-Model-Version"] == good


# -- bad requests: 4xx with a clear message, never a 500, never a crash ----------------------


LIMIT = 100_000


@pytest.fixture(scope="module")
def bad_request_endpoint(mlflow_server: str) -> Iterator[Endpoint]:
    import mlflow
    from mlflow import MlflowClient

    name = f"t-bad-requests-{uuid.uuid4().hex[:8]}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        version = log_version(name, "a")
        MlflowClient(mlflow_server).set_registered_model_alias(name, "Production", version)
    finally:
        mlflow.set_tracking_uri(previous)
    with serving(mlflow_server, name, "--poll-interval", "60",
                 "--max-body-bytes", str(LIMIT)) as endpoint:
        yield endpoint
        assert "Traceback" not in endpoint.log(), endpoint.log()[-3000:]


def _huge_rows() -> bytes:
    return (b'{"dataframe_split": {"columns": ["x1", "x2"], "data": ['
            + b",".join(b"[1.0, 2.0]" for _ in range(LIMIT // 8)) + b"]}}")


def _chunks(data: bytes, size: int = 8192):
    for i in range(0, len(data), size):
        yield data[i:i + size]


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = {
    # name: (request kwargs, status, words the message must contain)
    "malformed-json": (dict(content=b'{"dataframe_split": {', headers=JSON), 400, "malformed JSON"),
    "not-utf8": (dict(content=b'{"inputs": "\xff\xfe"}', headers=JSON), 400, "UTF-8"),
    "empty-body": (dict(content=b"", headers=JSON), 400, "empty"),
    "blank-body": (dict(content=b"  \n", headers=JSON), 400, "empty"),
    "not-an-object": (dict(json=[[1, 2]]), 400, "JSON object"),
    "unknown-format": (dict(json={"rows": [[1, 2]]}), 400, "found: rows"),
    "two-formats": (dict(json={"inputs": [[1, 2]], "dataframe_records": []}), 400, "exactly one"),
    "missing-column": (dict(json={"dataframe_records": [{"x1": 1.0}]}), 400, "missing inputs"),
    "wrong-column-names": (dict(json={"dataframe_split": {"columns": ["a", "b"],
                                                          "data": [[1, 2]]}}), 400, "missing"),
    "wrong-type": (dict(json={"dataframe_records": [{"x1": "abc", "x2": 1.0}]}), 400,
                   "x1"),
    "ragged-rows": (dict(json={"dataframe_split": {"columns": COLUMNS, "data": [[1.0]]}}), 400,
                    "columns"),
    "split-not-a-dict": (dict(json={"dataframe_split": [1, 2]}), 400, "dictionary"),
    "null-value": (dict(json={"dataframe_records": [{"x1": None, "x2": 1.0}]}), 400, "NaN"),
    "no-rows": (dict(json={"dataframe_records": []}), 400, "missing inputs"),
    "params-not-object": (dict(json={**split_payload(), "params": [1]}), 400, "params"),
    "unsupported-content-type": (dict(content=b"x1=1", headers={"Content-Type": "text/plain"}),
                                 415, "not supported"),
    "bad-charset": (dict(content=b"{}", headers={"Content-Type": "application/json; "
                                                 "charset=latin-1"}), 415, "UTF-8"),
    "bad-csv": (dict(content=b'x1,x2\n"unclosed', headers={"Content-Type": "text/csv"}), 400,
                "CSV"),
    "huge-body": (dict(content=_huge_rows(), headers=JSON), 413, "limit"),
    "huge-chunked-body": (dict(content=_chunks(_huge_rows()), headers=JSON), 413, "limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_clear_4xx(bad_request_endpoint: Endpoint, case: str):
    kwargs, status, words = BAD_REQUESTS[case]
    endpoint = bad_request_endpoint
    if case == "huge-chunked-body":
        assert "content-length" not in httpx.Request("POST", "http://x", **kwargs).headers
    before = metric(endpoint.get("/metrics").text, "promote_serve_requests_total",
                    status=str(status)) or 0
    r = httpx.post(endpoint.url + "/invocations", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["message"], body
    assert body["error_code"] and len(body["message"]) <= 1100
    # Still alive and still serving after it.
    ok = endpoint.post(split_payload())
    assert ok.status_code == 200 and ok.json()["predictions"] == pytest.approx(expected("a"))
    after = metric(endpoint.get("/metrics").text, "promote_serve_requests_total",
                   status=str(status))
    assert after == before + 1


def test_a_body_just_under_the_limit_is_scored(bad_request_endpoint: Endpoint):
    rows = [[1.0, 2.0]] * 1000
    r = bad_request_endpoint.post(split_payload(rows))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1000


# -- start-up fails closed ----------------------------------------------------------------------


def test_unknown_model_or_alias_fails_at_start_with_exit_2(tracking_uri, client, model_name,
                                                           capsys):
    assert run(["serve", model_name, "--port", "0"]) == ExitCode.INVALID_INPUT
    assert model_name in capsys.readouterr().err
    version = log_version(model_name, "a")
    client.set_registered_model_alias(model_name, "Production", version)
    assert run(["serve", model_name, "--alias", "Canary", "--port", "0"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert "Canary" in err and "not found" in err
    # Serving only reads: the registry is exactly as it was.
    assert client.get_model_version_by_alias(model_name, "Production").version == version
    assert [v.version for v in client.search_model_versions(f"name = '{model_name}'")] == [version]
    assert client.get_registered_model(model_name).aliases == {"Production": version}


def test_unreachable_registry_fails_at_start_with_exit_3_and_no_credentials(capsys):
    import mlflow

    try:
        code = run(["--tracking-uri", "http://alice:s3cret@127.0.0.1:9", "serve", "m",
                    "--port", "0"])
    finally:
        mlflow.set_tracking_uri("http://127.0.0.1:9")  # connect() made it process-wide
    assert code == ExitCode.REGISTRY
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "s3cret" not in err and "alice" not in err


def test_a_port_in_use_fails_at_start_with_exit_2(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert run(["serve", "m", "--port", str(port)]) == ExitCode.INVALID_INPUT
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_help_needs_no_mlflow():
    code = ("import sys; from promotion.cli import run; rc = run(['serve', '--help']); "
            "print('RC', rc, 'HEAVY', any(m in sys.modules for m in ('mlflow', 'fastapi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "RC 0 HEAVY False" in out and "X-Model-Version" in out


@pytest.mark.parametrize(("args", "words"), [
    (["--poll-interval", "0"], "--poll-interval"),
    (["--port", "70000"], "--port"),
    (["--max-body-bytes", "-1"], "--max-body-bytes"),
    (["--alias", " "], "--alias"),
])
def test_bad_options_are_invalid_input(args, words, capsys):
    assert run(["serve", "m", *args]) == ExitCode.INVALID_INPUT
    assert words in capsys.readouterr().err
