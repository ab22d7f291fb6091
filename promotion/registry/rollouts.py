"""The rollout state in MLflow: one tag on the registered model per guarded alias
(promotion.engine.rollout says what it holds), and the route an endpoint follows, read with the
aliases in one request."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from promotion.engine.rollout import Route, route_of, state_tag
from promotion.errors import InvalidInput
from promotion.registry.client import registry_errors, unless_missing
from promotion.registry.versions import registered_model

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel


def read_route(client: MlflowClient, model: str, alias: str) -> Route:
    """Where `model@alias` points and the canary in force, from one read of the registered model.

    InvalidInput (2) when the alias is not set or the model unknown; RegistryError (3) when the
    registry cannot be read.
    """
    return route_from(registered_model(client, model), model, alias)


def route_from(rm: RegisteredModel, model: str, alias: str) -> Route:
    """The route in a registered model as read; InvalidInput (2) when the alias is not set."""
    aliases = {str(k): str(v) for k, v in (rm.aliases or {}).items()}
    route = route_of(aliases, dict(rm.tags or {}), alias)
    if route is None:
        raise InvalidInput(f"resolving {model}@{alias}: Registered model alias {alias} not "
                           "found.")
    return route


def write_state(client: MlflowClient, model: str, alias: str, value: str | None) -> None:
    """Set the rollout state of `alias` to `value` (JSON), or remove it when `value` is None."""
    key = state_tag(alias)
    if value is None:
        with registry_errors(f"clearing the rollout of @{alias} on model {model!r}"):
            unless_missing(partial(client.delete_registered_model_tag, model, key))
        return
    with registry_errors(f"writing the rollout of @{alias} on model {model!r}"):
        client.set_registered_model_tag(model, key, value)
