"""Several models from one `promote serve` process, against the real MLflow test server: each
follows its own alias, a pinned version never moves, lazy models load on their first request and
the least recently used one is evicted under a small memory budget.

Three LinearRegression runs with different coefficients (test_serve.COEFS) are logged once; each
registered model here gets its versions from them (one registry call each), so the served
version shows in the predictions themselves.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from test_serve import (
    COEFS,
    COLUMNS,
    Endpoint,
    _wait_until,
    expected,
    metric,
    serving,
    split_payload,
)

pytestmark = pytest.mark.mlflow

POLL = "0.5"


@dataclass(frozen=True)
class Runs:
    """A logged model per coefficient kind (a, b, c): its URI, run and logged-model ids."""

    uris: dict[str, tuple[str, str, str]]
    footprint: int  # the bytes of one model directory on disk (0: not measured)

    def register(self, client, model: str, kind: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        uri, run_id, model_id = self.uris[kind]
        return str(client.create_model_version(model, uri, run_id=run_id, model_id=model_id,
                                               await_creation_for=0).version)


def log_runs(server: str, kinds: str = "abc", measure: bool = True) -> Runs:
    """Log a model of each of `kinds` once, on `server`."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    from promotion.registry.models import artifact_bytes

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    try:
        x = pd.DataFrame(np.random.default_rng(0).normal(size=(20, 2)), columns=COLUMNS)
        mlflow.set_experiment("promote-serve-tests")
        uris = {}
        for kind in kinds:
            (c1, c2), b = COEFS[kind]
            model = LinearRegression().fit(x, c1 * x["x1"] + c2 * x["x2"] + b)
            with mlflow.start_run():
                info = mlflow.sklearn.log_model(model, name="model",
                                                signature=infer_signature(x, model.predict(x)),
                                                pip_requirements=["scikit-learn"])
            uris[kind] = (info.model_uri, info.run_id, info.model_id)
        footprint = 0
        if measure:
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(uris[kinds[0]][0], dst_path=tmp)
                footprint = artifact_bytes(Path(local))
    finally:
        mlflow.set_tracking_uri(previous)
    return Runs(uris, footprint)


def invoke(endpoint: Endpoint, model: str):
    import httpx

    return httpx.post(f"{endpoint.url}/models/{model}/invocations", json=split_payload(),
                      timeout=60)


def served_kind(endpoint: Endpoint, model: str) -> tuple[str, str]:
    """(the version that answered, the coefficient kind its predictions match)."""
    r = invoke(endpoint, model)
    assert r.status_code == 200, r.text
    kind = next(k for k in "abc" if r.json()["predictions"] == pytest.approx(expected(k)))
    return r.headers["X-Model-Version"], kind


@dataclass
class Fleet:
    endpoint: Endpoint
    names: dict[str, str]  # role -> registered model name
    runs: Runs
    log: Path  # the inference log (SQLite)


@pytest.fixture(scope="module")
def fleet(mlflow_server: str, tmp_path_factory) -> Iterator[Fleet]:
    """One endpoint: `alpha` and `beta@Staging` required, `gamma/1` pinned and lazy, `delta`
    lazy; a budget that holds the required models and one lazy model, not two."""
    from mlflow import MlflowClient

    runs = log_runs(mlflow_server)
    client = MlflowClient(mlflow_server, mlflow_server)
    tag = uuid.uuid4().hex[:8]
    names = {role: f"t-multi-{role}-{tag}" for role in ("alpha", "beta", "gamma", "delta")}
    for role, alias, kind in (("alpha", "Production", "a"), ("beta", "Staging", "b"),
                              ("gamma", "Production", "c"), ("delta", "Production", "a")):
        client.set_registered_model_alias(names[role], alias,
                                          runs.register(client, names[role], kind))
    budget = str(int(runs.footprint * 3.5))
    scratch = tmp_path_factory.mktemp("multi")
    log = scratch / "log.db"
    with serving(mlflow_server, names["alpha"], f"{names['beta']}@Staging",
                 f"{names['gamma']}/1", names["delta"], "--lazy", names["gamma"],
                 "--lazy", names["delta"], "--memory-budget", budget, "--poll-interval", POLL,
                 "--cache-dir", str(scratch / "cache"), "--log-uri",
                 f"sqlite:///{log}") as endpoint:
        yield Fleet(endpoint, names, runs, log)
        assert "Traceback" not in endpoint.log(), endpoint.log()[-3000:]


def test_readiness_waits_for_the_required_models_only_and_the_root_names_them(fleet):
    endpoint, names = fleet.endpoint, fleet.names
    health = endpoint.get("/health")
    assert health.status_code == 200
    document = health.json()
    statuses = {m: document["models"][names[m]]["status"] for m in names}
    assert statuses["alpha"] == statuses["beta"] == "ok"
    assert statuses["gamma"] == statuses["delta"] == "unloaded"
    assert document["models"][names["alpha"]]["registry"]["served_from"] == "registry"
    r = endpoint.post(split_payload())
    assert r.status_code == 404 and names["delta"] in r.json()["message"]
    assert "/models/<name>/invocations" in r.json()["message"]
    assert endpoint.get(f"/models/{names['alpha']}/health").json()["version"] == "1"
    assert endpoint.get("/models/nobody/health").status_code == 404


