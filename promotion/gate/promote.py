"""The gate: decide, then write the decision; a pass is applied write-ahead.

Every gate that writes holds the model's lease (promotion.registry.lease) and first finishes
whatever an interrupted command left (promotion.gate.recovery). Applying a pass, in this order:
  1. record the intent (promotion.engine.intent) on the registered model;
  2. create the decision record run (outcome `pending`, carrying the intent's operation id);
  3. tag the candidate `promotion.decision=pending` (the write-ahead marker) and its context tags;
  4. re-read the alias: if it no longer points where the decision compared against, tag the
     candidate `conflict`, close the record, raise ConflictError (exit 3); nothing moved;
  5. point `<alias>-previous` at the displaced version;
  6. point the alias at the candidate (the move);
  7. tag the candidate `promoted`, close the record (report JSON/Markdown, chart), clear the
     intent.
A registry failure before step 6 is "nothing moved" (exit 3): `-previous` is put back, the record
closed as interrupted. After step 6 (or when its answer was lost) the gate retries what remains
and, if that still fails, says what moved and what is missing (exit 5); the intent stays and the
next gate, rollback or status finds it. A rejection writes the record (run + tags) and moves
nothing. A dry run writes nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from promotion import evaluation as rescoring
from promotion import registry
from promotion.engine import records
from promotion.engine.decision import decide
from promotion.engine.facts import VersionFacts
from promotion.engine.intent import Intent
from promotion.engine.naming import version_or_none
from promotion.engine.records import Entry, Trigger
from promotion.engine.results import NOTHING, GateConflict, GateIncomplete, GateResult
from promotion.engine.rollout import plan_canary
from promotion.errors import NothingMoved, RegistryError
from promotion.gate.operation import (
    Operation,
    Session,
    Step,
    nothing_moved_unless_said,
    still,
    writing,
)
from promotion.gate.recovery import INTERRUPTED
from promotion.policy.model import DEFAULT_ALIAS, Candidate, Policy, previous_alias
from promotion.registry import journal, rollouts
from promotion.registry import records as store
from promotion.registry.client import describe_uri
from promotion.report.decision import record_files

if TYPE_CHECKING:
    from mlflow import MlflowClient


def needs_evaluation(policy: Policy) -> bool:
    return bool(policy.budgets) or any(r.source == "evaluation" for r in policy.metrics)


def run_gate(client: MlflowClient, policy: Policy, *, candidate: Candidate | None = None,
             dry_run: bool = False) -> GateResult:
    """Decide whether the candidate replaces the alias's version, and apply it unless dry_run."""
    with nothing_moved_unless_said(policy.alias):
        result = _decide(client, policy, candidate or policy.candidate, dry_run)
    if dry_run:
        return result
    alias = policy.alias
    moved = result.moved_alias
    where = result.production_version if moved == alias else \
        result.canary.canary_before if result.canary is not None else None
    with nothing_moved_unless_said(moved, where), \
            writing(client, policy.model, purpose=f"gate of @{alias}") as session:
        result = _resolve(client, result, session)
        if result.decision.outcome == "promoted":
            return _apply(client, result, session)
        return _record_only(client, result, session)


def _decide(client: MlflowClient, policy: Policy, selector: Candidate,
            dry_run: bool) -> GateResult:
    """Gather the facts (reads only) and decide."""
    model, alias = policy.model, policy.alias
    # Independent reads, concurrently: the alias (this also proves the model exists) and the
    # candidate (and, with a rollout, the model's aliases and rollout state); then both
    # versions' runs.
    first: list[Callable[[], Any]] = [partial(registry.alias_target, client, model, alias),
                                      partial(registry.resolve, client, model, selector)]
    if policy.rollout is not None:
        first.append(partial(journal.read_state, client, model))
    prod_mv, cand_mv, *state = registry.parallel(first)
    reads: list[Callable[[], VersionFacts]] = [partial(registry.version_facts, client, cand_mv)]
    if prod_mv is not None:
        reads.append(partial(registry.version_facts, client, prod_mv))
    facts = registry.parallel(reads)
    cand, prod = facts[0], (facts[1] if len(facts) > 1 else None)

    evaluation = None
    if needs_evaluation(policy) and (prod is None or prod.version != cand.version):
        evaluation = rescoring.evaluate(client, policy, cand, prod)
    pending = dry_run and prod is not None and _pending_for(prod, alias)
    decided_at = records.utc_now()
    decision = decide(policy, cand, prod, evaluation)
    canary = None
    if state and prod is not None and decision.outcome == "promoted":
        # With a rollout, a pass starts it: the canary alias moves, not the alias.
        canary, already = plan_canary(policy, cand.version, prod.version, decided_at,
                                      state[0].aliases, state[0].tags)
        if already is not None:
            decision = replace(decision, outcome="already", reasons=(already,))
    return GateResult(policy=policy, decision=decision,
                      candidate=cand, production=prod, dry_run=dry_run,
                      decided_at=decided_at, trigger=Trigger.from_env(),
                      tracking_uri=describe_uri(client), evaluation=evaluation,
                      resolved=_pending_note(prod, alias, "would be") if pending else None,
                      canary=canary)


