"""Rollback: point the alias back at `<alias>-previous`, and `-previous` at what it displaced.

Split into a plan (reads only) and its application, which holds the model's lease, records its
intent before the first alias write, re-reads both aliases (an alias moved in between is a
conflict: nothing moves), then writes the alias before `-previous`. An interrupted rollback is
completed by the next rollback, gate or recovery (promotion.gate.recovery), never applied twice:
retrying a rollback whose alias already moved completes that rollback instead of undoing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from promotion import registry
from promotion.engine import records
from promotion.engine.intent import Intent
from promotion.engine.naming import version_or_none
from promotion.engine.records import Entry, Trigger
from promotion.engine.results import NOTHING, RollbackConflict, RollbackIncomplete, RollbackResult
from promotion.errors import InvalidInput, NothingMoved, RegistryError
from promotion.gate.operation import (
    Operation,
    Session,
    Step,
    nothing_moved_unless_said,
    still,
    writing,
)
from promotion.gate.recovery import INTERRUPTED
from promotion.policy.model import DEFAULT_ALIAS, previous_alias
from promotion.registry import journal
from promotion.registry import records as store
from promotion.registry.client import describe_uri
from promotion.report.decision import record_files

if TYPE_CHECKING:
    from mlflow import MlflowClient


def run_rollback(client: MlflowClient, model: str, alias: str = DEFAULT_ALIAS, *,
                 dry_run: bool = False, why: Why | None = None) -> RollbackResult:
    """Point `alias` back at `<alias>-previous`, and `<alias>-previous` at what it displaced.

    Rolling back a rollback therefore flips them again. Exit 2 when there is nothing to roll
    back to; exit 3 (RollbackConflict) when either alias moves between the read and the writes,
    or, with `why.expected`, when they no longer point where the caller read them. An
    interrupted rollback of this alias is completed, not repeated.
    """
    with nothing_moved_unless_said(alias):
        state = journal.read_state(client, model)
    if dry_run or state.intent is None:
        planned = _plan(client, model, alias, state.aliases, dry_run=dry_run)
        if dry_run:
            return planned
    with nothing_moved_unless_said(alias, state.aliases.get(alias)), \
            writing(client, model, purpose=f"rollback of @{alias}") as session:
        done = session.recovered
        if done is not None and done.intent.kind == "rollback" and done.intent.alias == alias \
                and done.state == "applied":
            completed = _completed(client, done.intent, done.note)
            if why is not None and why.expected is not None and \
                    why.expected != (done.intent.source, done.intent.target):
                # Another rollback finished under the caller's read: what it read is gone.
                raise RollbackConflict(replace(completed, displaced_version=why.expected[0],
                                               restored_version=why.expected[1] or "?"),
                                       _aliases_now(session.aliases, alias))
            return completed
        planned = _plan(client, model, alias, session.aliases, dry_run=False)
        return _apply(client, planned, session, why or Why())


@dataclass(frozen=True)
class Why:
    """What asked for a rollback other than `promote rollback`: the watch, after a breach.

    `kind` names the decision record (history shows it), `reason` explains it, `files` are added
    to the record, and `expected` is where the caller read (@alias, @alias-previous): if either
    has moved since, the rollback is a conflict and moves nothing.
    """

    kind: str = "rollback"
    reason: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    expected: tuple[str | None, str | None] | None = None


def _aliases_now(aliases: dict[str, str], alias: str) -> tuple[str | None, str | None]:
    return aliases.get(alias), aliases.get(previous_alias(alias))


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
    aliases = {k: v for k, v in ((alias, current), (previous_alias(alias), previous)) if v}
    return _plan(client, model, alias, aliases, dry_run=dry_run)


def _plan(client: MlflowClient, model: str, alias: str, aliases: dict[str, str], *,
          dry_run: bool) -> RollbackResult:
    current, kept = aliases.get(alias), previous_alias(alias)
    previous = aliases.get(kept)
    if previous is None:
        raise InvalidInput(f"nothing to roll back to: model {model!r} has no alias @{kept}")
    if previous == current:
        raise InvalidInput(f"nothing to roll back: @{alias} and @{kept} of model "
                           f"{model!r} both point at version {current}")
    return RollbackResult(model=model, alias=alias, restored_version=previous,
                          displaced_version=current, dry_run=dry_run,
                          decided_at=records.utc_now(), trigger=Trigger.from_env(),
                          tracking_uri=describe_uri(client))


def _completed(client: MlflowClient, intent: Intent, note: str) -> RollbackResult:
    return RollbackResult(model=intent.model, alias=intent.alias,
                          restored_version=intent.target or "?", displaced_version=intent.source,
                          dry_run=False, decided_at=records.utc_now(),
                          trigger=Trigger.from_env(), tracking_uri=describe_uri(client),
                          applied=True, completed=note)


def apply_rollback(client: MlflowClient, planned: RollbackResult) -> RollbackResult:
    """Carry out a plan under the model's lease (see `_apply`)."""
    with nothing_moved_unless_said(planned.alias, planned.displaced_version), \
            writing(client, planned.model, purpose=f"rollback of @{planned.alias}") as session:
        return _apply(client, planned, session, Why())


