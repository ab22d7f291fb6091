"""The main job (`promote demo`, run by `make demo`): train all, gate each, serve Production."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promotion.cli import run

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = REPO / "train" / "candidates"
POLICIES = REPO / "policies"
N_CANDIDATES = len(list(CANDIDATES.glob("*.yaml")))


def demo(model_name: str, *extra: str) -> int:
    return run(["demo", "--model-name", model_name, "--candidates", str(CANDIDATES),
                "--policies", str(POLICIES), *extra])


def printed_predictions(out: str) -> list[tuple[int, float, float]]:
    """(row, predicted, actual) from the demo's prediction table."""
    table = out.split("Predictions from ", 1)[1]
    rows = re.findall(r"^\s*(\d+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+[-+][\d.]+$", table, re.M)
    return [(int(r), float(p), float(a)) for r, p, a in rows]


def decisions(client, model_name: str) -> dict[str, str]:
    return {mv.version: mv.tags.get("promotion.decision")
            for mv in client.search_model_versions(f"name = '{model_name}'")}


@pytest.mark.mlflow
def test_demo_runs_twice_and_serves_production(tracking_uri, client, model_name, capsys):
    import mlflow

    from promotion.training import load_config, load_dataset, split_holdout

    # First run: every candidate trained and gated, and the alias serves predictions.
    assert demo(model_name) == 0
    out = capsys.readouterr().out
    production = client.get_model_version_by_alias(model_name, "Production").version
    first = decisions(client, model_name)
    assert sorted(first, key=int) == [str(v) for v in range(1, N_CANDIDATES + 1)]
    assert first[production] == "promoted"
    assert set(first.values()) <= {"promoted", "rejected"}
    for version, outcome in first.items():
        assert re.search(rf"^\S+\.yaml\s+{version}\s.*\s{outcome.upper()}\s", out, re.M)

    shown = printed_predictions(out)
    assert len(shown) == 5
    config = load_config(next(CANDIDATES.glob("*.yaml")))
    features, target = load_dataset(config.data)
    holdout = split_holdout(features, target, test_size=config.test_size, seed=config.seed)
    served = mlflow.pyfunc.load_model(f"models:/{model_name}@Production")
    rows = [r for r, _, _ in shown]
    assert rows == list(holdout.x_test.index[:5])
    np.testing.assert_allclose([p for _, p, _ in shown],
                               served.predict(holdout.x_test.loc[rows]), atol=0.051)
    np.testing.assert_allclose([a for _, _, a in shown], target.loc[rows], atol=0.051)
    assert f"(version {production})" in out
    assert "--backend-store-uri" not in out and tracking_uri in out  # a server: open it instead

    # Second run: the same candidates again. Identical retrains are not better: all rejected,
    # Production stays, and the demo says why.
    assert demo(model_name) == 0
    out = capsys.readouterr().out
    assert client.get_model_version_by_alias(model_name, "Production").version == production
    second = decisions(client, model_name)
    new = {v: d for v, d in second.items() if v not in first}
    assert sorted(new, key=int) == [str(v) for v in range(N_CANDIDATES + 1, 2 * N_CANDIDATES + 1)]
    assert set(new.values()) == {"rejected"}
    assert re.search(rf"Version \d+ was retrained from the same config and data as Production "
                     rf"version {production} .* so it was rejected\.", out)
    assert "Nothing was promoted in this run" in out
    assert len(printed_predictions(out)) == 5


@pytest.mark.mlflow
def test_demo_with_a_bad_config_exits_2_and_registers_nothing(tracking_uri, client, model_name,
                                                              tmp_path, capsys):
    candidates = tmp_path / "candidates"
    shutil.copytree(CANDIDATES, candidates)
    (candidates / "zz-broken.yaml").write_text(
        (CANDIDATES / "linear.yaml").read_text().replace("estimator: linear", "estimator: svm"))
    code = run(["demo", "--model-name", model_name, "--candidates", str(candidates),
                "--policies", str(POLICIES)])
    err = capsys.readouterr().err
    assert code == 2
    assert "zz-broken.yaml:" in err and "estimator: unknown estimator 'svm'" in err
    assert client.search_registered_models(f"name = '{model_name}'") == []
    assert client.get_experiment_by_name(model_name) is None


