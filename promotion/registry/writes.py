"""Writing the model registry: registering versions, alias moves and version tags.

Writes go through the registry client underneath MlflowClient (promotion.registry.internals says
why); every failure is a RegistryError (exit 3) or InvalidInput (exit 2), as for reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from promotion.registry.client import registry_errors
from promotion.registry.internals import registry_writer
from promotion.registry.versions import parallel

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def ensure_registered_model(client: MlflowClient, model: str) -> None:
    """Create the registered model unless it exists (a concurrent creation is fine too)."""
    from mlflow.exceptions import MlflowException

    with registry_errors(f"registering model {model!r}"):
        try:
            client.create_registered_model(model)
        except MlflowException as exc:
            if exc.error_code not in ALREADY_EXISTS:
                raise


def create_version(client: MlflowClient, model: str, *, source: str, run_id: str | None,
                   tags: Mapping[str, str], description: str | None = None,
                   model_id: str | None = None) -> ModelVersion:
    """Register a new version with its tags in one call, so no reader sees it untagged."""
    extra: dict[str, Any] = {"model_id": model_id} if model_id else {}
    with registry_errors(f"registering a new version of model {model!r}"):
        return client.create_model_version(model, source=source, run_id=run_id,
                                           tags=dict(tags), description=description, **extra)


def set_alias(client: MlflowClient, model: str, alias: str, version: str) -> None:
    with registry_errors(f"pointing @{alias} of model {model!r} at version {version}"):
        registry_writer(client).set_registered_model_alias(model, alias, version)


def delete_alias(client: MlflowClient, model: str, alias: str) -> None:
    """Remove `alias` (absent already is fine)."""
    from mlflow.exceptions import MlflowException

    with registry_errors(f"removing @{alias} of model {model!r}"):
        try:
            registry_writer(client).delete_registered_model_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise


def point_alias(client: MlflowClient, model: str, alias: str, version: str | None) -> None:
    """Point `alias` at `version`, or remove it when `version` is None."""
    if version is None:
        delete_alias(client, model, alias)
    else:
        set_alias(client, model, alias, version)


def set_tags(client: MlflowClient, model: str, version: str, tags: Mapping[str, str]) -> None:
    """Set version tags. MLflow has no batch call for them: one request each, sent in parallel."""
    writer = registry_writer(client)
    with registry_errors(f"tagging version {version} of model {model!r}"):
        parallel([partial(writer.set_model_version_tag, model, version, key, value)
                  for key, value in tags.items()])
