"""The test server is a real MLflow server: runs, proxied artifacts, registry, aliases, loading."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.mlflow


def test_real_server_round_trip(tracking_uri, client, model_name, tmp_path):
    import mlflow
    from sklearn.linear_model import LinearRegression

    X = np.arange(20, dtype=float).reshape(10, 2)
    y = X @ np.array([1.5, -2.0]) + 3.0
    model = LinearRegression().fit(X, y)
    note = tmp_path / "note.txt"
    note.write_text("hello")

    mlflow.set_experiment(f"smoke-{model_name}")
    with mlflow.start_run() as run:
        mlflow.log_params({"fit_intercept": True, "rows": 10})
        mlflow.log_metrics({"rmse": 0.0, "r2": 1.0})
        mlflow.log_artifact(str(note))
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X[:2], registered_model_name=model_name
        )

    # The server, not the client, stored the artifacts: the run's root is a proxied URI.
    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"fit_intercept": "True", "rows": "10"}
    assert stored.data.metrics == {"rmse": 0.0, "r2": 1.0}
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"note.txt"}

    assert str(info.registered_model_version) == "1"
    client.set_registered_model_alias(model_name, "champion", "1")
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"

    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    np.testing.assert_allclose(loaded.predict(X[:3]), model.predict(X[:3]))
