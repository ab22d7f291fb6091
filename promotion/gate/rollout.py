"""`promote rollout`: judge the step in force of a rollout on live traffic, and act on it.

    read     the model's aliases, its rollout state (promotion.rollout.<alias>) and any intent
    measure  the candidate and Production over the step's window (from its start to now), from
             the inference log (promotion.gate.live): the same window for both
    judge    every rule of `rollout:` (promotion.engine.step.judge_step, pure)
    act      wait (nothing written); advance (the state tag moves to the next step); abort (the
             canary alias removed, then the state cleared); promote (the guarded alias moves
             through the gate's write-ahead path, then the canary alias and the state go)

Every act holds the model's lease, records its intent first, re-reads what it judged (the
rollout's step, the canary alias, the guarded alias: changed since, it is a conflict and nothing
moves, exit 3), and is completed or cleanly closed by the next command if it is interrupted
(promotion.gate.recovery). A dry run reads and judges and writes nothing anywhere.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from promotion import registry
from promotion.engine import records
from promotion.engine.records import Trigger
from promotion.engine.results import RolloutResult
from promotion.engine.rollout import RolloutState, read_state
from promotion.engine.step import StepFacts, judge_step
from promotion.errors import InvalidInput, LogUnavailable
from promotion.gate import live
from promotion.gate.operation import nothing_moved_unless_said, writing
from promotion.gate.steps import abort, advance, clear_stale, promote
from promotion.monitoring.logstore import LogStore
from promotion.policy.model import Policy, Rollout
from promotion.registry import journal
from promotion.registry.client import describe_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


def run_rollout(client: MlflowClient, policy: Policy, log: LogStore, *, dry_run: bool = False,
                now: float | None = None) -> RolloutResult:
    """Judge the step in force of the rollout of `policy.alias` and advance, abort or promote."""
    rollout = rollout_of(policy)
    result, canary = _read(client, policy, dry_run, log.where)
    state = result.state
    if state is None:
        return result
    if canary != state.version:
        return clear_stale(client, result, canary, dry_run)  # moved outside Promote
    if result.production is None:
        return replace(result, note=f"no version holds @{policy.alias}: nothing to compare "
                                    f"version {state.version} with; the rollout waits")
    end = time.time() if now is None else now
    with nothing_moved_unless_said(state.canary_alias, state.version):
        facts = _facts(client, policy, rollout, log, state, result.production, end, dry_run)
    decision = judge_step(rollout, facts)
    result = replace(result, decision=decision, facts=facts)
    if dry_run or decision.action == "wait":
        return result
    if decision.action == "advance":
        return advance(client, result)
    if decision.action == "abort":
        return abort(client, result)
    return promote(client, result)


def abort_rollout(client: MlflowClient, policy: Policy, *, reason: str | None = None,
                  dry_run: bool = False) -> RolloutResult:
    """End the rollout of `policy.alias` now, as a person asks (`promote rollout --abort`)."""
    rollout_of(policy)
    result, canary = _read(client, policy, dry_run, None)
    state = result.state
    if state is None:
        raise InvalidInput(f"nothing to abort: no rollout of @{policy.alias} of model "
                           f"{policy.model!r} is in progress")
    who = result.trigger.describe()
    result = replace(result, abort_reason=f"aborted by {who}" + (f": {reason}" if reason
                                                                      else ""))
    if canary != state.version:
        return clear_stale(client, result, canary, dry_run)
    if dry_run:
        return result
    return abort(client, result)


def rollout_of(policy: Policy) -> Rollout:
    if policy.rollout is None:
        raise InvalidInput(f"{policy.path}: this policy has no 'rollout:' block; add one to "
                           f"roll candidates out on live traffic (docs/rollout.md)")
    return policy.rollout


def _read(client: MlflowClient, policy: Policy, dry_run: bool,
          log: str | None) -> tuple[RolloutResult, str | None]:
    """The model's rollout of the policy's alias and where its canary alias points, after
    finishing whatever an interrupted command left (unless this is a dry run: it only reads)."""
    with nothing_moved_unless_said(policy.alias):
        model = journal.read_state(client, policy.model)
        resolved = None
        if model.intent is not None and not dry_run:
            with writing(client, policy.model, purpose=f"rollout of @{policy.alias}") as session:
                resolved = session.recovered.note if session.recovered else None
            model = journal.read_state(client, policy.model)
    state, problem = read_state(model.tags, policy.alias)
    if problem is not None:
        raise InvalidInput(f"model {policy.model!r}: {problem}; `promote rollout {policy.path} "
                           "--abort` clears it")
    note = None if state is not None else \
        f"no rollout of @{policy.alias} is in progress: nothing to do"
    result = RolloutResult(policy=policy, state=state,
                           production=model.aliases.get(policy.alias), dry_run=dry_run,
                           decided_at=records.utc_now(), trigger=Trigger.from_env(),
                           tracking_uri=describe_uri(client), log=log, resolved=resolved,
                           note=note)
    return result, model.aliases.get(state.canary_alias) if state is not None else None


def _facts(client: MlflowClient, policy: Policy, rollout: Rollout, log: LogStore,
           state: RolloutState, production: str, end: float, dry_run: bool) -> StepFacts:
    start = _epoch(state.step_started_at)
    window = live.Window(start, max(end, start))
    version = registry.version_facts(client, registry.get_version(client, policy.model,
                                                                  state.version))
    reference = live.profile_for(client, policy, rollout.rules, version, dry_run)
    quality = tuple(r.name for r in rollout.rules if r.is_quality)
    try:
        log.migrate()
        candidate = live.measure(log, policy.model, state.version, window,
                                 profile=reference.profile, profile_where=reference.where,
                                 quality=quality, drift=reference.profile is not None,
                                 profile_problem=reference.problem)
        baseline = live.measure(log, policy.model, production, window, quality=quality,
                                drift=False)
        agreed = None if rollout.agreement is None else live.agreement(
            log, policy.model, production, state.version, window, rollout.agreement.tolerance)
    except LogUnavailable as exc:
        raise LogUnavailable(f"@{state.canary_alias} still on version {state.version} at step "
                             f"{state.step + 1}; nothing moved: {exc}") from None
    return StepFacts(model=policy.model, state=state, now=window.end, step_started=start,
                     candidate=candidate, production=baseline, agreement=agreed)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
