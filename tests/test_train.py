"""Training candidates: configs, data checks, lineage, and real runs on the MLflow test server."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

from promotion.cli import run
from promotion.errors import InvalidInput
from promotion.report.training import train_json, train_lines
from promotion.training import (
    CHALLENGER,
    DATASETS,
    ESTIMATORS,
    ConfigError,
    TrainResult,
    build_estimator,
    holdout_metrics,
    lineage,
    load_config,
    load_configs,
    load_dataset,
    split_holdout,
    trusted_types,
    validate_data,
    validate_hyperparameters,
)

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = REPO / "train" / "candidates"
SHIPPED = sorted(CANDIDATES.glob("*.yaml"))
DIABETES = DATASETS["sklearn:load_diabetes"]


def write(tmp_path: Path, text: str, name: str = "candidate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
model: m
estimator: random_forest
params:
  n_estimators: 5
  max_depth: 3
split:
  test_size: 0.25
  seed: 7
"""


# --------------------------------------------------------------------------------------------
# Configs (no MLflow)


def test_shipped_candidates_are_valid_and_share_one_holdout():
    configs = load_configs(SHIPPED)
    assert {c.estimator for c in configs} >= {"random_forest", "gradient_boosting", "linear"}
    assert {c.model for c in configs} == {"diabetes-regressor"}
    assert {(c.data, c.test_size, c.seed) for c in configs} == {("sklearn:load_diabetes", 0.25, 42)}
    forest = next(c for c in configs if c.estimator == "random_forest")
    assert {k: forest.params[k] for k in ("n_estimators", "max_depth", "max_features")} == {
        "n_estimators": 100, "max_depth": 6, "max_features": 3}


def test_config_records_its_sha256_and_fills_random_state_from_the_split_seed(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path)
    assert config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config.params["random_state"] == 7
    assert config.experiment == "m"
    assert load_config(path, model_name="other").model == "other"


