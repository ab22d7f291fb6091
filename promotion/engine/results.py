"""What the services return: frozen results that the renderers print and tests inspect.

Each result says what was decided and what was written; `return_code` is its exit code (the CLI
boundary reads it). The conflicts are errors that carry the result that was recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from promotion.engine.decision import Decision
from promotion.engine.facts import EvaluationFacts, VersionFacts
from promotion.engine.intent import Intent, State
from promotion.engine.naming import version_or_none
from promotion.engine.records import Entry, Trigger
from promotion.engine.rollout import CanaryStart, RolloutState
from promotion.engine.step import StepDecision, StepFacts
from promotion.engine.watch import WatchDecision, WatchFacts
from promotion.errors import ConflictError, ExitCode, IncompleteError, RegistryError
from promotion.policy.model import Policy, previous_alias

NOTHING = "nothing"  # what an unset alias points at, in messages


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
    # What should have followed the move and could not be written (empty: the record is
    # complete); the write-ahead intent stays, and the model's next command completes it.
    missing: tuple[str, ...] = ()
    # A pass of a policy with a rollout: the canary alias moves instead (promote rollout).
    canary: CanaryStart | None = None
    conflict_alias: str | None = None  # the alias found moved at the re-read (default: alias)

    @property
    def candidate_version(self) -> str:
        return self.decision.candidate_version

    @property
    def production_version(self) -> str | None:
        return self.decision.production_version

    @property
    def outcome(self) -> str:
        """promoted | canary (a rollout started) | rejected | inconclusive | already |
        conflict."""
        if self.conflict:
            return "conflict"
        if self.canary is not None and self.decision.outcome == "promoted":
            return "canary"
        return self.decision.outcome

    @property
    def moved_alias(self) -> str:
        """The alias a pass moves: the canary alias when it starts a rollout."""
        return self.canary.state.canary_alias if self.canary is not None else \
            self.policy.alias

    @property
    def return_code(self) -> int:
        if self.conflict:
            return int(ExitCode.REGISTRY)
        if self.missing:
            return int(ExitCode.INCOMPLETE)
        return int(ExitCode.OK if self.decision.passed else ExitCode.REJECTED)


def incomplete_message(alias: str, model: str, target: str, moved: bool,
                       missing: tuple[str, ...], hint: str) -> str:
    """What an incomplete operation says, what the registry holds first."""
    where = (f"@{alias} of model {model!r} moved to version {target}" if moved else
             f"@{alias} of model {model!r} may have moved to version {target} (the write's "
             "answer was lost)")
    return (f"{where}; its record is incomplete (missing: {'; '.join(missing)}); run "
            f"`{hint}` (or `promote status {model}`) to complete it")


class GateIncomplete(IncompleteError):
    """The alias moved (or may have) but the gate's record is incomplete (exit 5)."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(incomplete_message(
            result.moved_alias, result.policy.model, result.candidate_version, result.applied,
            result.missing, f"promote gate {result.policy.path}"))


class GateConflict(ConflictError):
    """The alias moved between the decision and its application; carries the recorded result."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        alias = result.conflict_alias or result.policy.alias
        read = result.production_version if alias == result.policy.alias else \
            result.canary.canary_before if result.canary is not None else None
        was = version_or_none(read, NOTHING)
        now = version_or_none(result.conflict_version, NOTHING)
        super().__init__(
            f"@{alias} of model {result.policy.model!r} moved while deciding "
            f"(it pointed at {was}, now {now}); nothing was moved, version "
            f"{result.candidate_version} is recorded as conflict")


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
    completed: str | None = None  # this command completed an interrupted rollback (what it did)
    missing: tuple[str, ...] = ()  # what should have followed the move and is not written
    kind: str = "rollback"  # or "watch": the watch rolled it back after a breach

    @property
    def previous_alias(self) -> str:
        return previous_alias(self.alias)

    @property
    def return_code(self) -> int:
        return int(ExitCode.INCOMPLETE if self.missing else ExitCode.OK)


class RollbackIncomplete(IncompleteError):
    """@alias moved back (or may have) but the rest of the rollback is not written (exit 5)."""

    def __init__(self, result: RollbackResult) -> None:
        self.result = result
        hint = f"promote rollback {result.model}" + (
            "" if result.alias == "Production" else f" --alias {result.alias}")
        super().__init__(incomplete_message(result.alias, result.model, result.restored_version,
                                            result.applied, result.missing, hint))


class RollbackConflict(ConflictError):
    """An alias moved between the rollback's read and its writes; nothing was moved."""

    def __init__(self, planned: RollbackResult, now: tuple[str | None, str | None]) -> None:
        self.result = planned
        self.now = now
        was = version_or_none(planned.displaced_version, NOTHING)
        current, previous = (version_or_none(v, NOTHING) for v in now)
        super().__init__(
            f"@{planned.alias} or @{planned.previous_alias} of model {planned.model!r} moved "
            f"while rolling back (they pointed at {was} and version {planned.restored_version}, "
            f"now {current} and {previous}); nothing was moved")


