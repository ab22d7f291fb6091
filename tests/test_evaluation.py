"""Re-scoring on a pinned evaluation set: real MLflow server, real scikit-learn models.

The registered versions are built once per module (under a name of this module's own) and only
read by the tests. Checks on the evaluation set itself run without any server: they must fail
before a model is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from promotion.engine.decision import decide
from promotion.engine.facts import VersionFacts
from promotion.errors import ExitCode, InvalidInput, RegistryError
from promotion.evaluation import evaluate, frame_sha256, load_evaluation_set
from promotion.policy.load import load_policy
from promotion.policy.model import Policy
from promotion.registry.client import connect

REPO = Path(__file__).resolve().parent.parent
PINNED = REPO / "policies" / "data" / "diabetes-eval.csv"
POLICIES = Path(__file__).resolve().parent / "data" / "evaluation"


@dataclass(frozen=True)
class Registered:
    name: str
    versions: dict[str, str]  # label -> version number

    def facts(self, label: str) -> VersionFacts:
        return VersionFacts(self.name, self.versions[label], None)


def _log_version(name: str, model, example: pd.DataFrame) -> str:
    import mlflow
    import sklearn
    import skops.io

    trusted = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    with mlflow.start_run(), warnings.catch_warnings():
        # MLflow's hint that integer outputs (class labels) cannot hold missing values.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        info = mlflow.sklearn.log_model(model, name="model", input_example=example.iloc[:2],
                                        registered_model_name=name,
                                        skops_trusted_types=trusted or None,
                                        # Named, so MLflow skips inferring them in a subprocess.
                                        pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
    return str(info.registered_model_version)


def _diabetes_split():
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    return train_test_split(x, y, test_size=0.25, random_state=42)  # the pinned file's holdout


@pytest.fixture(scope="module")
def diabetes(mlflow_server) -> Registered:
    import mlflow
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression, Ridge

    x_train, _, y_train, _ = _diabetes_split()
    name = f"t-evaluation-diabetes-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(name)
    models = {
        "constant": DummyRegressor(),
        "forest": RandomForestRegressor(n_estimators=100, max_depth=5, min_samples_leaf=3,
                                        random_state=0),
        "linear": LinearRegression(),
        # Differs from `linear` by a hair of shrinkage: a change within the noise.
        "ridge": Ridge(alpha=0.03),
    }
    versions = {label: _log_version(name, m.fit(x_train, y_train), x_train)
                for label, m in models.items()}
    return Registered(name, versions)


@pytest.fixture(scope="module")
def cancer(mlflow_server) -> Registered:
    import mlflow
    from sklearn.datasets import load_breast_cancer
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=0)
    name = f"t-evaluation-cancer-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(name)
    models = {"prior": DummyClassifier(strategy="prior"),
              "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))}
    versions = {label: _log_version(name, m.fit(x_train, y_train), x_train)
                for label, m in models.items()}
    return Registered(name, versions)


def _policy(file: str, model: str, **evaluation_changes) -> Policy:
    policy = load_policy(POLICIES / file)
    if evaluation_changes:
        assert policy.evaluation is not None
        policy = dataclasses.replace(
            policy, evaluation=dataclasses.replace(policy.evaluation, **evaluation_changes))
    return dataclasses.replace(policy, model=model)


def _predictions(registered: Registered, label: str, x: pd.DataFrame) -> np.ndarray:
    import mlflow

    uri = f"models:/{registered.name}/{registered.versions[label]}"
    return np.asarray(mlflow.pyfunc.load_model(uri).predict(x))


def _artifact_bytes(mlflow, uri: str) -> int:
    """The registry's own account of a version's artifact sizes (listed, not downloaded)."""
    total = 0
    for item in mlflow.artifacts.list_artifacts(artifact_uri=uri):
        name = item.path.rsplit("/", 1)[-1]
        total += _artifact_bytes(mlflow, f"{uri}/{name}") if item.is_dir else item.file_size or 0
    return total


# --------------------------------------------------------------------------------------------
# Outcomes on real models

@pytest.mark.mlflow
def test_a_clearly_better_model_is_promoted_with_a_significant_interval(tracking_uri, diabetes):
    policy = _policy("fair-regression.yaml", diabetes.name)
    cand, prod = diabetes.facts("forest"), diabetes.facts("constant")
    facts = evaluate(connect(None), policy, cand, prod)

    _, x_test, _, y_test = _diabetes_split()
    forest = _predictions(diabetes, "forest", x_test)
    constant = _predictions(diabetes, "constant", x_test)
    rmse = facts.metrics["rmse"]
    assert rmse.candidate == pytest.approx(skm.root_mean_squared_error(y_test, forest))
    assert rmse.production == pytest.approx(skm.root_mean_squared_error(y_test, constant))
    assert facts.metrics["r2"].candidate == pytest.approx(skm.r2_score(y_test, forest))
    assert facts.metrics["mae"].production == pytest.approx(
        skm.mean_absolute_error(y_test, constant))
    assert rmse.difference is not None and rmse.difference.confidence == 0.95
    assert rmse.difference.low < rmse.candidate - rmse.production < rmse.difference.high < 0
    assert facts.metrics["r2"].difference.low > 0
    assert facts.rows == len(y_test) == 111

    decision = decide(policy, cand, prod, facts)
    assert decision.outcome == "promoted", decision.reasons


@pytest.mark.mlflow
def test_a_difference_within_the_noise_is_inconclusive(tracking_uri, diabetes):
    policy = _policy("fair-regression.yaml", diabetes.name)
    cand, prod = diabetes.facts("ridge"), diabetes.facts("linear")
    facts = evaluate(connect(None), policy, cand, prod)

    rmse = facts.metrics["rmse"]
    point = rmse.candidate - rmse.production
    assert point < 0  # a little better on these rows ...
    assert rmse.difference.low < 0 < rmse.difference.high  # ... but not beyond the noise
    decision = decide(policy, cand, prod, facts)
    assert decision.outcome == "inconclusive", decision.reasons
    assert [r.metric for r in decision.inconclusive_rules] == ["rmse"]
    assert not decision.failed


@pytest.mark.mlflow
def test_a_worse_model_is_rejected(tracking_uri, diabetes):
    policy = _policy("fair-regression.yaml", diabetes.name)
    cand, prod = diabetes.facts("constant"), diabetes.facts("forest")
    facts = evaluate(connect(None), policy, cand, prod)

    assert facts.metrics["rmse"].difference.low > 0
    decision = decide(policy, cand, prod, facts)
    assert decision.outcome == "rejected"
    assert {r.metric for r in decision.failed} >= {"rmse", "r2"}


@pytest.mark.mlflow
def test_latency_and_size_budgets_are_measured_and_a_breach_rejects(tracking_uri, client,
                                                                    diabetes):
    import mlflow

    policy = _policy("budgets.yaml", diabetes.name)
    cand, prod = diabetes.facts("forest"), diabetes.facts("linear")
    facts = evaluate(connect(None), policy, cand, prod)

    latency, size = facts.budgets["latency_p95_ms"], facts.budgets["size_mb"]
    # A 100-tree forest predicts 100 rows many times slower than a linear model.
    assert latency.candidate > 1.2 * latency.production > 0
    for label, measured in (("forest", size.candidate), ("linear", size.production)):
        uri = client.get_model_version_download_uri(diabetes.name, diabetes.versions[label])
        assert measured == pytest.approx(_artifact_bytes(mlflow, uri) / 1e6)
    assert size.candidate > 1 > size.production

    decision = decide(policy, cand, prod, facts)
    assert decision.outcome == "rejected"
    assert {(r.metric, r.kind) for r in decision.failed} == {
        ("latency_p95_ms", "max_increase"), ("size_mb", "max")}


@pytest.mark.mlflow
def test_a_classifier_is_rescored_on_a_seeded_sklearn_holdout(tracking_uri, cancer):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    policy = _policy("fair-classifier.yaml", cancer.name)
    cand, prod = cancer.facts("logistic"), cancer.facts("prior")
    facts = evaluate(connect(None), policy, cand, prod)

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{cancer.name}/{cancer.versions['logistic']}")
    proba = model.predict_proba(x_test)
    assert facts.metrics["roc_auc"].candidate == pytest.approx(
        skm.roc_auc_score(y_test, proba[:, 1]))
    assert facts.metrics["log_loss"].candidate == pytest.approx(skm.log_loss(y_test, proba))
    assert facts.metrics["accuracy"].candidate == pytest.approx(
        skm.accuracy_score(y_test, model.predict(x_test)))
    assert facts.metrics["f1"].candidate == pytest.approx(
        skm.f1_score(y_test, model.predict(x_test)))
    assert facts.metrics["roc_auc"].production == pytest.approx(0.5)  # a constant score
    assert facts.rows == len(y_test)
    frame = pd.concat([x_test, y_test], axis=1)
    assert facts.data_sha256 == frame_sha256(frame)
    assert decide(policy, cand, prod, facts).outcome == "promoted"


@pytest.mark.mlflow
def test_without_production_only_the_candidate_is_scored(tracking_uri, diabetes):
    policy = _policy("budgets.yaml", diabetes.name)
    facts = evaluate(connect(None), policy, diabetes.facts("linear"), None)
    assert facts.metrics["rmse"].production is None
    assert facts.metrics["rmse"].difference is None
    assert facts.metrics["rmse"].candidate > 0
    assert facts.budgets["size_mb"].production is None
    assert facts.budgets["latency_p95_ms"].candidate > 0


# --------------------------------------------------------------------------------------------
# The fingerprint


@pytest.mark.mlflow
def test_the_fingerprint_is_the_files_sha256_and_follows_its_content(tracking_uri, diabetes,
                                                                    tmp_path):
    policy = _policy("fair-regression.yaml", diabetes.name)
    cand, prod = diabetes.facts("forest"), diabetes.facts("constant")
    pinned = evaluate(connect(None), policy, cand, prod)
    assert pinned.data_sha256 == hashlib.sha256(PINNED.read_bytes()).hexdigest()

    changed = tmp_path / "diabetes-eval.csv"
    frame = pd.read_csv(PINNED)
    frame.loc[0, "target"] += 40  # one label edited
    frame.to_csv(changed, index=False)
    edited = evaluate(connect(None),
                      _policy("fair-regression.yaml", diabetes.name, data=str(changed)), cand, prod)
    assert edited.data_sha256 == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert edited.data_sha256 != pinned.data_sha256
    assert edited.metrics["rmse"].candidate != pinned.metrics["rmse"].candidate


def test_a_seeded_sklearn_source_has_the_pinned_files_fingerprint():
    """The pinned file is the trainer's holdout (load_diabetes, seed 42, 25%) written as
    canonical CSV: loading the same rows from scikit-learn gives the same fingerprint."""
    policy = _policy("fair-regression.yaml", "m", data="sklearn:load_diabetes", test_size=0.25,
                     seed=42)
    from_sklearn = load_evaluation_set(policy)
    from_file = load_evaluation_set(_policy("fair-regression.yaml", "m"))
    assert from_sklearn.sha256 == from_file.sha256 == hashlib.sha256(
        PINNED.read_bytes()).hexdigest()
    pd.testing.assert_frame_equal(from_sklearn.features, from_file.features)
    np.testing.assert_array_equal(from_sklearn.target, from_file.target)
    other = load_evaluation_set(_policy("fair-regression.yaml", "m", data="sklearn:load_diabetes",
                                        test_size=0.25, seed=7))
    assert other.sha256 != from_file.sha256


def test_parquet_sets_are_fingerprinted_by_their_bytes(tmp_path):
    path = tmp_path / "eval.parquet"
    pd.read_csv(PINNED).to_parquet(path)
    data = load_evaluation_set(_policy("fair-regression.yaml", "m", data=str(path)))
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.rows == 111 and list(data.features.columns)[:3] == ["age", "sex", "bmi"]


# --------------------------------------------------------------------------------------------
# Bad input: one clear error naming file, line and key; exit 2; before any download
# (the tracking URI points nowhere here: touching the registry would be a different error)

NOWHERE_MODEL = VersionFacts("never-registered", "1", None)


def _write_policy(tmp_path: Path, data: Path, target: str = "target",
                  metrics: str = "rmse") -> Policy:
    goals = {m: "minimize" if m in ("rmse", "mae", "log_loss") else "maximize"
             for m in metrics.split(",")}
    rules = "\n".join(f"  {m}:\n    goal: {goal}\n    source: evaluation\n    min_improvement: 0"
                      for m, goal in goals.items())
    path = tmp_path / "policy.yaml"
    path.write_text(f"model: m\nevaluation:\n  data: {data.name}\n  target: {target}\n"
                    f"metrics:\n{rules}\n")
    return load_policy(path)


def _fails(policy: Policy, *fragments: str) -> str:
    with pytest.raises(InvalidInput) as info:
        evaluate(connect(None), policy, NOWHERE_MODEL, NOWHERE_MODEL)
    assert info.value.exit_code == ExitCode.INVALID_INPUT
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_a_missing_file_is_named_with_its_key_and_line(tmp_path):
    data = tmp_path / "eval.csv"
    data.write_bytes(PINNED.read_bytes())
    policy = _write_policy(tmp_path, data)
    data.unlink()  # removed after the policy was validated
    _fails(policy, f"{policy.path}:3:9: evaluation.data: file not found: {data}")


def test_a_missing_target_column_lists_the_columns(tmp_path):
    data = tmp_path / "eval.csv"
    data.write_bytes(PINNED.read_bytes())
    _fails(_write_policy(tmp_path, data, target="progression"),
           ":4:11: evaluation.target: no column 'progression' in", "(columns: age, sex, bmi")


def test_rows_with_missing_values_are_refused_with_their_lines(tmp_path):
    frame = pd.read_csv(PINNED)
    frame.loc[[2, 40], "bmi"] = np.nan
    frame.loc[7, "target"] = np.nan
    data = tmp_path / "eval.csv"
    frame.to_csv(data, index=False)
    _fails(_write_policy(tmp_path, data),
           "evaluation.data: 3 of 111 rows", "have missing values (lines 4, 9, 42)",
           "must be complete")


def test_an_unreadable_file_is_refused(tmp_path):
    data = tmp_path / "eval.parquet"
    data.write_bytes(b"PAR1 this is not parquet")
    _fails(_write_policy(tmp_path, data), "evaluation.data: cannot read", "as Parquet")


def test_a_classification_metric_on_a_continuous_target_is_refused(tmp_path):
    frame = pd.read_csv(PINNED)
    frame["target"] = frame["target"] + 0.5
    data = tmp_path / "eval.csv"
    frame.to_csv(data, index=False)
    _fails(_write_policy(tmp_path, data, metrics="accuracy"),
           "metrics.accuracy.source: accuracy is a classification metric",
           "holds continuous values")


def test_regression_and_classification_metrics_cannot_share_a_set(tmp_path):
    data = tmp_path / "eval.csv"
    data.write_bytes(PINNED.read_bytes())
    _fails(_write_policy(tmp_path, data, metrics="rmse,accuracy"),
           "metrics.accuracy.source: accuracy is a classification metric but rmse is a "
           "regression metric")


def test_an_unreachable_registry_is_a_registry_error_not_bad_input():
    policy = _policy("fair-regression.yaml", "never-registered")
    with pytest.raises(RegistryError) as info:
        evaluate(connect(None), policy, NOWHERE_MODEL, None)
    assert info.value.exit_code == ExitCode.REGISTRY


# Bad input that only a real model reveals


@pytest.mark.mlflow
def test_a_model_that_cannot_predict_the_columns_is_refused(tracking_uri, diabetes, tmp_path):
    data = tmp_path / "eval.csv"
    pd.read_csv(PINNED).rename(columns={"bmi": "body_mass_index"}).to_csv(data, index=False)
    policy = dataclasses.replace(_write_policy(tmp_path, data), model=diabetes.name)
    with pytest.raises(InvalidInput) as info:
        evaluate(connect(None), policy, diabetes.facts("forest"), diabetes.facts("constant"))
    message = str(info.value)
    assert f"evaluation.data: version {diabetes.versions['forest']} of '{diabetes.name}' " \
           "cannot predict the columns of" in message
    assert "missing columns: bmi" in message


@pytest.mark.mlflow
@pytest.mark.parametrize(("metric", "fragment"), [
    ("accuracy", "predicts continuous values, not class labels"),
    ("roc_auc", "predicts continuous values, not class labels"),
])
def test_a_regressor_cannot_be_scored_as_a_classifier(tracking_uri, diabetes, tmp_path, metric,
                                                      fragment):
    data = tmp_path / "eval.csv"
    data.write_bytes(PINNED.read_bytes())  # integer-valued targets: they pass as labels
    policy = dataclasses.replace(_write_policy(tmp_path, data, metrics=metric),
                                 model=diabetes.name)
    with pytest.raises(InvalidInput, match=fragment):
        evaluate(connect(None), policy, diabetes.facts("linear"), diabetes.facts("constant"))


@pytest.mark.mlflow
def test_a_classifier_cannot_be_scored_with_a_regression_metric(tracking_uri, cancer, tmp_path):
    from sklearn.datasets import load_breast_cancer

    data = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(data, index=False)
    policy = dataclasses.replace(_write_policy(tmp_path, data, metrics="rmse"), model=cancer.name)
    with pytest.raises(InvalidInput, match=r"rmse is a regression metric but version .* is a "
                                           r"classifier"):
        evaluate(connect(None), policy, cancer.facts("logistic"), None)


def test_importing_evaluation_stays_cheap():
    """The gate imports it only when a policy re-scores; even then mlflow, pandas and
    scikit-learn load when used, not at import."""
    import subprocess
    import sys

    code = ("import sys, promotion.evaluation; print(sorted(m for m in "
            "('mlflow', 'pandas', 'sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.mlflow
def test_labels_of_another_kind_than_the_models_classes_are_refused(tracking_uri, cancer,
                                                                     tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    data = tmp_path / "cancer.csv"
    frame.to_csv(data, index=False)
    policy = dataclasses.replace(_write_policy(tmp_path, data, metrics="accuracy"),
                                 model=cancer.name)
    with pytest.raises(InvalidInput, match=r"evaluation\.target: none of the target's labels is "
                                           r"a class of version .*model: 0, 1\)"):
        evaluate(connect(None), policy, cancer.facts("logistic"), None)