@pytest.mark.parametrize(("text", "where", "says"), [
    (GOOD.replace("random_forest", "xgboost"), ":2:1: estimator:", "unknown estimator 'xgboost'"),
    (GOOD.replace("max_depth: 3", "max_depth: -1"), ":5:3: params.max_depth:",
     "must be an int in the range [1, inf)"),
    (GOOD.replace("n_estimators", "n_estimator"), ":4:3: params.n_estimator:",
     "did you mean 'n_estimators'?"),
    (GOOD.replace("seed: 7", "seed: '7'"), ":8:3: split.seed:", "valid integer"),
    (GOOD.replace("test_size: 0.25", "test_size: 1.5"), ":7:3: split.test_size:", "less than 1"),
    (GOOD + "colour: blue\n", ":9:1: colour:", "Extra inputs are not permitted"),
    (GOOD.replace("model: m\n", ""), ": model:", "Field required"),
    (GOOD + "model: n\n", ":9:1: model:", "duplicate key"),
    (GOOD.replace("  seed: 7", " seed: 7"), ":8:", "invalid YAML"),
    ("- just\n- a list\n", ".yaml: expected a mapping", ""),
    (GOOD + "data: sklearn:load_iris\n", ":9:1: data:", "unknown data source"),
])
def test_bad_config_is_one_error_naming_file_line_and_key(tmp_path, text, where, says):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert where in message and says in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"model: m\n---\nmodel: n\n", "document"),
    (b"model: !!python/object/apply:os.system ['touch pwned']\n", "tag"),
    (b"model: m\xff\n", "UTF-8"),
])
def test_unreadable_config_files_are_one_clear_error(tmp_path, data, says):
    """Configs are read by the same reader as policies: nothing unsafe, nothing ambiguous."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and says in message
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_missing_config_and_no_config():
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config("nope.yaml")
    with pytest.raises(InvalidInput):
        load_configs([])


def test_two_problems_of_one_config_are_reported_together(tmp_path):
    path = write(tmp_path, GOOD.replace("n_estimators: 5", "n_estimator: 5")
                 .replace("seed: 7", "seed: '7'"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines() == [
        f"{path}:4:3: params.n_estimator: RandomForestRegressor has no hyperparameter "
        "'n_estimator'; did you mean 'n_estimators'?",
        f"{path}:8:3: split.seed: Input should be a valid integer",
    ]
    assert str(caught.value) == f"{caught.value.lines()[0]} (and 1 more)"
    assert caught.value.exit_code == 2


def test_three_problems_of_schema_data_and_scikit_learn_are_reported_in_file_order(tmp_path):
    """A schema error, a data source and a value scikit-learn refuses: one error, by position."""
    path = write(tmp_path, GOOD.replace("max_depth: 3", "max_depth: -1")
                 .replace("test_size: 0.25", "test_size: 1.5") + "data: sklearn:load_iris\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = caught.value.lines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:5:3", "params.max_depth"], [f"{path}:7:3", "split.test_size"],
        [f"{path}:9:1", "data"]]
    assert "must be an int in the range [1, inf)" in lines[0]
    assert "less than 1" in lines[1] and "unknown data source 'sklearn:load_iris'" in lines[2]
    assert len(caught.value.issues) == 3 and str(caught.value).endswith("(and 2 more)")


def test_every_bad_hyperparameter_is_reported_not_only_the_first(tmp_path):
    path = write(tmp_path, GOOD.replace("n_estimators: 5", "n_estimators: 0")
                 .replace("max_depth: 3", "max_depth: -1\n  criterion: gini\n  trees: 3"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [issue.key for issue in caught.value.issues] == [
        "params.n_estimators", "params.max_depth", "params.criterion", "params.trees"]


def test_the_problems_of_every_config_are_reported_together_config_by_config(tmp_path):
    first = write(tmp_path, GOOD.replace("random_forest", "xgboost"), "b.yaml")
    second = write(tmp_path, GOOD.replace("model: m\n", "").replace("seed: 7", "seed: -1"),
                   "a.yaml")
    with pytest.raises(ConfigError) as caught:
        load_configs([first, CANDIDATES / "linear.yaml", second, tmp_path / "nope.yaml"])
    assert [(Path(i.file).name, i.key) for i in caught.value.issues] == [
        ("b.yaml", "estimator"), ("a.yaml", "model"), ("a.yaml", "split.seed"),
        ("nope.yaml", "")]


def test_cli_prints_every_config_problem_one_per_line_and_exits_2(tmp_path, capsys):
    """Validation comes before MLflow is touched: no server is needed to see this."""
    path = write(tmp_path, GOOD.replace("random_forest", "xgboost") + "colour: blue\n")
    assert run(["--tracking-uri", "http://127.0.0.1:9", "train", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:2:1: estimator: unknown estimator 'xgboost'; expected one of: "
        f"{', '.join(sorted(ESTIMATORS))}",
        f"{path}:9:1: colour: Extra inputs are not permitted"]


def test_scikit_learn_still_has_the_private_hyperparameter_check_training_relies_on():
    """validate_hyperparameters calls scikit-learn's private BaseEstimator._validate_params
    (the public API checks values only in `fit`). If an upgrade removes or renames it, bad
    hyperparameters would only be refused after a run is opened in MLflow: fail here first."""
    import importlib

    from sklearn.base import BaseEstimator
    from sklearn.ensemble import RandomForestRegressor

    assert callable(getattr(BaseEstimator, "_validate_params", None)), (
        "scikit-learn no longer has BaseEstimator._validate_params: "
        "promotion.training.config.validate_hyperparameters needs another way")
    for name, path in ESTIMATORS.items():
        module, _, cls = path.rpartition(".")
        estimator = getattr(importlib.import_module(module), cls)
        assert callable(getattr(estimator, "_validate_params", None)), name
    validate_hyperparameters(RandomForestRegressor(max_depth=3))
    with pytest.raises(ValueError, match=r"The 'max_depth' parameter of RandomForestRegressor"):
        validate_hyperparameters(RandomForestRegressor(max_depth=-1))


def test_train_help_imports_neither_mlflow_nor_the_data_libraries():
    import sys

    code = ("import sys; from promotion.cli import run; rc = run(['train', '--help']); "
            "print('RC', rc, sorted(m for m in ('mlflow', 'pandas', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("RC 0 []")


RESULT = TrainResult(config="train/candidates/linear.yaml", model="diabetes-regressor",
                     version="3", run_id="0123abcd", experiment_id="1",
                     metrics={"rmse": 53.85344, "mae": 42.79409, "r2": 0.45260},
                     data_validated=False, data_validation="3 rows, expected 442",
                     tags={"data_sha256": "a1b2c3d4e5f6" + "0" * 52},
                     run_url="http://mlflow:5000/#/experiments/1/runs/0123abcd")


def test_train_prints_each_candidate_as_before():
    assert train_lines(RESULT) == [
        "diabetes-regressor version 3 (@challenger)  from train/candidates/linear.yaml",
        "  run      0123abcd",
        "  metrics  rmse 53.8534  mae 42.7941  r2 0.4526  (holdout)",
        "  data     NOT validated (3 rows, expected 442), sha256 a1b2c3d4e5f6",
        "  view     http://mlflow:5000/#/experiments/1/runs/0123abcd",
    ]


def test_train_json_starts_with_schema_version_then_the_trained_candidates():
    import json

    text = train_json([RESULT])
    assert text.splitlines()[:2] == ["{", '  "schema_version": 1,']
    document = json.loads(text)
    assert list(document) == ["schema_version", "trained"]
    assert document["trained"] == [RESULT.to_dict()]


# --------------------------------------------------------------------------------------------
# Data, metrics, fingerprints, lineage (no MLflow)


def test_bundled_data_passes_validation():
    features, target = load_dataset("sklearn:load_diabetes")
    assert validate_data(features, target, DIABETES).ok


@pytest.mark.parametrize(("corrupt", "says"), [
    (lambda x, y: (x.assign(bmi=x.bmi.where(x.index != 3)), y), "missing or infinite"),
    (lambda x, y: (x.assign(bp=x.bp.replace(x.bp.iloc[0], np.inf)), y), "missing or infinite"),
    (lambda x, y: (x.drop(columns="s6"), y), "columns"),
    (lambda x, y: (x.iloc[:-1], y.iloc[:-1]), "441 rows"),
    (lambda x, y: (x, y.where(y.index != 5)), "target"),
    (lambda x, y: (x.assign(sex=x.sex.astype(str)), y), "non-numeric"),
])
def test_data_validation_catches_real_defects(corrupt, says):
    features, target = corrupt(*load_dataset("sklearn:load_diabetes"))
    check = validate_data(features, target, DIABETES)
    assert not check.ok
    assert says in check.summary


def test_data_fingerprint_is_stable_and_sensitive():
    features, target = load_dataset("sklearn:load_diabetes")
    digest = lineage.data_sha256(features, target)
    assert digest == lineage.data_sha256(features.copy(), target.copy())
    changed = features.copy()
    changed.iloc[10, 2] += 1e-9
    assert lineage.data_sha256(changed, target) != digest
    assert lineage.data_sha256(features[features.columns[::-1]], target) != digest
    assert lineage.data_sha256(features, target.rename("y")) != digest


def test_holdout_is_seeded_and_metrics_match_their_definitions():
    features, target = load_dataset("sklearn:load_diabetes")
    a = split_holdout(features, target, test_size=0.25, seed=42)
    b = split_holdout(features, target, test_size=0.25, seed=42)
    assert list(a.x_test.index) == list(b.x_test.index)
    assert len(a.x_test) == 111
    y = a.y_test.to_numpy()
    pred = y + np.linspace(-20, 20, len(y))
    m = holdout_metrics(y, pred)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert m["r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def test_trusted_types_are_exactly_what_the_model_is_made_of():
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    x, y = np.random.default_rng(0).normal(size=(30, 3)), np.arange(30.0)
    assert trusted_types(LinearRegression().fit(x, y)) == []
    assert trusted_types(RandomForestRegressor(n_estimators=2).fit(x, y)) == [
        "sklearn.tree._tree.Tree"]


def test_github_run_url_only_inside_actions():
    env = {"GITHUB_REPOSITORY": "acme/models", "GITHUB_RUN_ID": "42",
           "GITHUB_SERVER_URL": "https://github.example"}
    assert lineage.github_run_url(env) is None
    assert lineage.github_run_url({**env, "GITHUB_ACTIONS": "true"}) == (
        "https://github.example/acme/models/actions/runs/42")
    assert lineage.github_run_url({**env, "GITHUB_ACTIONS": "true", "GITHUB_RUN_ATTEMPT": "2",
                                   "GITHUB_SERVER_URL": "https://u:secret@ghe.example"}) == (
        "https://***@ghe.example/acme/models/actions/runs/42/attempts/2")


def test_git_lineage_outside_a_checkout_and_on_a_detached_actions_checkout(tmp_path):
    assert lineage.git_info(tmp_path, {}) == lineage.GitInfo()
    env = {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "abc123", "GITHUB_REF_NAME": "main"}
    assert lineage.git_info(tmp_path, env) == lineage.GitInfo("abc123", "main", None)


# --------------------------------------------------------------------------------------------
# Real runs on the MLflow test server


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def _expected(config_path: Path):
    """Metrics and predictions of the config's estimator, computed here, not by the trainer."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    config = load_config(config_path)
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=42)
    model = build_estimator(config).fit(x_train, y_train)
    pred = model.predict(x_test)
    residual = y_test - pred
    metrics = {"rmse": float(np.sqrt(np.mean(residual ** 2))),
               "mae": float(np.mean(np.abs(residual))),
               "r2": float(1 - np.sum(residual ** 2) / np.sum((y_test - y_test.mean()) ** 2))}
    return metrics, x_test, pred