def _apply(client: MlflowClient, planned: RollbackResult, session: Session,
           why: Why) -> RollbackResult:
    """Record the intent and the record run, re-read both aliases, then move them and tag.

    If either alias no longer points where the plan read it, the record is closed as `conflict`
    and RollbackConflict (exit 3) is raised before anything moves. The alias is written before
    `<alias>-previous`; what is interrupted after the alias moved is completed by the next
    command, from the intent.
    """
    model, alias, kept = planned.model, planned.alias, planned.previous_alias
    previous, current = planned.restored_version, planned.displaced_version
    reason = why.reason or (f"rollback: @{alias} moved back from "
                            f"{version_or_none(current, NOTHING)} to version {previous}")
    planned = replace(planned, kind=why.kind)
    entry = Entry(kind=why.kind, model=model, alias=alias, outcome="pending",
                  candidate_version=previous, compared_to=current, decided_at=planned.decided_at,
                  reason=reason, triggered_by=planned.trigger.describe(),
                  operation=session.operation)
    op = Operation(client, Intent(
        operation=session.operation, kind="rollback", model=model, alias=alias,
        previous_alias=kept, source=current, target=previous, previous_source=previous,
        previous_target=current, started_at=records.utc_now(),
        holder=planned.trigger.describe()))
    op.begin()
    run: store.RecordRun | None = None
    try:
        run = store.open_run(client, entry, planned.trigger)
        session.run_id = run.run_id
        now = _rollback_aliases(client, model, alias)
        read = why.expected or (current, previous)
        if now != (current, previous) or read != (current, previous):
            was = replace(planned, displaced_version=read[0], restored_version=read[1] or "?")
            _conflict(client, op, replace(was, record_run_id=run.run_id), run, now)
        op.move(alias, previous)
    except RollbackConflict:
        raise
    except RegistryError as exc:
        _nothing_moved(client, op, run, exc)
    result = replace(planned, record_run_id=run.run_id if run else None,
                     applied=op.moved is True)
    if op.moved is None:
        raise RollbackIncomplete(replace(result, missing=(f"@{alias}: its write got no answer",)))
    missing = op.finish(_finishing(client, result, entry, run, why))
    if missing:
        raise RollbackIncomplete(replace(result, missing=missing))
    return result


def _finishing(client: MlflowClient, result: RollbackResult, entry: Entry,
               run: store.RecordRun | None, why: Why) -> list[Step]:
    """The writes that complete an applied rollback, in order."""
    model, alias, kept = result.model, result.alias, result.previous_alias
    previous, current = result.restored_version, result.displaced_version
    run_id = run.run_id if run else None
    steps: list[Step] = []
    if current is not None:
        steps.append((f"@{kept} -> version {current}",
                      partial(registry.set_alias, client, model, kept, current)))
    restored = {records.DECISION: "restored", **entry.version_tags(result.trigger, run_id)}
    steps.append((f"the `restored` tag on version {previous}",
                  partial(registry.set_tags, client, model, previous, restored)))
    if current is not None:
        steps.append((f"the `rolled_back` tag on version {current}", partial(
            registry.set_tags, client, model, current, {
                records.DECISION: "rolled_back", records.DECIDED_AT: result.decided_at,
                records.COMPARED_TO: previous,
                records.REASON: why.reason or f"replaced by version {previous} in a rollback "
                                              f"of @{alias}",
                **({records.RECORD_RUN: run_id} if run_id else {})})))
    if run is not None:
        final = replace(entry, outcome="rollback")
        steps.append((f"the decision record (run {run.run_id})", partial(
            store.close_run, client, run, final, result.trigger,
            files={**record_files(result), **why.files})))
    return steps


def _conflict(client: MlflowClient, op: Operation, result: RollbackResult,
              run: store.RecordRun, now: tuple[str | None, str | None]) -> NoReturn:
    conflict = RollbackConflict(result, now)
    store.set_run_outcome(client, run.run_id, "conflict", str(conflict))
    op.abandon([])
    raise conflict


def _nothing_moved(client: MlflowClient, op: Operation, run: store.RecordRun | None,
                   exc: RegistryError) -> NoReturn:
    intent = op.intent
    reason = f"interrupted before @{intent.alias} moved ({exc}); nothing moved"
    steps = [] if run is None else [("the record", partial(
        store.set_run_outcome, client, run.run_id, INTERRUPTED, reason, failed=True))]
    op.abandon(steps)
    raise NothingMoved(f"{still(intent)}: {exc}") from exc
