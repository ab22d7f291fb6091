"""A rollout step's judgement: a pure function of (the policy's `rollout:` block, live facts).

`promote rollout` measures the candidate and Production over the step's window (from the moment
the step began to now: the same window for both) and hands the numbers here; `judge` returns one
check per rule, in the watch's table shape (promotion.engine.watch, whose rule checks it reuses:
`max_increase` and `max_regression` compare with Production in the same window), and what to do:

- `abort`    a rule is breached (with at least `min_requests` of the candidate's requests);
- `wait`     too few requests or labels (never a breach: a quiet hour is not a bad model), or
             every rule passes but the step has not lasted `step_after` yet;
- `advance`  every rule passes and the step has lasted long enough: the next step's share;
- `promote`  the same on the last step: the guarded alias moves to the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from promotion.engine.rollout import RolloutState
from promotion.engine.watch import LiveFacts, WatchCheck, WatchFacts, bound_check, judge
from promotion.policy.model import Agreement, Rollout, Watch

Action = Literal["wait", "advance", "promote", "abort"]
Standing = Literal["passing", "insufficient_data", "breach"]


@dataclass(frozen=True)
class Agreed:
    """Shadow mode: rows scored by both versions, and how many of them agree."""

    rows: int
    agreeing: int

    @property
    def share(self) -> float | None:
        return self.agreeing / self.rows if self.rows else None


@dataclass(frozen=True)
class StepFacts:
    model: str
    state: RolloutState  # the rollout, at the step being judged
    now: float  # epoch seconds: the end of the window
    step_started: float  # epoch seconds: the start of the window (the step's start)
    candidate: LiveFacts  # the candidate's requests in the window (served or mirrored)
    production: LiveFacts  # Production's, same window
    agreement: Agreed | None = None

    @property
    def elapsed(self) -> float:
        return max(0.0, self.now - self.step_started)


@dataclass(frozen=True)
class StepDecision:
    model: str
    alias: str  # the guarded alias
    canary_alias: str
    version: str  # the candidate
    production: str  # the version behind the guarded alias now
    step: int  # 0-based
    steps: int
    share: float
    mode: str
    standing: Standing
    action: Action
    checks: tuple[WatchCheck, ...]
    requests: int  # the candidate's requests in the window
    elapsed_seconds: float
    step_after_seconds: float
    why: str  # one line: why this action

    @property
    def breached(self) -> tuple[WatchCheck, ...]:
        return tuple(c for c in self.checks if c.status == "breach")

    @property
    def last(self) -> bool:
        return self.step == self.steps - 1


def judge_step(rollout: Rollout, facts: StepFacts) -> StepDecision:
    """Every rule of the rollout on the step's window, and the action it calls for."""
    state = facts.state
    watch = Watch(rules=tuple(replace(r, against="previous") if r.is_quality else r
                              for r in rollout.rules),
                  bake_seconds=0.0, window_seconds=max(facts.elapsed, 1.0),
                  min_requests=rollout.min_requests, min_labels=rollout.min_labels)
    production = facts.production.version
    watched = judge(watch, WatchFacts(
        model=facts.model, alias=state.canary_alias, now=facts.now,
        window_seconds=watch.window_seconds, live=facts.candidate, baseline=facts.production,
        baseline_name=f"@{state.alias} (version {production}) in the same window"))
    checks = watched.checks
    if rollout.agreement is not None:
        checks += (_agreement(rollout, rollout.agreement, facts),)
    standing: Standing = "breach" if any(c.status == "breach" for c in checks) else \
        "insufficient_data" if any(c.status == "insufficient" for c in checks) else "passing"
    action, why = _action(rollout, facts, standing, checks)
    return StepDecision(model=facts.model, alias=state.alias, canary_alias=state.canary_alias,
                        version=state.version, production=production, step=state.step,
                        steps=len(state.steps), share=state.share, mode=state.mode,
                        standing=standing, action=action, checks=checks,
                        requests=facts.candidate.requests, elapsed_seconds=facts.elapsed,
                        step_after_seconds=rollout.step_after_seconds, why=why)


def _action(rollout: Rollout, facts: StepFacts, standing: Standing,
            checks: tuple[WatchCheck, ...]) -> tuple[Action, str]:
    state = facts.state
    step = f"step {state.step + 1} of {len(state.steps)} ({state.share * 100:g}%)"
    if standing == "breach":
        rules = "; ".join(c.reason for c in checks if c.status == "breach")
        return "abort", f"{step} breached: {rules}"
    if standing == "insufficient_data":
        first = next(c.reason for c in checks if c.status == "insufficient")
        return "wait", f"{step} waits for data: {first}"
    left = rollout.step_after_seconds - facts.elapsed
    if left > 0:
        return "wait", (f"{step} passes every rule and lasts at least "
                        f"{_duration(rollout.step_after_seconds)}: {_duration(left)} to go")
    if state.last:
        return "promote", f"{step}, the last, passed every rule: @{state.alias} moves"
    following = state.steps[state.step + 1]
    return "advance", (f"{step} passed every rule: step {state.step + 2} gives it "
                       f"{following * 100:g}%")


def _agreement(rollout: Rollout, rule: Agreement, facts: StepFacts) -> WatchCheck:
    agreed = facts.agreement
    rows = 0 if agreed is None else agreed.rows
    if facts.candidate.requests < rollout.min_requests:
        return WatchCheck("agreement", "min", "insufficient",
                          f"{facts.candidate.requests} requests in the window, fewer than "
                          f"min_requests {rollout.min_requests}", upper=False)
    if agreed is None or agreed.share is None or rows < rule.min_rows:
        return WatchCheck("agreement", "min", "insufficient",
                          f"agreement: {rows} rows scored by both versions, fewer than "
                          f"min_rows {rule.min_rows}", upper=False)
    check = bound_check("agreement", "min", agreed.share, rule.min, None, "", lower=True)
    within = "equal" if rule.tolerance.value == 0 else f"within {rule.tolerance}"
    return replace(check, reason=f"{check.reason} ({agreed.agreeing} of {rows} rows {within})")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    if seconds >= 60:
        return f"{seconds / 60:.3g}m"
    return f"{seconds:.3g}s"