@pytest.mark.mlflow
def test_trained_candidates_are_registered_with_metrics_lineage_signature_and_alias(
        tracking_uri, client, model_name, capsys, monkeypatch):
    import mlflow

    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_RUN_ID", "1234")
    monkeypatch.delenv("GITHUB_RUN_ATTEMPT", raising=False)

    assert run(["train", *map(str, SHIPPED), "--model-name", model_name]) == 0
    out = capsys.readouterr().out

    versions = {mv.version: mv for mv in client.search_model_versions(f"name = '{model_name}'")}
    assert sorted(versions, key=int) == [str(i) for i in range(1, len(SHIPPED) + 1)]
    assert client.get_model_version_by_alias(model_name, CHALLENGER).version == str(len(SHIPPED))
    features, target = load_dataset("sklearn:load_diabetes")
    for number, config_path in enumerate(SHIPPED, start=1):
        mv = versions[str(number)]
        run_ = client.get_run(mv.run_id)
        metrics, x_test, pred = _expected(config_path)
        assert {k: run_.data.metrics[k] for k in metrics} == pytest.approx(metrics, rel=1e-12)
        assert f"version {number} (@challenger)" in out and mv.run_id in out
        assert f"rmse {metrics['rmse']:.4f}" in out
        # autolog ran too: the estimator's parameters and training-set metrics are on the run
        for key, value in load_config(config_path).params.items():
            assert run_.data.params[key] == str(value)
        assert any(k.startswith("training_") for k in run_.data.metrics)
        lineage_tags = {
            "data_sha256": lineage.data_sha256(features, target),
            "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
            "github_run_url": "https://github.com/acme/models/actions/runs/1234",
        }
        if _git("rev-parse", "HEAD"):
            lineage_tags["git_commit"] = _git("rev-parse", "HEAD")
        for key, value in lineage_tags.items():
            assert mv.tags[key] == value, key
            assert run_.data.tags[key] == value, key
        assert mv.tags["data_validated"] == "true"

        uri = f"models:/{model_name}/{number}"
        signature = mlflow.models.get_model_info(uri).signature
        assert signature.inputs.input_names() == list(DIABETES.columns)
        loaded = mlflow.pyfunc.load_model(uri)
        np.testing.assert_allclose(loaded.predict(x_test), pred, rtol=1e-9)

    by_alias = mlflow.pyfunc.load_model(f"models:/{model_name}@{CHALLENGER}")
    _, x_test, pred = _expected(SHIPPED[-1])
    np.testing.assert_allclose(by_alias.predict(x_test), pred, rtol=1e-9)