@dataclass(frozen=True)
class WatchResult:
    """One watch of the version behind an alias: what was measured, judged and done."""

    policy: Policy
    decision: WatchDecision | None  # None: no version holds the alias
    facts: WatchFacts | None
    window_start: float  # epoch seconds
    window_end: float
    dry_run: bool
    log: str  # the inference log, redacted
    tracking_uri: str
    trigger: Trigger
    rollback: RollbackResult | None = None  # the watch moved the alias back
    record_run_id: str | None = None  # the decision record of a breach
    monitoring_run_id: str | None = None  # where the window's metrics were logged
    note: str | None = None  # e.g. "no version holds @Production"
    chart_png: bytes | None = field(default=None, repr=False, compare=False)  # signals over time
    # The same as text: (signal, ((Unix seconds, value), ...)) of the version's windows so far.
    history: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = field(
        default=(), repr=False, compare=False)

    @property
    def outcome(self) -> str:
        """healthy | insufficient_data | breach (rolled back or alerted: see `action`)."""
        return self.decision.outcome if self.decision else "insufficient_data"

    @property
    def action(self) -> str:
        """none | rollback (the alias was moved back; in a dry run: would be) | alert (recorded;
        nothing moved) | rollback-not-applied (called for, and it moved nothing: exit 3)."""
        if self.decision is None:
            return "none"
        if self.decision.action == "rollback" and not self.dry_run and self.rollback is None:
            return "rollback-not-applied"
        return self.decision.action

    @property
    def return_code(self) -> int:
        return int(ExitCode.REJECTED if self.outcome == "breach" else ExitCode.OK)


class WatchNotApplied(RegistryError):
    """The watch found a breach that calls for a rollback, and the rollback moved nothing (the
    model's lease was held, the registry failed, or an alias moved since the watch read it):
    exit 3. Carries the watch's result, so its table is still shown."""

    def __init__(self, result: WatchResult, cause: RegistryError) -> None:
        self.result = result
        self.cause = cause
        super().__init__(f"{cause}; the breach stands and the next watch acts on it again")


@dataclass(frozen=True)
class RolloutResult:
    """One run of `promote rollout`: the step judged, and what was done (or, dry, would be)."""

    policy: Policy
    state: RolloutState | None  # the rollout as read (None: none in progress)
    production: str | None  # where @alias pointed when read
    dry_run: bool
    decided_at: str
    trigger: Trigger
    tracking_uri: str
    log: str | None = None  # the inference log, redacted
    decision: StepDecision | None = None  # None: nothing was judged
    facts: StepFacts | None = None
    # Why it was aborted other than by a breach: who asked (`--abort`), or a stale state.
    abort_reason: str | None = None
    applied: bool = False  # this command moved something
    advanced_to: RolloutState | None = None  # the state after an advance
    record_run_id: str | None = None
    resolved: str | None = None  # an interrupted operation this command finished first
    missing: tuple[str, ...] = ()
    note: str | None = None  # e.g. "no rollout of @Production in progress"

    @property
    def action(self) -> str:
        """none | wait | advance | promote | abort (in a dry run: what would be done)."""
        if self.abort_reason is not None:
            return "abort"
        return self.decision.action if self.decision is not None else "none"

    @property
    def moved_alias(self) -> str | None:
        if self.state is None:
            return None
        return self.state.alias if self.action == "promote" else self.state.canary_alias

    @property
    def return_code(self) -> int:
        if self.missing:
            return int(ExitCode.INCOMPLETE)
        if self.action == "abort" and self.abort_reason is None:
            return int(ExitCode.REJECTED)  # a breach
        return int(ExitCode.OK)


class RolloutIncomplete(IncompleteError):
    """The rollout's move was made (or may have been) and its record is incomplete (exit 5)."""

    def __init__(self, result: RolloutResult) -> None:
        self.result = result
        state = result.state
        assert state is not None
        alias = result.moved_alias or state.canary_alias
        if result.action == "advance":
            where = (f"the rollout of version {state.version} moved to step {state.step + 2}"
                     if result.applied else f"the rollout of version {state.version} may have "
                     f"moved to step {state.step + 2} (the write's answer was lost)")
            text = (f"{where}; its record is incomplete (missing: {'; '.join(result.missing)}); "
                    f"run `promote rollout {result.policy.path}` (or `promote status "
                    f"{result.policy.model}`) to complete it")
        else:
            target = state.version if result.action == "promote" else "nothing (removed)"
            text = incomplete_message(alias, result.policy.model, target, result.applied,
                                      result.missing, f"promote rollout {result.policy.path}")
            if result.action != "promote":
                text = text.replace("moved to version nothing (removed)", "was removed")
        super().__init__(text)


