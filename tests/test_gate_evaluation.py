"""`promote gate` with `source: evaluation` rules and budgets, end to end on a real server.

One registered model holds the versions (built once for the module); each test guards an alias
of its own, so the tests never see each other's aliases.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from promotion.cli import run
from promotion.errors import ExitCode

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parent.parent
PINNED = REPO / "policies" / "data" / "diabetes-eval.csv"
POLICIES = Path(__file__).resolve().parent / "data" / "evaluation"


@pytest.fixture(scope="module")
def versions(mlflow_server) -> tuple[str, dict[str, str]]:
    import mlflow
    import sklearn
    import skops.io
    from sklearn.datasets import load_diabetes
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=42)
    name = f"t-gate-evaluation-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(name)
    models = {"constant": DummyRegressor(),
              "forest": RandomForestRegressor(n_estimators=100, max_depth=5, min_samples_leaf=3,
                                              random_state=0),
              "linear": LinearRegression(), "ridge": Ridge(alpha=0.03)}
    numbers = {}
    for label, model in models.items():
        model.fit(x_train, y_train)
        trusted = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model, name="model", input_example=x_train.iloc[:2], registered_model_name=name,
                skops_trusted_types=trusted or None,
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
        numbers[label] = str(info.registered_model_version)
    return name, numbers


@pytest.fixture
def alias() -> str:
    return f"prod-{uuid.uuid4().hex[:10]}"


def _policy(tmp_path: Path, template: str, model: str, alias: str, data: Path = PINNED) -> Path:
    """A copy of a policy in tests/data/evaluation for this model and alias."""
    text = (POLICIES / template).read_text()
    text = text.replace("../../../policies/data/diabetes-eval.csv", str(data))
    text = text.replace("model: diabetes-regressor", f"model: {model}\nalias: {alias}")
    path = tmp_path / template
    path.write_text(text)
    return path


def _gate(capsys, policy: Path, candidate: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = run(["gate", str(policy), "--candidate", candidate, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def _aliases(client, model: str) -> dict[str, str]:
    return dict(client.get_registered_model(model).aliases)


def test_a_significantly_better_candidate_is_promoted_with_fingerprint_and_chart(
        tracking_uri, client, versions, alias, tmp_path, capsys):
    model, v = versions
    client.set_registered_model_alias(model, alias, v["constant"])
    policy = _policy(tmp_path, "fair-regression.yaml", model, alias)

    code, report = _gate(capsys, policy, v["forest"])

    assert code == ExitCode.OK, report.get("reasons")
    assert report["outcome"] == "promoted"
    aliases = _aliases(client, model)
    assert aliases[alias] == v["forest"] and aliases[f"{alias}-previous"] == v["constant"]
    rmse = next(r for r in report["rules"] if r["metric"] == "rmse")
    assert rmse["interval"]["high"] < 0 and rmse["interval"]["confidence"] == 0.95

    pinned_sha = hashlib.sha256(PINNED.read_bytes()).hexdigest()
    assert report["evaluation"] == {"data_sha256": pinned_sha, "rows": 111}
    record = client.get_run(report["record_run_id"])
    assert record.data.tags["promotion.eval_sha256"] == pinned_sha
    assert client.get_model_version(model, v["forest"]).tags["promotion.eval_sha256"] == \
        pinned_sha
    chart = Path(client.download_artifacts(record.info.run_id, "chart.png", str(tmp_path)))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = Path(client.download_artifacts(record.info.run_id, "report.md", str(tmp_path)))
    text = markdown.read_text()
    assert "chart.png" in text
    # The report shows the interval itself, not only the chart.
    low, high = rmse["interval"]["low"], rmse["interval"]["high"]
    assert f"[{low:+.4g}, {high:+.4g}] @95%" in text


def test_a_candidate_within_the_noise_is_inconclusive_and_not_promoted(
        tracking_uri, client, versions, alias, tmp_path, capsys):
    model, v = versions
    client.set_registered_model_alias(model, alias, v["linear"])
    policy = _policy(tmp_path, "fair-regression.yaml", model, alias)

    code, report = _gate(capsys, policy, v["ridge"])

    assert code == ExitCode.REJECTED
    assert report["outcome"] == "inconclusive"
    rmse = next(r for r in report["rules"] if r["metric"] == "rmse")
    assert rmse["inconclusive"] and rmse["difference"] < 0 < rmse["interval"]["high"]
    assert _aliases(client, model)[alias] == v["linear"]
    assert f"{alias}-previous" not in _aliases(client, model)
    record = client.get_run(report["record_run_id"])
    assert record.data.tags["promotion.outcome"] == "inconclusive"
    assert "chart.png" in {a.path for a in client.list_artifacts(record.info.run_id)}


def test_a_worse_candidate_is_rejected(tracking_uri, client, versions, alias, tmp_path, capsys):
    model, v = versions
    client.set_registered_model_alias(model, alias, v["forest"])
    policy = _policy(tmp_path, "fair-regression.yaml", model, alias)

    code, report = _gate(capsys, policy, v["constant"])

    assert code == ExitCode.REJECTED
    assert report["outcome"] == "rejected"
    assert _aliases(client, model)[alias] == v["forest"]


def test_a_budget_breach_rejects(tracking_uri, client, versions, alias, tmp_path, capsys):
    model, v = versions
    client.set_registered_model_alias(model, alias, v["linear"])
    policy = _policy(tmp_path, "budgets.yaml", model, alias)

    code, report = _gate(capsys, policy, v["forest"])

    assert code == ExitCode.REJECTED
    assert report["outcome"] == "rejected"
    failed = {(r["metric"], r["kind"]) for r in report["rules"] if not r["passed"]}
    assert failed == {("latency_p95_ms", "max_increase"), ("size_mb", "max")}
    assert _aliases(client, model)[alias] == v["linear"]


@pytest.mark.parametrize("problem", ["renamed column", "missing values"])
def test_bad_evaluation_input_exits_2_and_moves_nothing(tracking_uri, client, versions, alias,
                                                        tmp_path, capsys, problem):
    model, v = versions
    client.set_registered_model_alias(model, alias, v["constant"])
    frame = pd.read_csv(PINNED)
    if problem == "renamed column":
        frame = frame.rename(columns={"bmi": "body_mass_index"})
    else:
        frame.loc[5, "s3"] = None
    data = tmp_path / "eval.csv"
    frame.to_csv(data, index=False)
    policy = _policy(tmp_path, "fair-regression.yaml", model, alias, data=data)
    tags_before = dict(client.get_model_version(model, v["forest"]).tags)

    code = run(["gate", str(policy), "--candidate", v["forest"]])

    err = capsys.readouterr().err
    assert code == ExitCode.INVALID_INPUT
    assert f"{policy}:" in err and "evaluation.data" in err
    assert ("missing columns: bmi" if problem == "renamed column" else "line 7") in err
    assert _aliases(client, model)[alias] == v["constant"]
    assert f"{alias}-previous" not in _aliases(client, model)
    assert dict(client.get_model_version(model, v["forest"]).tags) == tags_before