def test_each_model_follows_its_own_alias_and_is_measured_under_its_name(fleet, client):
    endpoint, names, runs = fleet.endpoint, fleet.names, fleet.runs
    alpha, beta = names["alpha"], names["beta"]
    assert served_kind(endpoint, alpha) == ("1", "a")
    assert served_kind(endpoint, beta) == ("1", "b")
    client.set_registered_model_alias(alpha, "Production", runs.register(client, alpha, "b"))
    _wait_until(lambda: served_kind(endpoint, alpha) == ("2", "b"), 60,
                lambda: endpoint.log()[-3000:])
    assert served_kind(endpoint, beta) == ("1", "b")  # its neighbour did not move
    client.set_registered_model_alias(beta, "Staging", runs.register(client, beta, "c"))
    _wait_until(lambda: served_kind(endpoint, beta) == ("2", "c"), 60,
                lambda: endpoint.log()[-3000:])
    assert served_kind(endpoint, alpha) == ("2", "b")
    text = endpoint.get("/metrics").text
    assert metric(text, "promote_serve_model_version", model=alpha) == 2
    assert metric(text, "promote_serve_model_version", model=beta, alias="Staging") == 2
    assert metric(text, "promote_serve_requests_total", model=alpha, version="1",
                  status="200") >= 1
    assert metric(text, "promote_serve_requests_total", model=beta, version="2",
                  status="200") >= 1
    assert metric(text, "promote_serve_swaps_total", model=alpha) == 1
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # one exposition: each family once
    version = endpoint.get("/version").json()
    assert version["models"][alpha]["version"] == "2"
    assert version["models"][beta]["alias"] == "Staging"


def test_a_pinned_model_never_swaps_when_its_alias_moves(fleet, client):
    endpoint, names, runs = fleet.endpoint, fleet.names, fleet.runs
    gamma, alpha = names["gamma"], names["alpha"]
    assert served_kind(endpoint, gamma) == ("1", "c")  # lazy: loaded by this request
    moved = time.time()
    client.set_registered_model_alias(gamma, "Production", runs.register(client, gamma, "a"))
    client.set_registered_model_alias(alpha, "Production", runs.register(client, alpha, "c"))
    # Once its neighbour has followed a move made after gamma's, gamma had every chance.
    _wait_until(lambda: served_kind(endpoint, alpha)[1] == "c", 60,
                lambda: endpoint.log()[-3000:])
    assert served_kind(endpoint, gamma) == ("1", "c")
    document = endpoint.get(f"/models/{gamma}/version").json()
    assert document["pinned"] is True and document["alias"] == "v1"
    assert document["swaps"] == 0 and document["alias_version"] == "1"
    # Not polled once loaded: its last check is the one that loaded it.
    assert datetime.fromisoformat(document["checked_at"]).timestamp() < moved


def test_lazy_models_load_on_first_request_and_the_least_recently_used_is_evicted(fleet):
    endpoint, names = fleet.endpoint, fleet.names
    gamma, delta = names["gamma"], names["delta"]

    def memory(model: str) -> dict:
        return endpoint.get(f"/models/{model}/version").json()["memory"]

    def evictions(model: str) -> float:
        return metric(endpoint.get("/metrics").text, "promote_serve_model_evictions_total",
                      model=model) or 0

    served_kind(endpoint, gamma)  # gamma is in memory, and the last used
    before = evictions(gamma)
    assert served_kind(endpoint, delta) == ("1", "a")  # no room for two: gamma goes
    assert memory(gamma)["resident"] is False and memory(delta)["resident"] is True
    assert evictions(gamma) == before + 1
    assert endpoint.get("/health").json()["models"][gamma]["status"] == "unloaded"
    assert served_kind(endpoint, gamma) == ("1", "c")  # back, and delta goes
    assert memory(delta)["resident"] is False and evictions(delta) >= 1
    document = endpoint.get("/version").json()["memory"]
    assert document["budget_bytes"] == int(fleet.runs.footprint * 3.5)
    assert document["used_bytes"] <= document["budget_bytes"]
    assert memory(gamma)["footprint_bytes"] > 0
    # The required models never left.
    assert endpoint.get("/health").status_code == 200


def test_the_inference_log_files_each_request_under_its_model(fleet):
    import sqlite3

    import httpx

    endpoint, names = fleet.endpoint, fleet.names
    sent = {}
    for role in ("beta", "gamma"):
        rid = f"multi-{role}-{uuid.uuid4().hex[:8]}"
        r = httpx.post(f"{endpoint.url}/models/{names[role]}/invocations", json=split_payload(),
                       headers={"X-Request-Id": rid}, timeout=60)
        assert r.status_code == 200, r.text
        sent[rid] = (names[role], "Staging" if role == "beta" else "v1",
                     r.headers["X-Model-Version"])

    def logged() -> dict:
        with sqlite3.connect(fleet.log) as db:
            found = db.execute("SELECT request_id, model, alias, version FROM inference_requests"
                               " WHERE request_id IN (?, ?)", list(sent)).fetchall()
        return {rid: (model, alias, version) for rid, model, alias, version in found}

    _wait_until(lambda: logged() == sent, 30, lambda: f"{logged()} != {sent}")
