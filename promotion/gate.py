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
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from promotion import record, registry
from promotion.clientlib import connect, describe_uri
from promotion.decision import Decision, decide
from promotion.errors import ConflictError, ExitCode, InvalidInput, RegistryError
from promotion.facts import EvaluationFacts, VersionFacts
from promotion.policy import DEFAULT_ALIAS, Candidate, Policy, previous_alias
from promotion.record import Entry, Trigger

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class GateResult:
    policy: Policy
    decision: Decision
    candidate: VersionFacts
    production: VersionFacts | None
    dry_run: bool
    decided_at: str
    trigger: Trigger
    tracking_uri: str  # redacted: safe to print and record
    applied: bool = False  # this gate moved the alias
    record_run_id: str | None = None
    evaluation: EvaluationFacts | None = None
    conflict_version: str | None = None  # where the alias was found at the re-read, on conflict
    conflict: bool = False
    resolved: str | None = None  # an interrupted promotion this gate completed, if any

    @property
    def candidate_version(self) -> str:
        return self.decision.candidate_version

    @property
    def production_version(self) -> str | None:
        return self.decision.production_version

    @property
    def outcome(self) -> str:
        """promoted | rejected | inconclusive | already | conflict."""
        return "conflict" if self.conflict else self.decision.outcome

    @property
    def return_code(self) -> int:
        if self.conflict:
            return int(ExitCode.REGISTRY)
        return int(ExitCode.OK if self.decision.passed else ExitCode.REJECTED)