def test_demo_needs_a_policy_for_the_model(tmp_path, capsys):
    # No server is reachable here (MLFLOW_TRACKING_URI points at a closed port): exit 2, not 3,
    # proves the demo refused before touching MLflow.
    (tmp_path / "other.yaml").write_text((POLICIES / "diabetes-regressor.yaml").read_text()
                                         .replace("model: diabetes-regressor", "model: other"))
    code = run(["demo", "--candidates", str(CANDIDATES), "--policies", str(tmp_path)])
    assert code == 2
    assert "no policy gates model 'diabetes-regressor'" in capsys.readouterr().err


def test_demo_outside_the_repository_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["demo"]) == 2
    assert "train/candidates: no such directory" in capsys.readouterr().err


def test_demo_on_the_embedded_default_as_make_demo_runs_it(tmp_path):
    """`make demo` on a fresh clone: no server, no MLFLOW_TRACKING_URI, a SQLite file here;
    then the monitoring loop: a promotion that is bad on live data, rolled back by the watch;
    then the rollout loop: a bad canary aborted at 5 %, a retrain promoted step by step."""
    shutil.copytree(CANDIDATES.parent, tmp_path / "train")
    shutil.copytree(POLICIES, tmp_path / "policies")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k != "PROMOTE_LOG_URI"}
    out = subprocess.run([sys.executable, "-m", "promotion", "demo", "--watch", "--rollout"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "promote-log.db").is_file()
    loop, rollout = out.stdout.split("Monitoring:", 1)[1].split("\nRollout:", 1)
    leaked = re.search(r"Trained version (\d+) with 'followup' .*: gate says PROMOTED", loop)
    assert leaked, loop
    bad = leaked[1]
    served = re.search(r"Serving diabetes-regressor@Production \(version (\d+)\)", loop)[1]
    assert re.search(rf"^BREACH  diabetes-regressor@Production version {bad} .*: rolled back "
                     rf"to version {served} ", loop, re.M), loop
    assert re.search(r"^feature_psi max .* BREACH .*worst: followup", loop, re.M)
    assert re.search(r"^rmse max_regression .* BREACH ", loop, re.M)
    assert f"The endpoint serves version {served} again." in loop
    assert "Found extra inputs" not in out.stdout + out.stderr
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()
    assert "Predictions from models:/diabetes-regressor@Production" in out.stdout
    assert len(printed_predictions(out.stdout)) == 5
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000" in out.stdout
    _check_rollout_loop(rollout, served)


def _check_rollout_loop(out: str, production: str) -> None:
    """The bad candidate answers about 5 % and is aborted on a breach; the retrain answers
    about 5 %, then about 50 %, then holds the alias; nothing fails a request."""
    canaries = re.findall(r"Trained version (\d+) .*: gate says CANARY", out)
    assert len(canaries) == 2, out
    bad, good = canaries
    first = re.search(rf"answered (\d+) by version {production}, (\d+) by version {bad}", out)
    assert first and 0 < int(first[2]) < 0.15 * (int(first[1]) + int(first[2])), out
    assert re.search(rf"^ABORTED  .*version {bad} on @Production-canary .*prediction_psi "
                     rf".*@Production stays on version {production}$", out, re.M), out
    assert re.search(rf"^ADVANCED  .*version {good} .*now 50%", out, re.M), out
    assert re.search(rf"^PROMOTED  .*@Production -> version {good}, @Production-previous -> "
                     rf"version {production}, @Production-canary removed$", out, re.M), out
    assert f"The endpoint serves version {good}: it earned @Production" in out
