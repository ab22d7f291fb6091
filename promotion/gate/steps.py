"""What `promote rollout` writes: advance, abort, promote, or clear a stale rollout.

Each holds the model's lease (promotion.gate.operation.writing), records its intent, opens its
decision record (kind `rollout`), re-reads what it judged, then makes its one move:

    advance  the state tag becomes the next step's            (intent kind `step`)
    abort    the canary alias is removed; then the state goes  (intent kind `abort`)
    promote  -previous, then the guarded alias; then the canary alias and the state go
                                                                 (intent kind `gate`)
    clear    a stale state (its canary alias moved elsewhere) is removed (intent kind `step`)

and finishes the rest, retried. A failure before the move is exit 3 (nothing moved, said first);
after it, or when its answer was lost, exit 5 with what is missing; the intent tells the next
command how to finish (promotion.gate.recovery). Something changed since the read (the rollout's
step, the canary alias, or, for a promotion, the guarded alias) is a conflict: recorded, nothing
moves, exit 3.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from promotion import registry
from promotion.engine import records
from promotion.engine.intent import Intent, Kind
from promotion.engine.naming import version_or_none
from promotion.engine.records import Entry
from promotion.engine.results import RolloutConflict, RolloutIncomplete, RolloutResult
from promotion.engine.rollout import RolloutState, read_state
from promotion.errors import NothingMoved, RegistryError
from promotion.gate.operation import Operation, Session, Step, nothing_moved_unless_said, writing
from promotion.gate.recovery import INTERRUPTED
from promotion.policy.model import previous_alias
from promotion.registry import records as store
from promotion.registry import rollouts
from promotion.report.rollout import rollout_files
from promotion.report.rollout_chart import timeline, timeline_png

if TYPE_CHECKING:
    from mlflow import MlflowClient

TIMELINE_RECORDS = 50  # the model's latest decisions read for a rollout's timeline


def advance(client: MlflowClient, result: RolloutResult) -> RolloutResult:
    """The next step: the rollout state tag moves to it (the endpoints read the new share)."""
    state = _state(result)
    new = state.advanced(records.utc_now())
    with _writing(client, result, state.canary_alias, state.version) as session:
        op = _operation(client, result, session, kind="step", alias=state.canary_alias,
                        source=state.position, target=new.position, after=new.to_json())
        run = _begin(client, op, result, session, state.canary_alias)
        try:
            _recheck(client, op, result, session, run, guarded=False)
            op.move_state(state.alias, new.to_json(), new.position)
        except RolloutConflict:
            raise
        except RegistryError as exc:
            _nothing_moved(client, op, run, exc)
        result = replace(result, applied=op.moved is True, advanced_to=new,
                         record_run_id=run.run_id)
        return _finish(client, op, result, run, "advanced", state.canary_alias, [])


def abort(client: MlflowClient, result: RolloutResult) -> RolloutResult:
    """End the rollout: the canary alias goes first (no endpoint gives it traffic once it is
    gone), then the state; the candidate is recorded as aborted."""
    state = _state(result)
    canary = state.canary_alias
    with _writing(client, result, canary, state.version) as session:
        op = _operation(client, result, session, kind="abort", alias=canary,
                        source=state.version, target=None, after=None, outcome="aborted")
        run = _begin(client, op, result, session, canary)
        try:
            _recheck(client, op, result, session, run, guarded=False)
            op.move(canary, None)
        except RolloutConflict:
            raise
        except RegistryError as exc:
            _nothing_moved(client, op, run, exc)
        result = replace(result, applied=op.moved is True, record_run_id=run.run_id)
        entry = _entry(result, "aborted", canary, session.operation)
        return _finish(client, op, result, run, "aborted", canary, [
            ("the rollout state removed", partial(
                rollouts.write_state, client, result.policy.model, state.alias, None)),
            (f"the `aborted` tag on version {state.version}", partial(
                registry.set_tags, client, result.policy.model, state.version,
                {records.DECISION: "aborted", **entry.version_tags(result.trigger, run.run_id)}
            ))])


def promote(client: MlflowClient, result: RolloutResult) -> RolloutResult:
    """The last step passed: the guarded alias moves to the candidate through the gate's
    write-ahead path (-previous first), then the canary alias and the state go."""
    state = _state(result)
    model, alias, kept = result.policy.model, state.alias, previous_alias(state.alias)
    displaced = result.production
    with _writing(client, result, alias, displaced) as session:
        op = _operation(client, result, session, kind="gate", alias=alias, source=displaced,
                        target=state.version, after=None, outcome="promoted",
                        previous=(session.aliases.get(kept), displaced),
                        retire=state.canary_alias)
        run = _begin(client, op, result, session, alias)
        entry = _entry(result, "pending", alias, session.operation)
        undo: list[Step] = []
        try:
            _recheck(client, op, result, session, run, guarded=True)
            registry.set_tags(client, model, state.version, {
                records.DECISION: "pending", **entry.version_tags(result.trigger, run.run_id)})
            if displaced is not None:
                undo.append((f"@{kept} put back", partial(
                    registry.point_alias, client, model, kept, op.intent.previous_source)))
                registry.set_alias(client, model, kept, displaced)
            op.move(alias, state.version)
        except RolloutConflict:
            raise
        except RegistryError as exc:
            _nothing_moved(client, op, run, exc, undo, candidate=state.version)
        result = replace(result, applied=op.moved is True, record_run_id=run.run_id)
        return _finish(client, op, result, run, "promoted", alias, [
            (f"the `promoted` tag on version {state.version}", partial(
                registry.set_tags, client, model, state.version,
                {records.DECISION: "promoted"})),
            (f"@{state.canary_alias} removed", partial(
                registry.delete_alias, client, model, state.canary_alias)),
            ("the rollout state removed", partial(
                rollouts.write_state, client, model, alias, None))])


def clear_stale(client: MlflowClient, result: RolloutResult, canary: str | None,
                dry_run: bool) -> RolloutResult:
    """The state names a version the canary alias no longer points at (`canary`: moved or
    removed outside Promote): no endpoint follows it; remove it, recorded as an abort."""
    state = _state(result)
    why = (f"the rollout of version {state.version} was stale: @{state.canary_alias} points at "
           f"{version_or_none(canary, 'nothing')} (moved outside Promote); its state is removed")
    result = replace(result, abort_reason=result.abort_reason or why, note=why)
    if dry_run:
        return result
    with _writing(client, result, state.canary_alias, canary) as session:
        op = _operation(client, result, session, kind="step", alias=state.canary_alias,
                        source=state.position, target=None, after=None, outcome="aborted")
        run = _begin(client, op, result, session, state.canary_alias)
        try:
            if read_state(session.tags, state.alias)[0] != state:
                _conflict(client, op, result, run, f"the rollout of @{state.alias} changed")
            op.move_state(state.alias, None, None)
        except RolloutConflict:
            raise
        except RegistryError as exc:
            _nothing_moved(client, op, run, exc)
        result = replace(result, applied=op.moved is True, record_run_id=run.run_id)
        return _finish(client, op, result, run, "aborted", state.canary_alias, [])


# -- the shared steps ----------------------------------------------------------------------------


def _state(result: RolloutResult) -> RolloutState:
    assert result.state is not None
    return result.state


@contextmanager
def _writing(client: MlflowClient, result: RolloutResult, alias: str,
             where: str | None) -> Iterator[Session]:
    """The lease (and recovery), with any registry failure before a move said as "nothing
    moved" with where `alias` still is."""
    with nothing_moved_unless_said(alias, where), \
            writing(client, result.policy.model,
                    purpose=f"rollout of @{_state(result).alias}") as session:
        yield session