def _pending_note(prod: VersionFacts | None, alias: str, verb: str) -> str:
    version = prod.version if prod is not None else "?"
    return (f"version {version} was left pending by an interrupted gate; @{alias} points at it, "
            f"so it {verb} recorded as promoted")


def _resolve(client: MlflowClient, result: GateResult, session: Session) -> GateResult:
    """What an interrupted command left: the recovery's note, or (for a marker written before
    intents existed) a pending version the alias points at, completed as promoted."""
    if session.recovered is not None:
        return replace(result, resolved=session.recovered.note)
    prod, alias = result.production, result.policy.alias
    if prod is not None and _pending_for(prod, alias) and session.aliases.get(alias) == \
            prod.version:
        _complete_interrupted(client, prod)
        return replace(result, resolved=_pending_note(prod, alias, "is"))
    return result


def _entry(result: GateResult, outcome: str | None = None, reason: str | None = None,
           operation: str | None = None) -> Entry:
    d = result.decision
    return Entry(kind="gate", model=d.model, alias=result.moved_alias,
                 outcome=outcome or result.outcome,
                 candidate_version=d.candidate_version, compared_to=d.production_version,
                 decided_at=result.decided_at, reason=reason or d.summary,
                 triggered_by=result.trigger.describe(), policy=result.policy.path,
                 policy_sha256=result.policy.sha256,
                 eval_sha256=result.evaluation.data_sha256 if result.evaluation else None,
                 operation=operation)


def _record_only(client: MlflowClient, result: GateResult, session: Session) -> GateResult:
    """Rejected, inconclusive or already: write the record, move nothing."""
    entry = _entry(result, operation=session.operation)
    run = store.open_run(client, entry, result.trigger)
    session.run_id = run.run_id
    result = replace(result, record_run_id=run.run_id)
    if result.decision.outcome != "already":
        # An `already` decision leaves the version's standing record (how it got there) alone.
        tags = {records.DECISION: entry.outcome, **entry.version_tags(result.trigger, run.run_id)}
        registry.set_tags(client, result.policy.model, result.candidate_version, tags)
    _close(client, run, result, entry, retag=False)  # the run was created with these tags
    return result


def _apply(client: MlflowClient, result: GateResult, session: Session) -> GateResult:
    model, alias = result.policy.model, result.moved_alias
    canary = result.canary
    version = result.candidate_version
    displaced = canary.canary_before if canary else result.production_version
    kept = previous_alias(alias)
    before = canary.replaces.to_json() if canary and canary.replaces else None
    op = Operation(client, Intent(
        operation=session.operation, kind="gate", model=model, alias=alias, previous_alias=kept,
        source=displaced, target=version, previous_source=session.aliases.get(kept),
        previous_target=displaced, started_at=records.utc_now(),
        holder=result.trigger.describe(), policy=result.policy.path,
        **({} if canary is None else {
            "rollout_alias": result.policy.alias, "rollout_before": before,
            "rollout_after": canary.state.to_json(), "outcome": "canary"})))
    op.begin()
    entry = _entry(result, outcome="pending", operation=session.operation)
    run: store.RecordRun | None = None
    undo: list[Step] = []
    try:
        run = store.open_run(client, entry, result.trigger)
        session.run_id = run.run_id
        result = replace(result, record_run_id=run.run_id)
        # The marker and its context, concurrently: all are written before anything moves,
        # which is what makes an interruption visible.
        registry.set_tags(client, model, version, {
            records.DECISION: "pending", **entry.version_tags(result.trigger, run.run_id)})
        _recheck(client, op, result, run)
        if displaced is not None:
            undo.append((f"@{kept} put back", partial(
                registry.point_alias, client, model, kept, op.intent.previous_source)))
            registry.set_alias(client, model, kept, displaced)
        if canary is not None:
            undo.append(("the rollout state put back", partial(
                rollouts.write_state, client, model, result.policy.alias, before)))
            rollouts.write_state(client, model, result.policy.alias, canary.state.to_json())
        op.move(alias, version)
    except GateConflict:
        raise
    except RegistryError as exc:
        _nothing_moved(client, op, run, exc, undo)
    result = replace(result, applied=op.moved is True)
    if op.moved is None:
        raise GateIncomplete(replace(result, missing=(f"@{alias}: its write got no answer",)))
    missing = op.finish([
        (f"the `{result.outcome}` tag on version {version}",
         partial(registry.set_tags, client, model, version, {records.DECISION: result.outcome})),
        *_replaced_rollout(client, result),
        (f"the decision record (run {run.run_id})" if run else "the decision record",
         partial(_close, client, run, result, _entry(result, operation=session.operation))),
    ])
    if missing:
        raise GateIncomplete(replace(result, missing=missing))
    return result


