"""Reads for people: every alias of a model with each version's last decision, and history."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from promotion import registry
from promotion.engine import records
from promotion.engine.intent import assess
from promotion.engine.results import History, Interrupted, ModelStatus, VersionStatus
from promotion.engine.rollout import rollouts_in
from promotion.errors import InvalidInput
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry import journal, lease
from promotion.registry import records as store
from promotion.registry.client import describe_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


def read_status(client: MlflowClient, model: str) -> ModelStatus:
    """Every alias, its version and that version's last decision; and any pending decision."""
    state = journal.read_state(client, model)
    aliases = state.aliases
    wanted = sorted(set(aliases.values()), key=int, reverse=True)
    calls: list[Callable[[], Any]] = [
        partial(registry.versions_tagged, client, model, records.DECISION, "pending"),
        partial(_latest_or_none, client, model),
        partial(lease.read_lease, client, model),
        *[partial(registry.get_version, client, model, v) for v in wanted],
    ]
    found = registry.parallel(calls)
    pending, latest, held, aliased = found[0], found[1], found[2], found[3:]
    interrupted = None if state.intent is None else Interrupted(
        state.intent, assess(state.intent, state.standing))
    by_version = {str(mv.version): mv for mv in [*aliased, *pending]}
    rows = [_version_status(mv, aliases) for mv in by_version.values()]
    rows.sort(key=lambda r: int(r.version), reverse=True)
    return ModelStatus(model=model, aliases=tuple(sorted(aliases.items())),
                       versions=tuple(rows), latest_version=latest,
                       tracking_uri=describe_uri(client), interrupted=interrupted,
                       lease=_lease(held), rollouts=rollouts_in(state.tags))


def _lease(held: lease.LeaseInfo | None) -> str | None:
    if held is None:
        return None
    if lease.is_live(held):
        return held.describe()
    return f"nobody: a stale lease of {held.describe()} (the next command takes it over)"


def _latest_or_none(client: MlflowClient, model: str) -> str | None:
    try:
        return str(registry.latest_version(client, model).version)
    except InvalidInput:
        return None  # a model without versions


def _version_status(mv: Any, aliases: dict[str, str]) -> VersionStatus:
    tags = dict(mv.tags or {})
    version = str(mv.version)
    held = tuple(sorted(a for a, v in aliases.items() if v == version))
    decision = tags.get(records.DECISION)
    note = None
    if decision == "pending":
        gated = tags.get(records.ALIAS, DEFAULT_ALIAS)
        if aliases.get(gated) == version:
            note = (f"interrupted after @{gated} moved here; the next gate records it as "
                    "promoted")
        else:
            note = (f"interrupted before @{gated} moved; nothing was moved; gate this version "
                    "again to decide it")
    compared = tags.get(records.COMPARED_TO)
    return VersionStatus(version=version, aliases=held, decision=decision,
                         decided_at=tags.get(records.DECIDED_AT),
                         compared_to=None if compared == records.NONE else compared,
                         reason=tags.get(records.REASON), note=note)


def read_history(client: MlflowClient, model: str, *, limit: int = 20) -> History:
    """Decisions about `model`, newest first (a query on the decisions experiment)."""
    entries = store.history(client, model, limit)
    if not entries:
        registry.registered_model(client, model)  # no record at all: is the model known?
    return History(model=model, entries=tuple(entries), limit=limit,
                   tracking_uri=describe_uri(client))
