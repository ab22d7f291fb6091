"""Rollback: point the alias back at `<alias>-previous`, and `-previous` at what it displaced.

Split into a plan (reads only) and its application (re-read both aliases, then write the alias
before `-previous`), so that an alias moved in between is a conflict and nothing moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from promotion import registry, report
from promotion.engine import records
from promotion.engine.facts import version_or_none
from promotion.engine.records import Entry, Trigger
from promotion.engine.results import NOTHING, RollbackConflict, RollbackResult
from promotion.errors import InvalidInput
from promotion.policy.model import DEFAULT_ALIAS, previous_alias
from promotion.registry import records as store
from promotion.registry.client import describe_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


def run_rollback(client: MlflowClient, model: str, alias: str = DEFAULT_ALIAS, *,
                 dry_run: bool = False) -> RollbackResult:
    """Point `alias` back at `<alias>-previous`, and `<alias>-previous` at what it displaced.

    Rolling back a rollback therefore flips them again. Exit 2 when there is nothing to roll
    back to; exit 3 (RollbackConflict) when either alias moves between the read and the writes.
    """
    planned = plan_rollback(client, model, alias, dry_run=dry_run)
    if dry_run:
        return planned
    return apply_rollback(client, planned)


def _rollback_aliases(client: MlflowClient, model: str,
                      alias: str) -> tuple[str | None, str | None]:
    current, previous = registry.parallel([
        partial(registry.alias_version, client, model, alias),
        partial(registry.alias_version, client, model, previous_alias(alias)),
    ])
    return current, previous


def plan_rollback(client: MlflowClient, model: str, alias: str = DEFAULT_ALIAS, *,
                  dry_run: bool = False) -> RollbackResult:
    """Read both aliases and say what a rollback would move; writes nothing."""
    current, previous = _rollback_aliases(client, model, alias)
    kept = previous_alias(alias)
    if previous is None:
        raise InvalidInput(f"nothing to roll back to: model {model!r} has no alias @{kept}")
    if previous == current:
        raise InvalidInput(f"nothing to roll back: @{alias} and @{kept} of model "
                           f"{model!r} both point at version {current}")
    return RollbackResult(model=model, alias=alias, restored_version=previous,
                          displaced_version=current, dry_run=dry_run,
                          decided_at=records.utc_now(), trigger=Trigger.from_env(),
                          tracking_uri=describe_uri(client))


def apply_rollback(client: MlflowClient, planned: RollbackResult) -> RollbackResult:
    """Carry out a plan: open the record, re-read both aliases, then move them and tag.

    If either alias no longer points where the plan read it, the record is closed as `conflict`
    and RollbackConflict (exit 3) is raised before anything moves. The alias is written before
    `<alias>-previous`: a crash between the two leaves both on the restored version, which the
    alias was meant to reach; the next rollback then stops with "nothing to roll back" (exit 2).
    """
    model, alias, kept = planned.model, planned.alias, planned.previous_alias
    previous, current = planned.restored_version, planned.displaced_version
    reason = (f"rollback: @{alias} moved back from {version_or_none(current, NOTHING)} to "
              f"version {previous}")
    entry = Entry(kind="rollback", model=model, alias=alias, outcome="rollback",
                  candidate_version=previous, compared_to=current, decided_at=planned.decided_at,
                  reason=reason, triggered_by=planned.trigger.describe())
    run = store.open_run(client, entry, planned.trigger)
    run_id = run.run_id
    result = replace(planned, record_run_id=run_id)

    now = _rollback_aliases(client, model, alias)
    if now != (current, previous):
        conflict = RollbackConflict(result, now)
        store.set_run_outcome(client, run_id, "conflict", str(conflict))
        raise conflict

    registry.set_alias(client, model, alias, previous)
    if current is not None:
        registry.set_alias(client, model, kept, current)
    result = replace(result, applied=True)

    restored = {records.DECISION: "restored", **entry.version_tags(result.trigger, run_id)}
    writes: list[Callable[[], None]] = [
        partial(registry.set_tags, client, model, previous, restored)]
    if current is not None:
        writes.append(partial(registry.set_tags, client, model, current, {
            records.DECISION: "rolled_back", records.DECIDED_AT: result.decided_at,
            records.COMPARED_TO: previous,
            records.REASON: f"replaced by version {previous} in a rollback of @{alias}",
            records.RECORD_RUN: run_id}))
    registry.parallel(writes)

    store.close_run(client, run, entry, result.trigger, retag=False,
                    files=report.record_files(result))
    return result