@pytest.mark.mlflow
def test_same_config_twice_gives_the_same_metrics(tracking_uri, client, model_name, capsys):
    import json

    forest = CANDIDATES / "random-forest.yaml"
    assert run(["train", str(forest), str(forest), "--model-name", model_name, "--json"]) == 0
    first, second = json.loads(capsys.readouterr().out)["trained"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["run_id"] != second["run_id"]
    logged = [client.get_run(r["run_id"]).data.metrics for r in (first, second)]
    assert {k: logged[0][k] for k in ("rmse", "mae", "r2")} == {
        k: logged[1][k] for k in ("rmse", "mae", "r2")}
    assert first["tags"]["data_sha256"] == second["tags"]["data_sha256"]
    assert first["tags"]["config_sha256"] == second["tags"]["config_sha256"]


BAD_CONFIGS = {
    "unknown estimator": (GOOD.replace("random_forest", "xgboost"), "estimator"),
    "bad hyperparameter": (GOOD.replace("max_depth: 3", "max_depth: -1"), "params.max_depth"),
    "unknown hyperparameter": (GOOD.replace("n_estimators", "trees"), "params.trees"),
    "malformed yaml": (GOOD.replace("  seed: 7", " seed: 7"), ""),
    "missing file": (None, ""),
}


@pytest.mark.mlflow
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_names_file_and_key_and_registers_nothing(
        tracking_uri, client, model_name, tmp_path, capsys, case):
    text, key = BAD_CONFIGS[case]
    bad = tmp_path / "bad.yaml"
    if text is not None:
        bad.write_text(text)
    # A good config first: validation of the whole batch comes before any write.
    code = run(["train", str(CANDIDATES / "linear.yaml"), str(bad), "--model-name", model_name])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(bad) in err
    assert not key or f" {key}:" in err
    assert client.search_registered_models(f"name = '{model_name}'") == []
    assert client.get_experiment_by_name(model_name) is None


def test_unreachable_server_is_a_registry_error_not_bad_input(monkeypatch, model_name, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code = run(["train", str(CANDIDATES / "linear.yaml"), "--model-name", model_name])
    assert code == 3
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_python_dash_m_train_is_the_same_command(tmp_path):
    import sys

    bad = write(tmp_path, GOOD.replace("random_forest", "xgboost"))
    out = subprocess.run([sys.executable, "-m", "train", str(bad)], cwd=REPO, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 2
    assert f"{bad}:2:1: estimator: unknown estimator 'xgboost'" in out.stderr