class GateConflict(ConflictError):
    """The alias moved between the decision and its application; carries the recorded result."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        was = f"version {result.production_version}" if result.production_version else "nothing"
        now = f"version {result.conflict_version}" if result.conflict_version else "nothing"
        super().__init__(
            f"@{result.policy.alias} of model {result.policy.model!r} moved while deciding "
            f"(it pointed at {was}, now {now}); nothing was moved, version "
            f"{result.candidate_version} is recorded as conflict")


def needs_evaluation(policy: Policy) -> bool:
    return bool(policy.budgets) or any(r.source == "evaluation" for r in policy.metrics)


def run_gate(policy: Policy, *, tracking_uri: str | None = None,
             candidate: Candidate | None = None, dry_run: bool = False) -> GateResult:
    """Decide whether the candidate replaces the alias's version, and apply it unless dry_run."""
    client = connect(tracking_uri)
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
        from promotion.evaluation import evaluate

        evaluation = evaluate(policy, cand, prod)

    decision = decide(policy, cand, prod, evaluation)
    trigger = Trigger.from_env()
    result = GateResult(policy=policy, decision=decision, candidate=cand, production=prod,
                        dry_run=dry_run, decided_at=record.utc_now(), trigger=trigger,
                        tracking_uri=describe_uri(tracking_uri), evaluation=evaluation,
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
    run = record.open_run(client, entry, result.trigger)
    result = replace(result, record_run_id=run.run_id)
    if result.decision.outcome != "already":
        # An `already` decision leaves the version's standing record (how it got there) alone.
        tags = {record.DECISION: entry.outcome, **entry.version_tags(result.trigger, run.run_id)}
        registry.set_tags(client, result.policy.model, result.candidate_version, tags)
    _close(client, run, result, entry, retag=False)  # the run was created with these tags
    return result


def _apply(client: MlflowClient, result: GateResult) -> GateResult:
    model, alias = result.policy.model, result.policy.alias
    version, displaced = result.candidate_version, result.production_version

    entry = _entry(result, outcome="pending")
    run = record.open_run(client, entry, result.trigger)
    result = replace(result, record_run_id=run.run_id)
    # The marker and its context, concurrently: all are written before anything moves, which is
    # what makes an interruption visible.
    registry.set_tags(client, model, version, {
        record.DECISION: "pending", **entry.version_tags(result.trigger, run.run_id)})

    now = registry.alias_version(client, model, alias)
    if now != displaced:
        result = replace(result, conflict=True, conflict_version=now)
        reason = (f"@{alias} moved from {_v(displaced)} to {_v(now)} while deciding; "
                  "nothing was moved")
        registry.set_tags(client, model, version, {record.DECISION: "conflict",
                                                   record.REASON: reason})
        _close(client, run, result, _entry(result, reason=reason))
        raise GateConflict(result)

    if displaced is not None:
        registry.set_alias(client, model, previous_alias(alias), displaced)
    registry.set_alias(client, model, alias, version)
    registry.set_tags(client, model, version, {record.DECISION: "promoted"})
    result = replace(result, applied=True)
    try:
        _close(client, run, result, _entry(result))
    except RegistryError as exc:
        raise RegistryError(f"version {version} was promoted (@{alias} moved), but its record "
                            f"run {run.run_id} could not be completed: {exc}") from exc
    return result


def _v(version: str | None) -> str:
    return f"version {version}" if version else "nothing"


def _close(client: MlflowClient, run: record.RecordRun, result: GateResult, entry: Entry, *,
           retag: bool = True) -> None:
    from promotion import report

    rows = report.chart_rows(result) if result.evaluation is not None else []
    record.close_run(client, run, entry, result.trigger, retag=retag,
                     report_json=report.to_json_text(result),
                     report_md=report.markdown(result, chart="chart.png" if rows else None),
                     chart=rows, chart_title=f"{result.policy.model}: version "
                                             f"{result.candidate_version} vs "
                                             f"{_v(result.production_version)}")


def _pending_for(version: VersionFacts, alias: str) -> bool:
    """The version is marked pending by a gate of `alias` (a record without an alias tag guarded
    the default alias, as read_status reads it)."""
    return (version.tags.get(record.DECISION) == "pending"
            and version.tags.get(record.ALIAS, DEFAULT_ALIAS) == alias)


def _complete_interrupted(client: MlflowClient, prod: VersionFacts) -> None:
    """The alias points at a version still marked pending: its promotion got past step 5."""
    note = f"completed at {record.utc_now()} by a later gate: the alias points here"
    registry.set_tags(client, prod.model, prod.version,
                      {record.DECISION: "promoted", record.RESOLVED: note})
    run_id = prod.tags.get(record.RECORD_RUN)
    if run_id:
        record.set_run_outcome(client, run_id, "promoted", prod.tags.get(record.REASON, note))


# ---------------------------------------------------------------------------------------------
# Rollback


@dataclass(frozen=True)
class RollbackResult:
    model: str
    alias: str
    restored_version: str  # what the alias points at after the rollback
    displaced_version: str | None  # what it pointed at before (None: the alias was not set)
    dry_run: bool
    decided_at: str
    trigger: Trigger
    tracking_uri: str
    applied: bool = False
    record_run_id: str | None = None

    @property
    def previous_alias(self) -> str:
        return previous_alias(self.alias)

    @property
    def return_code(self) -> int:
        return int(ExitCode.OK)


class RollbackConflict(ConflictError):
    """An alias moved between the rollback's read and its writes; nothing was moved."""

    def __init__(self, planned: RollbackResult, now: tuple[str | None, str | None]) -> None:
        self.result = planned
        self.now = now
        super().__init__(
            f"@{planned.alias} or @{planned.previous_alias} of model {planned.model!r} moved "
            f"while rolling back (they pointed at {_v(planned.displaced_version)} and version "
            f"{planned.restored_version}, now {_v(now[0])} and {_v(now[1])}); nothing was moved")


def run_rollback(model: str, alias: str = DEFAULT_ALIAS, *, tracking_uri: str | None = None,
                 dry_run: bool = False) -> RollbackResult:
    """Point `alias` back at `<alias>-previous`, and `<alias>-previous` at what it displaced.

    Rolling back a rollback therefore flips them again. Exit 2 when there is nothing to roll
    back to; exit 3 (RollbackConflict) when either alias moves between the read and the writes.
    """
    client = connect(tracking_uri)
    planned = plan_rollback(client, model, alias, tracking_uri=tracking_uri, dry_run=dry_run)
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
                  tracking_uri: str | None = None, dry_run: bool = False) -> RollbackResult:
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
                          decided_at=record.utc_now(), trigger=Trigger.from_env(),
                          tracking_uri=describe_uri(tracking_uri))


def apply_rollback(client: MlflowClient, planned: RollbackResult) -> RollbackResult:
    """Carry out a plan: open the record, re-read both aliases, then move them and tag.

    If either alias no longer points where the plan read it, the record is closed as `conflict`
    and RollbackConflict (exit 3) is raised before anything moves. The alias is written before
    `<alias>-previous`: a crash between the two leaves both on the restored version, which the
    alias was meant to reach; the next rollback then stops with "nothing to roll back" (exit 2).
    """
    model, alias, kept = planned.model, planned.alias, planned.previous_alias
    previous, current = planned.restored_version, planned.displaced_version
    reason = f"rollback: @{alias} moved back from {_v(current)} to version {previous}"
    entry = Entry(kind="rollback", model=model, alias=alias, outcome="rollback",
                  candidate_version=previous, compared_to=current, decided_at=planned.decided_at,
                  reason=reason, triggered_by=planned.trigger.describe())
    run = record.open_run(client, entry, planned.trigger)
    run_id = run.run_id
    result = replace(planned, record_run_id=run_id)

    now = _rollback_aliases(client, model, alias)
    if now != (current, previous):
        conflict = RollbackConflict(result, now)
        record.set_run_outcome(client, run_id, "conflict", str(conflict))
        raise conflict

    registry.set_alias(client, model, alias, previous)
    if current is not None:
        registry.set_alias(client, model, kept, current)
    result = replace(result, applied=True)

    restored = {record.DECISION: "restored", **entry.version_tags(result.trigger, run_id)}
    writes: list[Callable[[], None]] = [
        partial(registry.set_tags, client, model, previous, restored)]
    if current is not None:
        writes.append(partial(registry.set_tags, client, model, current, {
            record.DECISION: "rolled_back", record.DECIDED_AT: result.decided_at,
            record.COMPARED_TO: previous,
            record.REASON: f"replaced by version {previous} in a rollback of @{alias}",
            record.RECORD_RUN: run_id}))
    registry.parallel(writes)

    from promotion import report

    record.close_run(client, run, entry, result.trigger, retag=False,
                     report_json=report.to_json_text(result),
                     report_md=report.markdown(result))
    return result