def _operation(client: MlflowClient, result: RolloutResult, session: Session, *, kind: Kind,
               alias: str, source: str | None, target: str | None, after: str | None,
               outcome: str | None = None,
               previous: tuple[str | None, str | None] = (None, None),
               retire: str | None = None) -> Operation:
    state = _state(result)
    return Operation(client, Intent(
        operation=session.operation, kind=kind, model=result.policy.model,
        alias=alias, previous_alias=previous_alias(alias), source=source, target=target,
        previous_source=previous[0], previous_target=previous[1],
        started_at=records.utc_now(), holder=result.trigger.describe(),
        policy=result.policy.path, rollout_alias=state.alias, rollout_before=state.to_json(),
        rollout_after=after, retire=retire, outcome=outcome, record_kind="rollout"))


def _entry(result: RolloutResult, outcome: str, alias: str, operation: str) -> Entry:
    state = _state(result)
    reason = result.abort_reason or (result.decision.why if result.decision else "")
    return Entry(kind="rollout", model=result.policy.model, alias=alias, outcome=outcome,
                 candidate_version=state.version, compared_to=result.production,
                 decided_at=result.decided_at, reason=reason,
                 triggered_by=result.trigger.describe(), policy=result.policy.path,
                 policy_sha256=result.policy.sha256, operation=operation)


