"""`promote watch` end to end: a real MLflow server, a real inference log (SQLite; PostgreSQL
once), versions promoted by the real gate, and the rollback through the guarded path."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import add_version, aliases, decision_tag, rmse_policy, snapshot

from promotion.cli import run
from promotion.engine import watch as engine_watch
from promotion.engine.results import WatchNotApplied
from promotion.errors import ConflictError, LogUnavailable
from promotion.gate import run_gate
from promotion.gate import watch as watch_service
from promotion.gate.status import read_history
from promotion.gate.watch import WATCH_TAG, run_watch
from promotion.monitoring.logstore import LogStore, RequestRecord
from promotion.monitoring.profile import build_profile
from promotion.policy.model import Margin, Watch, WatchRule
from promotion.registry import profiles
from promotion.report.watch import markdown, table

pytestmark = pytest.mark.mlflow

RULES = (WatchRule("error_rate", max=0.05),
         WatchRule("latency_p95_ms", max=100.0),
         WatchRule("prediction_psi", max=0.25),
         WatchRule("feature_psi", max=0.25),
         WatchRule("rmse", max_regression=Margin(0.2, relative=True)))
RNG = np.random.default_rng(7)
REFERENCE = pd.DataFrame({"age": RNG.normal(50, 10, 2000), "bmi": RNG.normal(25, 4, 2000)})


def predict(frame: pd.DataFrame) -> np.ndarray:
    return (frame["age"] * 2 + frame["bmi"]).to_numpy()


def watched(model: str, **kwargs) -> object:
    w = Watch(rules=kwargs.pop("rules", RULES), bake_seconds=kwargs.pop("bake", 7200),
              window_seconds=900, min_requests=50, min_labels=20, **kwargs)
    return rmse_policy(model, watch=w)


def promoted_pair(client, model: str) -> tuple[str, str]:
    """v1 then v2 promoted by the real gate; each version's run carries a reference profile."""
    versions = []
    for rmse in (0.9, 0.5):
        version = add_version(client, model, {"rmse": rmse})
        mv = client.get_model_version(model, version)
        profiles.save_profile(client, mv.run_id, build_profile(
            REFERENCE, predict(REFERENCE), source="test reference").to_json())
        run_gate(client, rmse_policy(model), candidate=None)
        versions.append(version)
    assert aliases(client, model) == {"Production": versions[1],
                                      "Production-previous": versions[0]}
    return versions[0], versions[1]


def traffic(store: LogStore, model: str, version: str, n: int, *, shift: float = 0.0,
            errors: int = 0, latency: float = 5.0, at: float | None = None) -> list[str]:
    """`n` one-row requests served by `version` in the last minutes; returns their request ids."""
    now = datetime.now(UTC).timestamp() if at is None else at
    frame = pd.DataFrame({"age": RNG.normal(50 + shift, 10, n), "bmi": RNG.normal(25, 4, n)})
    records, ids = [], []
    for i in range(n):
        row = frame.iloc[[i]]
        failed = i < errors
        request_id = uuid.uuid4().hex
        ids.append(request_id)
        records.append(RequestRecord(
            request_id=request_id, at=datetime.fromtimestamp(now - 60 - i * 0.5, UTC),
            model=model, alias="Production", version=version, rows=1,
            latency_ms=latency + (i % 7), outcome="model_error" if failed else "ok",
            status=500 if failed else 200, inputs=None if failed else row,
            predictions=None if failed else predict(row)))
    store.write(records)
    return ids


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    log = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    log.migrate()
    yield log
    log.close()


def test_a_healthy_window_moves_nothing_and_logs_its_metrics(client, model_name, store):
    _, v2 = promoted_pair(client, model_name)
    # 400 rows: the PSI of an unchanged column from sampling noise alone stays far below 0.25
    # (expected about (bins - 1) * (1/2000 + 1/400) = 0.03).
    traffic(store, model_name, v2, 400)
    before = aliases(client, model_name)
    result = run_watch(client, watched(model_name, rules=RULES[:-1]), store)
    assert result.outcome == "healthy" and result.return_code == 0
    assert result.action == "none" and result.rollback is None
    assert aliases(client, model_name) == before
    logged = client.get_run(result.monitoring_run_id).data.metrics
    assert logged["requests"] == 400 and logged["breaches"] == 0
    assert "feature_psi/age" in logged and logged["prediction_psi"] < 0.25
    artifacts = {f.path for f in client.list_artifacts(result.monitoring_run_id, "watch")}
    assert artifacts == {"watch/chart.png", "watch/watch.json", "watch/watch.md"}
    assert result.chart_png.startswith(b"\x89PNG")
    # A second watch adds a point to each series: the UI draws them over time.
    again = run_watch(client, watched(model_name, rules=RULES[:-1]), store,
                      now=result.window_end + 60)
    assert again.monitoring_run_id == result.monitoring_run_id
    history = client.get_metric_history(result.monitoring_run_id, "requests")
    assert sorted(p.step for p in history) == [int(result.window_end),
                                               int(result.window_end + 60)]
    summary = markdown(again)  # the job summary draws them too, as text
    assert re.search(r"^requests +\S{2}  last 400 \(min 400, max 400, 2 windows\)$", summary,
                     re.M), summary