class RolloutConflict(ConflictError):
    """The rollout or an alias changed between the read and the write; nothing was moved."""

    def __init__(self, result: RolloutResult, what: str) -> None:
        self.result = result
        super().__init__(f"{what} while deciding; nothing was moved (the rollout of model "
                         f"{result.policy.model!r} is recorded as conflict)")


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
class Interrupted:
    """An alias-moving operation that did not finish, as `status` reads it."""

    intent: Intent
    state: State  # what became of it: applied | not_applied | superseded

    @property
    def summary(self) -> str:
        i = self.intent
        moved = ("the rollout moved" if i.kind == "step" else f"@{i.alias} was removed"
                 if i.target is None else f"@{i.alias} moved to version {i.target}")
        said = {"applied": f"{moved}; its record is incomplete",
                "not_applied": f"@{i.alias} did not move; nothing moved" if i.kind != "step"
                else "the rollout did not move; nothing moved",
                "superseded": f"@{i.alias} was moved elsewhere outside Promote"}[self.state]
        return f"{i.describe}: {said}; `{i.finish_hint()}` finishes it"


@dataclass(frozen=True)
class ModelStatus:
    model: str
    aliases: tuple[tuple[str, str], ...]  # (alias, version), sorted by alias
    versions: tuple[VersionStatus, ...]  # every aliased or pending version, newest first
    latest_version: str | None
    tracking_uri: str
    interrupted: Interrupted | None = None  # an operation's write-ahead intent left behind
    lease: str | None = None  # who holds the model's lease now (someone is writing)
    rollouts: tuple[RolloutState, ...] = ()  # in progress, one per guarded alias
    return_code: ClassVar[int] = int(ExitCode.OK)

    @property
    def pending(self) -> tuple[VersionStatus, ...]:
        return tuple(v for v in self.versions if v.decision == "pending")


@dataclass(frozen=True)
class History:
    model: str
    entries: tuple[Entry, ...]
    limit: int
    tracking_uri: str
    return_code: ClassVar[int] = int(ExitCode.OK)


# The main job (`promote demo`)


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float


@dataclass(frozen=True)
class Prediction:
    row: int  # the row of the dataset (its index), so anyone can look it up
    predicted: float
    actual: float


@dataclass(frozen=True)
class GateRow:
    """One gated candidate, as the decision table shows it."""

    config: str
    version: str
    policy: str
    outcome: str
    compared_to: str | None
    reason: str
    same_as_production: bool  # same config and data fingerprints as the version it was compared to


@dataclass(frozen=True)
class DemoResult:
    tracking_uri: str  # redacted
    model: str
    alias: str
    trained: tuple[Any, ...]  # promotion.training.TrainResult
    gates: tuple[GateRow, ...]
    production_before: str | None
    production_after: str | None
    predictions: tuple[Prediction, ...]
    served_rmse: float | None  # of the loaded alias on the whole holdout
    phases: tuple[Phase, ...] = field(default_factory=tuple)
    watch_loop: Any = None  # promotion.demo_watch.WatchLoop, when the loop ran
    rollout_loop: Any = None  # promotion.demo_rollout.RolloutLoop, when the loop ran

    # The job ran: whatever each gate decided is a result, not a failure of the demo.
    return_code: ClassVar[int] = int(ExitCode.OK)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri, "model": self.model, "alias": self.alias,
            "trained": [t.to_dict() for t in self.trained],
            "gates": [asdict(g) for g in self.gates],
            "production_before": self.production_before,
            "production_after": self.production_after,
            "predictions": [asdict(p) for p in self.predictions],
            "served_rmse": self.served_rmse,
            "phases": [asdict(p) for p in self.phases], "seconds": self.seconds,
            "watch_loop": None if self.watch_loop is None else {
                "production": self.watch_loop.production,
                "promoted_version": self.watch_loop.leaky.version,
                "gate": self.watch_loop.gate.outcome,
                "watch": self.watch_loop.watch.outcome,
                "action": self.watch_loop.watch.action,
                "breached": [c.rule for c in (self.watch_loop.watch.decision.breached
                                              if self.watch_loop.watch.decision else ())],
                "served_after": self.watch_loop.served_after},
            "rollout_loop": None if self.rollout_loop is None else {
                "production": self.rollout_loop.production,
                "aborted_version": self.rollout_loop.leaky.version,
                "aborted": self.rollout_loop.aborted.action,
                "breached": [c.rule for c in (self.rollout_loop.aborted.decision.breached
                                              if self.rollout_loop.aborted.decision else ())],
                "promoted_version": self.rollout_loop.retrain.version,
                "steps": [s.action for s in self.rollout_loop.steps],
                "served_after": self.rollout_loop.served_after},
        }