def _begin(client: MlflowClient, op: Operation, result: RolloutResult, session: Session,
           alias: str) -> store.RecordRun:
    """The intent, then the record run (outcome `pending`)."""
    op.begin()
    try:
        run = store.open_run(client, _entry(result, "pending", alias, session.operation),
                             result.trigger)
    except RegistryError as exc:
        _nothing_moved(client, op, None, exc)
    session.run_id = run.run_id
    return run


def _recheck(client: MlflowClient, op: Operation, result: RolloutResult, session: Session,
             run: store.RecordRun, *, guarded: bool) -> None:
    """What was judged still holds under the lease: the same step of the same rollout, the
    canary alias on its version, and (for a promotion) the guarded alias where it was read."""
    state = _state(result)
    if read_state(session.tags, state.alias)[0] != state:
        _conflict(client, op, result, run, f"the rollout of @{state.alias} changed")
    canary = session.aliases.get(state.canary_alias)
    if canary != state.version:
        _conflict(client, op, result, run, f"@{state.canary_alias} moved from version "
                                           f"{state.version} to {version_or_none(canary)}")
    now = session.aliases.get(state.alias)
    if guarded and now != result.production:
        _conflict(client, op, result, run, f"@{state.alias} moved from "
                                           f"{version_or_none(result.production)} to "
                                           f"{version_or_none(now)}")


def _conflict(client: MlflowClient, op: Operation, result: RolloutResult,
              run: store.RecordRun, what: str) -> NoReturn:
    conflict = RolloutConflict(replace(result, record_run_id=run.run_id), what)
    store.set_run_outcome(client, run.run_id, "conflict", str(conflict))
    op.abandon([])
    raise conflict


def _nothing_moved(client: MlflowClient, op: Operation, run: store.RecordRun | None,
                   exc: RegistryError, undo: Sequence[Step] = (),
                   candidate: str | None = None) -> NoReturn:
    intent = op.intent
    reason = f"interrupted before @{intent.alias} moved ({exc}); nothing moved"
    steps = list(reversed(undo))
    if candidate is not None:
        steps.append(("the candidate's tag", partial(
            registry.set_tags, client, intent.model, candidate,
            {records.DECISION: "canary", records.REASON: reason})))
    if run is not None:
        steps.append(("the record", partial(store.set_run_outcome, client, run.run_id,
                                            INTERRUPTED, reason, failed=True)))
    op.abandon(steps)
    where = f"@{intent.alias} still on {version_or_none(intent.source, 'nothing')}" \
        if intent.kind != "step" else \
        f"the rollout still at step {_state_of(intent).step + 1}"
    raise NothingMoved(f"{where}; nothing moved: {exc}") from exc


def _timeline(client: MlflowClient, result: RolloutResult, final: Entry) -> dict[str, bytes]:
    """`timeline.png`: this rollout's decisions so far, this one included (none when the
    records cannot be read: the chart is a view, the record does not depend on it)."""
    state = _state(result)
    try:
        earlier = store.history(client, result.policy.model, TIMELINE_RECORDS)
    except RegistryError:
        return {}
    ours = [e for e in earlier if e.candidate_version == state.version
            and e.kind in ("gate", "rollout") and e.decided_at >= state.started_at
            and e.operation != final.operation]
    points = timeline([*ours, final], state.steps)
    title = (f"{result.policy.model} version {state.version} on @{state.canary_alias} "
             f"({state.mode}): {final.outcome}")
    return {"timeline.png": timeline_png(points, title)}


def _state_of(intent: Intent) -> RolloutState:
    state = RolloutState.from_json(intent.rollout_before or "")
    assert state is not None
    return state


def _finish(client: MlflowClient, op: Operation, result: RolloutResult, run: store.RecordRun,
            outcome: str, alias: str, steps: list[Step]) -> RolloutResult:
    """The writes that complete an applied move, then the record; what stays missing is exit 5
    (the intent stays for the next command)."""
    if op.moved is None:
        raise RolloutIncomplete(replace(result, missing=(
            f"@{op.intent.alias}: its write got no answer" if op.intent.kind != "step" else
            "the rollout state: its write got no answer",)))
    final = _entry(result, outcome, alias, op.intent.operation)
    files = {**rollout_files(result), **_timeline(client, result, final)}
    missing = op.finish([*steps, (f"the decision record (run {run.run_id})", partial(
        store.close_run, client, run, final, result.trigger, files=files))])
    if missing:
        raise RolloutIncomplete(replace(result, missing=missing))
    return result