def _recheck(client: MlflowClient, op: Operation, result: GateResult,
             run: store.RecordRun) -> None:
    """Re-read what the decision was made against; moved since, it is a conflict (exit 3)."""
    model, alias = result.policy.model, result.policy.alias
    if result.canary is None:
        now = registry.alias_version(client, model, alias)
        if now != result.production_version:
            _conflict(client, op, replace(result, conflict=True, conflict_version=now), run)
        return
    aliases = journal.read_state(client, model).aliases
    for name, read in ((alias, result.production_version),
                       (result.canary.state.canary_alias, result.canary.canary_before)):
        if aliases.get(name) != read:
            _conflict(client, op, replace(result, conflict=True, conflict_alias=name,
                                          conflict_version=aliases.get(name)), run)


def _replaced_rollout(client: MlflowClient, result: GateResult) -> list[Step]:
    """A rollout of another version that the new one replaces is recorded as aborted."""
    canary = result.canary
    old = canary.replaces if canary is not None else None
    if old is None or old.version == result.candidate_version:
        return []
    return [(f"the `aborted` tag on version {old.version}", partial(
        registry.set_tags, client, result.policy.model, old.version, {
            records.DECISION: "aborted",
            records.REASON: f"its rollout was replaced by one of version "
                            f"{result.candidate_version}"}))]


def _conflict(client: MlflowClient, op: Operation, result: GateResult,
              run: store.RecordRun) -> NoReturn:
    """The alias moved while deciding: record the conflict, move nothing (exit 3)."""
    model, alias = result.policy.model, result.policy.alias
    reason = (f"@{alias} moved from {version_or_none(result.production_version, NOTHING)} to "
              f"{version_or_none(result.conflict_version, NOTHING)} while deciding; nothing was "
              "moved")
    registry.set_tags(client, model, result.candidate_version,
                      {records.DECISION: "conflict", records.REASON: reason})
    _close(client, run, result, _entry(result, reason=reason, operation=op.intent.operation))
    op.abandon([])
    raise GateConflict(result)


def _nothing_moved(client: MlflowClient, op: Operation, run: store.RecordRun | None,
                   exc: RegistryError, undo: list[Step]) -> NoReturn:
    """A registry failure before the move: undo what was written before it (-previous, a
    rollout's state), close the record as interrupted, and say so first (exit 3). What cannot
    be done now, the next command's recovery does."""
    intent = op.intent
    reason = f"interrupted before @{intent.alias} moved ({exc}); nothing moved"
    steps = list(reversed(undo))
    if run is not None and intent.target is not None:
        steps += [("the candidate's tag", partial(
            registry.set_tags, client, intent.model, intent.target,
            {records.DECISION: INTERRUPTED, records.REASON: reason})),
            ("the record", partial(store.set_run_outcome, client, run.run_id, INTERRUPTED,
                                   reason, failed=True))]
    op.abandon(steps)
    raise NothingMoved(f"{still(intent)}: {exc}") from exc


def _close(client: MlflowClient, run: store.RecordRun, result: GateResult, entry: Entry, *,
           retag: bool = True) -> None:
    store.close_run(client, run, entry, result.trigger, retag=retag,
                    files=record_files(result))


def _pending_for(version: VersionFacts, alias: str) -> bool:
    """The version is marked pending by a gate of `alias` (a record without an alias tag guarded
    the default alias, as read_status reads it)."""
    return (version.tags.get(records.DECISION) == "pending"
            and version.tags.get(records.ALIAS, DEFAULT_ALIAS) == alias)


def _complete_interrupted(client: MlflowClient, prod: VersionFacts) -> None:
    """The alias points at a version still marked pending: its promotion got past step 5."""
    note = f"completed at {records.utc_now()} by a later gate: the alias points here"
    registry.set_tags(client, prod.model, prod.version,
                      {records.DECISION: "promoted", records.RESOLVED: note})
    run_id = prod.tags.get(records.RECORD_RUN)
    if run_id:
        store.set_run_outcome(client, run_id, "promoted", prod.tags.get(records.REASON, note))
