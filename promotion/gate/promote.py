"""The gate: decide, then apply a pass write-ahead; rollback; status and history reads.

Applying a pass, in this order (each step one or a few registry writes):
  1. create the decision record run (outcome `pending`);
  2. tag the candidate `promotion.decision=pending` (the write-ahead marker) and its context tags;
  3. re-read the alias: if it no longer points where the decision compared against, tag the
     candidate `conflict`, close the record, raise ConflictError (exit 3); nothing moved;
  4. point `<alias>-previous` at the displaced version;
  5. point the alias at the candidate;
  6. tag the candidate `promoted`, close the record (report JSON/Markdown, chart).

A crash after step 2 leaves `pending` on the candidate, which `promote status` shows. The next gate
resolves it from where the alias actually points: if the alias points at a version left `pending`
by a gate of that same alias (its `promotion.alias` tag), step 5 happened, so it completes the
record as `promoted`; if not, nothing moved, and gating that version again decides it afresh. A
rejection writes the record (run + tags) and moves nothing. A dry run writes nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from promotion import registry, report
from promotion.engine import records
from promotion.engine.decision import decide
from promotion.engine.facts import VersionFacts, version_or_none
from promotion.engine.records import Entry, Trigger
from promotion.engine.results import NOTHING, GateConflict, GateResult
from promotion.errors import RegistryError
from promotion.evaluation import evaluate
from promotion.policy.model import DEFAULT_ALIAS, Candidate, Policy, previous_alias
from promotion.registry import records as store
from promotion.registry.client import describe_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


def needs_evaluation(policy: Policy) -> bool:
    return bool(policy.budgets) or any(r.source == "evaluation" for r in policy.metrics)


def run_gate(client: MlflowClient, policy: Policy, *, candidate: Candidate | None = None,
             dry_run: bool = False) -> GateResult:
    """Decide whether the candidate replaces the alias's version, and apply it unless dry_run."""
    selector = candidate or policy.candidate
    model, alias = policy.model, policy.alias
    # Independent reads, concurrently: the alias (this also proves the model exists) and the
    # candidate; then both versions' runs.
    first: list[Callable[[], Any]] = [partial(registry.alias_target, client, model, alias),
                                      partial(registry.resolve, client, model, selector)]
    prod_mv, cand_mv = registry.parallel(first)
    reads: list[Callable[[], VersionFacts]] = [partial(registry.version_facts, client, cand_mv)]
    if prod_mv is not None:
        reads.append(partial(registry.version_facts, client, prod_mv))
    facts = registry.parallel(reads)
    cand, prod = facts[0], (facts[1] if len(facts) > 1 else None)

    resolved = None
    if prod is not None and _pending_for(prod, alias):
        resolved = (f"version {prod.version} was left pending by an interrupted gate; "
                    f"@{alias} points at it, so it "
                    f"{'would be' if dry_run else 'is'} recorded as promoted")
        if not dry_run:
            _complete_interrupted(client, prod)

    evaluation = None
    if needs_evaluation(policy) and (prod is None or prod.version != cand.version):
        evaluation = evaluate(client, policy, cand, prod)

    decision = decide(policy, cand, prod, evaluation)
    trigger = Trigger.from_env()
    result = GateResult(policy=policy, decision=decision, candidate=cand, production=prod,
                        dry_run=dry_run, decided_at=records.utc_now(), trigger=trigger,
                        tracking_uri=describe_uri(client), evaluation=evaluation,
                        resolved=resolved)
    if dry_run:
        return result
    if decision.outcome == "promoted":
        return _apply(client, result)
    return _record_only(client, result)


def _entry(result: GateResult, outcome: str | None = None, reason: str | None = None) -> Entry:
    d = result.decision
    return Entry(kind="gate", model=d.model, alias=d.alias, outcome=outcome or result.outcome,
                 candidate_version=d.candidate_version, compared_to=d.production_version,
                 decided_at=result.decided_at, reason=reason or d.summary,
                 triggered_by=result.trigger.describe(), policy=result.policy.path,
                 policy_sha256=result.policy.sha256,
                 eval_sha256=result.evaluation.data_sha256 if result.evaluation else None)


def _record_only(client: MlflowClient, result: GateResult) -> GateResult:
    """Rejected, inconclusive or already: write the record, move nothing."""
    entry = _entry(result)
    run = store.open_run(client, entry, result.trigger)
    result = replace(result, record_run_id=run.run_id)
    if result.decision.outcome != "already":
        # An `already` decision leaves the version's standing record (how it got there) alone.
        tags = {records.DECISION: entry.outcome, **entry.version_tags(result.trigger, run.run_id)}
        registry.set_tags(client, result.policy.model, result.candidate_version, tags)
    _close(client, run, result, entry, retag=False)  # the run was created with these tags
    return result


def _apply(client: MlflowClient, result: GateResult) -> GateResult:
    model, alias = result.policy.model, result.policy.alias
    version, displaced = result.candidate_version, result.production_version

    entry = _entry(result, outcome="pending")
    run = store.open_run(client, entry, result.trigger)
    result = replace(result, record_run_id=run.run_id)
    # The marker and its context, concurrently: all are written before anything moves, which is
    # what makes an interruption visible.
    registry.set_tags(client, model, version, {
        records.DECISION: "pending", **entry.version_tags(result.trigger, run.run_id)})

    now = registry.alias_version(client, model, alias)
    if now != displaced:
        result = replace(result, conflict=True, conflict_version=now)
        reason = (f"@{alias} moved from {version_or_none(displaced, NOTHING)} to "
                  f"{version_or_none(now, NOTHING)} while deciding; nothing was moved")
        registry.set_tags(client, model, version, {records.DECISION: "conflict",
                                                   records.REASON: reason})
        _close(client, run, result, _entry(result, reason=reason))
        raise GateConflict(result)

    if displaced is not None:
        registry.set_alias(client, model, previous_alias(alias), displaced)
    registry.set_alias(client, model, alias, version)
    registry.set_tags(client, model, version, {records.DECISION: "promoted"})
    result = replace(result, applied=True)
    try:
        _close(client, run, result, _entry(result))
    except RegistryError as exc:
        raise RegistryError(f"version {version} was promoted (@{alias} moved), but its record "
                            f"run {run.run_id} could not be completed: {exc}") from exc
    return result


def _close(client: MlflowClient, run: store.RecordRun, result: GateResult, entry: Entry, *,
           retag: bool = True) -> None:
    store.close_run(client, run, entry, result.trigger, retag=retag,
                    files=report.record_files(result))


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