# ---------------------------------------------------------------------------------------------
# Status and history


@dataclass(frozen=True)
class VersionStatus:
    version: str
    aliases: tuple[str, ...]
    decision: str | None
    decided_at: str | None
    compared_to: str | None
    reason: str | None
    note: str | None = None  # what a `pending` decision means here


@dataclass(frozen=True)
class ModelStatus:
    model: str
    aliases: tuple[tuple[str, str], ...]  # (alias, version), sorted by alias
    versions: tuple[VersionStatus, ...]  # every aliased or pending version, newest first
    latest_version: str | None
    tracking_uri: str
    return_code: int = field(default=int(ExitCode.OK))

    @property
    def pending(self) -> tuple[VersionStatus, ...]:
        return tuple(v for v in self.versions if v.decision == "pending")


def read_status(model: str, *, tracking_uri: str | None = None) -> ModelStatus:
    """Every alias, its version and that version's last decision; and any pending decision."""
    client = connect(tracking_uri)
    rm = registry.registered_model(client, model)
    aliases: dict[str, str] = {str(k): str(v) for k, v in (rm.aliases or {}).items()}
    wanted = sorted(set(aliases.values()), key=int, reverse=True)
    calls: list[Callable[[], Any]] = [
        partial(registry.versions_tagged, client, model, record.DECISION, "pending"),
        partial(_latest_or_none, client, model),
        *[partial(registry.get_version, client, model, v) for v in wanted],
    ]
    found = registry.parallel(calls)
    pending, latest, aliased = found[0], found[1], found[2:]
    by_version = {str(mv.version): mv for mv in [*aliased, *pending]}
    rows = [_version_status(mv, aliases) for mv in by_version.values()]
    rows.sort(key=lambda r: int(r.version), reverse=True)
    return ModelStatus(model=model, aliases=tuple(sorted(aliases.items())),
                       versions=tuple(rows), latest_version=latest,
                       tracking_uri=describe_uri(tracking_uri))


def _latest_or_none(client: MlflowClient, model: str) -> str | None:
    try:
        return str(registry.latest_version(client, model).version)
    except InvalidInput:
        return None  # a model without versions


def _version_status(mv: Any, aliases: dict[str, str]) -> VersionStatus:
    tags = dict(mv.tags or {})
    version = str(mv.version)
    held = tuple(sorted(a for a, v in aliases.items() if v == version))
    decision = tags.get(record.DECISION)
    note = None
    if decision == "pending":
        gated = tags.get(record.ALIAS, DEFAULT_ALIAS)
        if aliases.get(gated) == version:
            note = (f"interrupted after @{gated} moved here; the next gate records it as "
                    "promoted")
        else:
            note = (f"interrupted before @{gated} moved; nothing was moved; gate this version "
                    "again to decide it")
    compared = tags.get(record.COMPARED_TO)
    return VersionStatus(version=version, aliases=held, decision=decision,
                         decided_at=tags.get(record.DECIDED_AT),
                         compared_to=None if compared == record.NONE else compared,
                         reason=tags.get(record.REASON), note=note)


@dataclass(frozen=True)
class History:
    model: str
    entries: tuple[Entry, ...]
    limit: int
    tracking_uri: str
    return_code: int = field(default=int(ExitCode.OK))


def read_history(model: str, *, tracking_uri: str | None = None, limit: int = 20) -> History:
    """Decisions about `model`, newest first (a query on the decisions experiment)."""
    client = connect(tracking_uri)
    entries = record.history(client, model, limit)
    if not entries:
        registry.registered_model(client, model)  # no record at all: is the model known?
    return History(model=model, entries=tuple(entries), limit=limit,
                   tracking_uri=describe_uri(tracking_uri))