def test_insufficient_data_never_rolls_back(client, model_name, store):
    _, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 30, errors=30)  # every request failed, but only 30 of them
    result = run_watch(client, watched(model_name), store)
    assert result.outcome == "insufficient_data" and result.return_code == 0
    assert aliases(client, model_name)["Production"] == v2


def test_a_breach_in_the_bake_period_rolls_back_and_is_recorded(client, model_name, store):
    v1, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 120, shift=40.0)  # the inputs moved: drift on age and output
    result = run_watch(client, watched(model_name), store)
    assert result.outcome == "breach" and result.action == "rollback"
    assert result.return_code == 1
    assert {c.rule for c in result.decision.breached} == {"prediction_psi", "feature_psi"}
    assert "worst: age" in next(c.reason for c in result.decision.breached
                                if c.rule == "feature_psi")
    assert aliases(client, model_name) == {"Production": v1, "Production-previous": v2}
    assert decision_tag(client, model_name, v1) == "restored"
    assert decision_tag(client, model_name, v2) == "rolled_back"
    latest = read_history(client, model_name, limit=1).entries[0]
    assert latest.kind == "watch" and latest.outcome == "rollback"
    assert "prediction_psi" in latest.reason and latest.candidate_version == v1
    files = client.list_artifacts(latest.run_id)
    assert {"watch.json", "watch.md"} <= {f.path for f in files}


def test_a_breach_after_the_bake_period_only_alerts(client, model_name, store):
    _, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 120, errors=20)
    result = run_watch(client, watched(model_name, bake=0), store)
    assert result.outcome == "breach" and result.action == "alert"
    assert result.return_code == 1 and result.record_run_id
    assert aliases(client, model_name)["Production"] == v2
    assert "bake period" in result.decision.why_not_rollback
    tags = client.get_model_version(model_name, v2).tags
    assert tags["promotion.decision"] == "promoted"  # the gate's decision stands
    assert "error_rate" in tags[WATCH_TAG]
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome) == ("watch", "alert")


def test_a_dry_run_writes_nothing(client, model_name, store):
    _, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 120, errors=20)
    before = snapshot(client, model_name)
    result = run_watch(client, watched(model_name), store, dry_run=True)
    assert result.outcome == "breach" and result.action == "rollback"
    assert result.rollback is None and result.monitoring_run_id is None
    assert snapshot(client, model_name) == before


def test_the_alias_moved_between_read_and_write_is_a_conflict(client, model_name, store,
                                                              monkeypatch):
    v1, v2 = promoted_pair(client, model_name)
    v3 = add_version(client, model_name, {"rmse": 0.3})
    traffic(store, model_name, v2, 120, errors=20)
    real_judge = engine_watch.judge

    def judge_then_someone_moves_the_alias(watch, facts):
        client.set_registered_model_alias(model_name, "Production", v3)
        return real_judge(watch, facts)

    monkeypatch.setattr(watch_service, "judge", judge_then_someone_moves_the_alias)
    with pytest.raises(WatchNotApplied, match="nothing was moved") as stopped:
        run_watch(client, watched(model_name), store)
    assert isinstance(stopped.value.cause, ConflictError) and stopped.value.exit_code == 3
    assert stopped.value.result.action == "rollback-not-applied"
    assert "moved nothing" in table(stopped.value.result)
    assert aliases(client, model_name) == {"Production": v3, "Production-previous": v1}


def test_quality_from_late_labels_breaches_against_the_offline_value(client, model_name,
                                                                      store, tmp_path):
    _, v2 = promoted_pair(client, model_name)  # v2 logged rmse 0.5 offline
    ids = traffic(store, model_name, v2, 80)
    logged = store.labelled(model_name, v2, datetime.fromtimestamp(0, UTC),
                            datetime.now(UTC))
    assert len(logged[0]) == 0  # no label yet
    rows = store.iter_rows(model_name, v2, datetime.fromtimestamp(0, UTC), datetime.now(UTC))
    predictions = np.concatenate([p for _, p in rows])
    labels = pd.DataFrame({"request_id": ids[::-1], "label": predictions[::-1] + 3.0})
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    assert run(["feedback", model_name, str(path), "--log-uri", store.where]) == 0
    policy = watched(model_name, rules=(RULES[-1],))
    result = run_watch(client, policy, store)
    (check,) = result.decision.checks
    assert check.rule == "rmse" and check.live == pytest.approx(3.0)
    assert check.reference == 0.5 and check.status == "breach"


