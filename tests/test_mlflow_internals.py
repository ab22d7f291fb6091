"""Every MLflow internal Promote relies on still exists in the installed MLflow.

Each sits behind one named function in promotion/registry/internals.py that says why the public
API is not enough; if an upgrade moves or removes one, this fails here, loudly, not at a gate.
"""

from __future__ import annotations

import mlflow

from promotion.registry import internals


def test_the_registry_writer_is_the_registry_client_underneath():
    client = mlflow.MlflowClient(tracking_uri="http://127.0.0.1:9",
                                 registry_uri="http://127.0.0.1:9")
    assert hasattr(client, "_get_registry_client"), "MlflowClient._get_registry_client is gone"
    writer = internals.registry_writer(client)
    assert writer is not client
    for name in ("set_registered_model_alias", "set_model_version_tag"):
        assert callable(getattr(writer, name))


def test_an_artifact_repository_is_had_from_an_artifact_uri(tmp_path):
    repo = internals.artifact_repository(tmp_path.as_uri(), "http://127.0.0.1:9")
    assert callable(repo.log_artifacts)
