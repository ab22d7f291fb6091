"""Every use of an MLflow internal, each behind one named function that says why.

The public API is preferred everywhere else; these are the places where it is not enough. A test
(tests/test_mlflow_internals.py) imports each of them against the installed MLflow, so an upgrade
that moves or removes one fails loudly there rather than at a user's gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient


def registry_writer(client: MlflowClient) -> Any:
    """The registry client underneath MlflowClient, for alias and version-tag writes.

    Why not the public setters: MlflowClient's alias and version-tag setters first fetch the whole
    registered model to refuse prompts, one extra request per write whose server-side cost grows
    with the number of versions (the server loads them all). Promote has already read the model
    through MlflowClient, whose readers refuse prompts too. Falls back on the client itself.
    """
    get = getattr(client, "_get_registry_client", None)
    return get() if get is not None else client


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """An artifact repository for a run's artifact URI, known from `create_run`.

    Why not `MlflowClient.log_artifacts`: it reads the run again to find the same URI, one more
    round trip for every decision record.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