def test_log_database_down_is_exit_3_and_nothing_moves(client, model_name, tmp_path, capsys):
    _, v2 = promoted_pair(client, model_name)
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({
        "model": model_name, "metrics": {"rmse": {"goal": "minimize", "max": 1.0}},
        "watch": {"rules": {"error_rate": {"max": "1%"}}}}))
    before = aliases(client, model_name)
    dead = "postgresql://postgres@127.0.0.1:1/nowhere"
    code = run(["watch", str(policy), "--log-uri", dead, "--json"])
    err = capsys.readouterr().err
    assert code == 3 and "nothing moved" in err and f"still on version {v2}" in err
    assert aliases(client, model_name) == before
    with pytest.raises(LogUnavailable):
        run_watch(client, watched(model_name), LogStore(dead))


def test_cli_json_and_exit_codes(client, model_name, store, tmp_path, capsys):
    _, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 120)
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({
        "model": model_name, "metrics": {"rmse": {"goal": "minimize", "max": 1.0}},
        "watch": {"min_requests": 50, "rules": {"error_rate": {"max": "1%"}}}}))
    reports = tmp_path / "reports"
    assert run(["watch", str(policy), "--log-uri", store.where, "--json", "--dry-run",
                "--report-dir", str(reports)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert json.loads((reports / "watch.json").read_text()) == document
    assert "| error_rate max |" in (reports / "watch.md").read_text()
    assert document["schema_version"] == 1 and document["kind"] == "watch"
    assert document["outcome"] == "healthy" and document["version"] == v2
    assert document["live"]["requests"] == 120
    no_watch = tmp_path / "plain.yaml"
    no_watch.write_text(yaml.safe_dump({"model": model_name,
                                        "metrics": {"rmse": {"goal": "minimize", "max": 1.0}}}))
    assert run(["watch", str(no_watch), "--log-uri", store.where]) == 2
    assert "no 'watch:' block" in capsys.readouterr().err


def test_no_version_behind_the_alias_is_insufficient_data(client, model_name, store):
    add_version(client, model_name, {"rmse": 0.5})
    result = run_watch(client, watched(model_name), store)
    assert result.outcome == "insufficient_data" and result.return_code == 0
    assert "nothing to watch" in result.note


def test_on_a_postgresql_log(client, model_name, postgres_log):
    _, v2 = promoted_pair(client, model_name)
    traffic(postgres_log, model_name, v2, 120, errors=20)
    result = run_watch(client, watched(model_name, on_breach="alert"), postgres_log)
    assert result.outcome == "breach" and result.action == "alert"
    assert [c.rule for c in result.decision.breached] == ["error_rate"]


@pytest.fixture
def postgres_log():
    import sqlalchemy as sa

    name = f"promote_watch_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    log = LogStore(f"postgresql://postgres@127.0.0.1:5432/{name}")
    log.migrate()
    try:
        yield log
    finally:
        log.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()



def test_every_watches_until_sigterm_then_exits_0(tracking_uri, client, model_name, store,
                                                  tmp_path):
    import signal
    import subprocess
    import sys

    add_version(client, model_name, {"rmse": 0.5})  # the model exists; nothing holds the alias
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({
        "model": model_name, "metrics": {"rmse": {"goal": "minimize", "max": 1.0}},
        "watch": {"rules": {"error_rate": {"max": "1%"}}}}))
    proc = subprocess.Popen([sys.executable, "-m", "promotion", "watch", str(policy), "--every",
                             "1s", "--log-uri", store.where], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    try:
        headlines = 0
        while headlines < 2:  # one headline per window, each followed by the log's URI
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            headlines += "nothing to watch" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()


def test_a_version_without_a_profile_gets_one_from_the_evaluation_set(client, model_name,
                                                                      store, tmp_path):
    """Registered elsewhere (no `promote train`): the first watch profiles it on the policy's
    pinned evaluation set and keeps the profile on the version's monitoring run."""
    import mlflow
    import sklearn
    from sklearn.linear_model import LinearRegression

    from promotion.policy.model import Evaluation

    pinned = Path(__file__).resolve().parent.parent / "policies" / "data" / "diabetes-eval.csv"
    frame = pd.read_csv(pinned)
    x, y = frame.drop(columns="target"), frame["target"]
    fitted = LinearRegression().fit(x, y)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment(model_name)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            fitted, name="model", input_example=x.iloc[:2], registered_model_name=model_name,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, "Production", version)
    now = datetime.now(UTC).timestamp()
    records = [RequestRecord(
        request_id=uuid.uuid4().hex, at=datetime.fromtimestamp(now - 60 - i, UTC),
        model=model_name, alias="Production", version=version, rows=1, latency_ms=3.0,
        outcome="ok", status=200, inputs=x.iloc[[i % len(x)]],
        predictions=fitted.predict(x.iloc[[i % len(x)]])) for i in range(300)]
    store.write(records)
    policy = replace(watched(model_name, rules=(WatchRule("feature_psi", max=1.0),
                                                WatchRule("prediction_psi", max=1.0))),
                     evaluation=Evaluation(data=str(pinned), target="target"))
    first = run_watch(client, policy, store)
    assert first.facts.live.profile == f"computed on {pinned}"
    assert first.outcome == "healthy", first.decision.summary  # the same rows as the profile
    second = run_watch(client, policy, store)
    assert second.facts.live.profile == f"monitoring run {first.monitoring_run_id}"
    assert second.facts.live.feature_psi == first.facts.live.feature_psi


def test_class_labels_and_odd_column_names_are_judged_not_breached(client, model_name, store):
    """A classifier's string predictions are compared as labels (not as missing numbers), and
    a column named like a path is still a metric MLflow takes."""
    frame = pd.DataFrame({"speed km/h/": RNG.normal(50, 10, 3000)})
    labels = np.where(frame["speed km/h/"] > 50, "fast", "slow")
    version = add_version(client, model_name, {"rmse": 0.5})
    run_id = client.get_model_version(model_name, version).run_id
    profiles.save_profile(client, run_id, build_profile(
        frame.iloc[:2000], labels[:2000], source="test reference").to_json())
    run_gate(client, rmse_policy(model_name), candidate=None)
    now = datetime.now(UTC).timestamp()
    store.write([RequestRecord(
        request_id=uuid.uuid4().hex, at=datetime.fromtimestamp(now - 60 - i * 0.1, UTC),
        model=model_name, alias="Production", version=version, rows=1, latency_ms=2.0,
        outcome="ok", status=200, inputs=frame.iloc[[2000 + i]],
        predictions=np.array([labels[2000 + i]], dtype=object)) for i in range(600)])
    policy = watched(model_name, rules=(WatchRule("prediction_psi", max=0.25),
                                        WatchRule("feature_psi", max=0.25),
                                        WatchRule("prediction_ks", max=0.3)))
    result = run_watch(client, policy, store)
    assert [c.status for c in result.decision.checks] == ["pass", "pass", "insufficient"], \
        result.decision.summary
    logged = client.get_run(result.monitoring_run_id).data.metrics
    assert "feature_psi/speed km_h_" in logged


def test_a_held_lease_moves_nothing_and_still_shows_the_breach(client, model_name, store,
                                                               tmp_path, monkeypatch, capsys):
    from promotion.registry import lease

    v1, v2 = promoted_pair(client, model_name)
    traffic(store, model_name, v2, 120, errors=20)
    client.create_registered_model(lease.lease_name(model_name), tags={
        lease.TAG_MODEL: model_name, lease.TAG_HOLDER: "alice@laptop pid 4242",
        lease.TAG_TOKEN: "elsewhere-token",
        lease.TAG_EXPIRES: str(int((datetime.now(UTC).timestamp() + 600) * 1000)),
        lease.TAG_ACQUIRED: "2026-12-01T00:00:00.000Z", lease.TAG_PROCESS: "laptop|x|y|4242",
        lease.TAG_PURPOSE: "gate of @Production"})
    monkeypatch.setenv("PROMOTE_LEASE_WAIT_S", "1")
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({
        "model": model_name, "metrics": {"rmse": {"goal": "minimize", "max": 1.0}},
        "watch": {"min_requests": 50, "rules": {"error_rate": {"max": "5%"}}}}))
    capsys.readouterr()  # what the gates printed
    assert run(["watch", str(policy), "--log-uri", store.where]) == 3
    out, err = capsys.readouterr()
    assert out.startswith(f"BREACH  {model_name}@Production version {v2}") and \
        "moved nothing" in out
    assert f"still on version {v2}; nothing moved" in err and "alice@laptop" in err
    assert aliases(client, model_name) == {"Production": v2, "Production-previous": v1}
