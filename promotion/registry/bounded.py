"""Reads that must come back quickly: the ones a serving endpoint makes on every poll.

Each is one request with a timeout and a number of retries of its own (`internals.read_within`),
whatever MLflow's process-wide settings say, so a registry that stops answering (a link that
drops packets) is known within `timeout` seconds instead of minutes. Errors map as everywhere
else: RegistryError (exit 3) when the registry cannot be read, InvalidInput (exit 2) when it
says the model, version or alias does not exist. A registry that is not served over HTTP (a
local store) is read through the client as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from promotion.engine.rollout import Route
from promotion.errors import RegistryError
from promotion.registry.client import registry_errors
from promotion.registry.internals import read_within
from promotion.registry.rollouts import read_route, route_from
from promotion.registry.versions import get_version

if TYPE_CHECKING:
    from mlflow import MlflowClient


@contextmanager
def _no_answer(what: str, timeout: float) -> Iterator[None]:
    """A read that timed out says so in its own words (MLflow's names an environment variable
    the endpoint does not read)."""
    import requests

    try:
        yield
    except RegistryError as exc:
        if isinstance(exc.__cause__ and exc.__cause__.__cause__, requests.exceptions.Timeout):
            raise RegistryError(f"{what}: no answer within {timeout:g} s") from exc
        raise


def route_within(client: MlflowClient, model: str, alias: str, *, timeout: float,
                 retries: int = 0) -> Route:
    """`read_route` (where `model@alias` points, and the canary in force), in one request that
    waits at most `timeout` seconds per attempt."""
    from mlflow.entities.model_registry import RegisteredModel
    from mlflow.protos.model_registry_pb2 import GetRegisteredModel

    what = f"reading model {model!r}"
    with _no_answer(what, timeout), registry_errors(what):
        answer = read_within(client, GetRegisteredModel, GetRegisteredModel(name=model),
                             timeout=timeout, retries=retries)
    if answer is None:
        return read_route(client, model, alias)
    return route_from(RegisteredModel.from_proto(answer.registered_model), model, alias)


def version_within(client: MlflowClient, model: str, version: str, *, timeout: float,
                   retries: int = 0) -> str:
    """The run id of `model` version `version` ('' when it has none), in one request that waits
    at most `timeout` seconds per attempt: the check of a pinned version."""
    from mlflow.protos.model_registry_pb2 import GetModelVersion

    what = f"reading version {version} of model {model!r}"
    with _no_answer(what, timeout), registry_errors(what):
        answer = read_within(client, GetModelVersion, GetModelVersion(name=model,
                                                                      version=version),
                             timeout=timeout, retries=retries)
    if answer is None:
        return get_version(client, model, version).run_id or ""
    return str(answer.model_version.run_id)
