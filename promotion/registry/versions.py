"""Reading the model registry with few REST calls, whatever the number of versions.

Every call goes through `registry_errors`, so an unreachable server is a RegistryError (exit 3)
and an unknown model, version or alias an InvalidInput (exit 2) with a message naming it.
Nothing here scans all versions of a model: the highest version number is one server-side sorted
query, an alias one lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from promotion.engine.facts import VersionFacts
from promotion.errors import InvalidInput
from promotion.policy.model import Candidate
from promotion.registry.client import registry_errors, unless_missing

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

T = TypeVar("T")

# At most this many registry requests in flight at once from one gate (independent reads, and
# tag writes whose relative order does not matter).
PARALLEL_REQUESTS = 4


def quote(value: str) -> str | None:
    """`value` as a string literal of an MLflow filter string, or None if it cannot be one.

    MLflow's filter parser has no escape character: a value is quoted with ' or with " and may not
    contain the quote that delimits it (mlflow#12785). A value holding both cannot be written.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
MISSING_ALIAS = "INVALID_PARAMETER_VALUE"  # how MLflow reports an alias that is not set


@contextmanager
def _not_found_as(client: MlflowClient, model: str, message: str) -> Iterator[None]:
    """Turn a RESOURCE_DOES_NOT_EXIST into InvalidInput; everything else passes on.

    MLflow uses that one error code for an unknown model and for an unknown version of a known
    model: asking for the model (one more request, on this failure path only) tells them apart
    without reading MLflow's message text.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != NOT_FOUND:
            raise
        raise InvalidInput(message if _exists(client, model) else
                           f"unknown model {model!r}") from exc


def _exists(client: MlflowClient, model: str) -> bool:
    return unless_missing(partial(client.get_registered_model, model)) is not None


def alias_target(client: MlflowClient, model: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None when the alias is not set.

    MLflow reports a missing alias as INVALID_PARAMETER_VALUE and an unknown model as
    RESOURCE_DOES_NOT_EXIST; a connection failure is neither and stays a RegistryError.
    """
    from mlflow.exceptions import MlflowException

    with registry_errors(f"reading @{alias} of model {model!r}"):
        try:
            return client.get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code == MISSING_ALIAS:
                return None
            if exc.error_code == NOT_FOUND:
                raise InvalidInput(f"unknown model {model!r}") from exc
            raise


def alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    mv = alias_target(client, model, alias)
    return None if mv is None else str(mv.version)


def get_version(client: MlflowClient, model: str, version: str) -> ModelVersion:
    with registry_errors(f"reading version {version} of model {model!r}"), \
            _not_found_as(client, model, f"model {model!r} has no version {version}"):
        return client.get_model_version(model, version)


def latest_version(client: MlflowClient, model: str) -> ModelVersion:
    """The version with the highest version NUMBER (not the last updated one), in one call.

    `search_model_versions` orders by last update by default; ordering by `version_number DESC`
    with one result is a sorted, indexed query on the server. A name that cannot be quoted in a
    filter string falls back on the reserved alias `latest`, which the server resolves to the
    same version (at the cost of loading the model's versions server-side).
    """
    literal = quote(model)
    with registry_errors(f"finding the latest version of model {model!r}"), \
            _not_found_as(client, model, f"model {model!r} has no versions"):
        if literal is None:
            return client.get_model_version_by_alias(model, "latest")
        found = client.search_model_versions(f"name = {literal}", max_results=1,
                                             order_by=["version_number DESC"])
    if not found:
        # An empty search does not say whether the model exists: ask, for the right message.
        registered_model(client, model)
        raise InvalidInput(f"model {model!r} has no versions")
    return found[0]


def resolve(client: MlflowClient, model: str, candidate: Candidate) -> ModelVersion:
    """The version a candidate selector names: `latest`, a number, or `@alias`."""
    if candidate.kind == "latest":
        return latest_version(client, model)
    if candidate.kind == "version":
        return get_version(client, model, str(candidate.value))
    alias = str(candidate.value)
    mv = alias_target(client, model, alias)
    if mv is None:
        raise InvalidInput(f"model {model!r} has no alias @{alias}")
    return mv


def registered_model(client: MlflowClient, model: str) -> RegisteredModel:
    from mlflow.exceptions import MlflowException

    with registry_errors(f"reading model {model!r}"):
        try:
            return client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code == NOT_FOUND:
                raise InvalidInput(f"unknown model {model!r}") from exc
            raise


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, float] | None:
    """The run's latest metric values, or None when the run no longer exists."""
    with registry_errors(f"reading run {run_id}"):
        run = unless_missing(partial(client.get_run, run_id))
    return None if run is None else dict(run.data.metrics)


def version_facts(client: MlflowClient, mv: ModelVersion) -> VersionFacts:
    """What the decision needs about a version: its run's metrics and its tags (one call)."""
    run_id = mv.run_id or None
    metrics = run_metrics(client, run_id) if run_id else None
    if metrics is None:
        run_id = None  # no run, or its run was deleted for good: metric rules fail closed
    return VersionFacts(model=mv.name, version=str(mv.version), run_id=run_id,
                        metrics=metrics or {}, tags=dict(mv.tags or {}), source=mv.source)


def name_clause(model: str) -> tuple[str, bool]:
    """A filter clause selecting `model`'s versions, and whether it selects only those.

    A name holding both quote characters cannot be a literal; `LIKE` with `_` (any one
    character) in place of each `'` selects it plus, at worst, a few look-alike names, which the
    caller drops by comparing names exactly.
    """
    literal = quote(model)
    if literal is not None:
        return f"name = {literal}", True
    return "name LIKE '" + model.replace("'", "_") + "'", False


def versions_tagged(client: MlflowClient, model: str, key: str,
                    value: str) -> list[ModelVersion]:
    """The versions of `model` whose tag `key` equals `value` (a query, not a scan)."""
    clause, exact = name_clause(model)
    with registry_errors(f"searching versions of model {model!r}"):
        found = client.search_model_versions(f"{clause} AND tags.`{key}` = {quote(value)}")
    return list(found) if exact else [mv for mv in found if mv.name == model]


def parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent registry calls concurrently; results in order, the first error raised.

    A registry round trip dominates a gate's wall time and the reads a decision needs do not
    depend on each other; the MLflow client's HTTP session is safe to share between threads.
    """
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


def last_versions(client: MlflowClient, model: str, last: int) -> list[ModelVersion]:
    """The `last` versions with the highest version numbers, highest first: one sorted query."""
    literal = quote(model)
    if literal is None:
        return _last_versions_by_number(client, model, last)
    with registry_errors(f"listing the versions of model {model!r}"):
        found = client.search_model_versions(f"name = {literal}", max_results=last,
                                             order_by=["version_number DESC"])
    return sorted(found, key=lambda mv: int(mv.version), reverse=True)[:last]


def _last_versions_by_number(client: MlflowClient, model: str, last: int) -> list[ModelVersion]:
    """For a name no filter string can quote: count down from the latest version number."""
    try:
        top = int(latest_version(client, model).version)
    except InvalidInput:  # no such model, or no versions: the caller says which
        return []
    found: list[ModelVersion] = []
    for number in range(top, 0, -1):
        if len(found) == last:
            break
        try:
            found.append(get_version(client, model, str(number)))
        except InvalidInput:  # a deleted version
            continue
    return found
