"""The seed's quicktour on current MLflow: autolog -> register -> alias -> load -> predict.

The seed trains MLflow's quickstart random forest on the diabetes data with `mlflow.autolog()`,
registers it, points an alias at the version and loads `models:/<name>@<alias>` for serving. On
MLflow >= 3.17 the seed's `log_model` call fails as written (sklearn models are saved with skops,
and a forest's trees are not a type skops trusts by default); the first test pins that trap and
the documented fix, the second runs the same three steps through Promote's commands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mlflow


@pytest.fixture
def autolog():
    import mlflow

    yield mlflow.autolog
    mlflow.autolog(disable=True)  # autolog patches scikit-learn for the whole process


def test_seed_quicktour_needs_the_tree_type_trusted(tracking_uri, client, model_name, autolog):
    import mlflow
    from mlflow.exceptions import MlflowException
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import train_test_split

    # 1. Experiments record: autolog captures the fit (here without its own model logging, which
    #    the next step does explicitly, as the seed does).
    mlflow.set_experiment(model_name)
    autolog(log_models=False)
    db = load_diabetes()
    x_train, x_test, y_train, _ = train_test_split(db.data, db.target, random_state=0)
    with mlflow.start_run() as run:
        rf = RandomForestRegressor(n_estimators=100, max_depth=6, max_features=3, random_state=0)
        rf.fit(x_train, y_train)
        predictions = rf.predict(x_test)

        # 2. Model registry. As the seed wrote it, this fails on MLflow >= 3.17 ...
        with pytest.raises(MlflowException, match="untrusted types"):
            mlflow.sklearn.log_model(rf, name="model", registered_model_name=model_name)
        # ... and registers nothing.
        assert client.search_registered_models(f"name = '{model_name}'") == []
        # With the one type a forest is made of trusted, it works.
        info = mlflow.sklearn.log_model(
            rf, name="model", registered_model_name=model_name, input_example=x_train[:3],
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True))
    assert client.get_run(run.info.run_id).data.params["max_depth"] == "6"  # autolog's record
    version = info.registered_model_version
    assert str(version) == "1"
    client.set_registered_model_alias(model_name, "Production", str(version))

    # 3. Load the registry model by its alias and predict.
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}@Production")
    np.testing.assert_allclose(loaded.predict(x_test), predictions, rtol=1e-9)


def test_seed_quicktour_through_promote(tracking_uri, client, model_name, tmp_path, capsys):
    """The same three steps with Promote: train (record + register), gate (alias), load."""
    import mlflow

    from promotion.cli import run
    from promotion.training import build_estimator, load_config, load_dataset, split_holdout

    repo = Path(__file__).resolve().parent.parent
    forest = repo / "train" / "candidates" / "random-forest.yaml"
    policy = tmp_path / "policy.yaml"
    policy.write_text((repo / "policies" / "diabetes-regressor.yaml").read_text()
                      .replace("model: diabetes-regressor", f"model: {model_name}"))

    # 1. Experiments record + 2. model registry: an autologged run, a new version @challenger.
    assert run(["train", str(forest), "--model-name", model_name]) == 0
    assert client.get_model_version_by_alias(model_name, "challenger").version == "1"
    # 2. The alias: the gate points Production at the version (the first one only has to meet
    #    the policy's absolute bounds and required tags).
    assert run(["gate", str(policy), "--candidate", "@challenger"]) == 0
    assert client.get_model_version_by_alias(model_name, "Production").version == "1"
    capsys.readouterr()

    # 3. Load the registry model by its alias and predict, as a serving endpoint does.
    config = load_config(forest)
    features, target = load_dataset(config.data)
    holdout = split_holdout(features, target, test_size=config.test_size, seed=config.seed)
    expected = build_estimator(config).fit(holdout.x_train, holdout.y_train).predict(holdout.x_test)
    served = mlflow.pyfunc.load_model(f"models:/{model_name}@Production")
    np.testing.assert_allclose(served.predict(holdout.x_test), expected, rtol=1e-9)
