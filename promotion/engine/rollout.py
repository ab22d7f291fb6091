"""A rollout in progress, as the registry holds it and every endpoint reads it.

When a policy has a `rollout:` block, a passing gate points the canary alias
(`Production-canary`) at the candidate instead of `Production`, and writes the rollout's state as
one tag on the registered model, `promotion.rollout.<guarded alias>`: which version, the mode,
the steps and the step in force, since when. `promote rollout` advances it (a new value of the
tag), aborts it (the canary alias removed, the tag cleared) or promotes it (the guarded alias
moved, then the canary alias and the tag cleared).

An endpoint (`promote serve`) reads the registered model once per poll: its aliases and this tag
come in the same answer, so the share it gives the canary is always the one in force for the
version the canary alias points at (`route_of`). Anything inconsistent (the tag unreadable, the
canary alias elsewhere or unset, the canary equal to Production) means no canary traffic: the
safe side is Production for every request.

Pure values and functions: the registry layer reads and writes the tag, `promote serve` routes
with `Route` / `in_slice` and guards its replica with `guard_breach`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from promotion.policy.model import Margin, Policy, Rollout

STATE_PREFIX = "promotion.rollout."
STATE_VERSION = 1
Mode = Literal["canary", "shadow"]
# A replica judges its own share of canary traffic only after this many canary requests in the
# step: fewer say little about an error rate (one failure in three requests is not 33 %).
GUARD_MIN_REQUESTS = 20


def state_tag(alias: str) -> str:
    """The registered-model tag holding the rollout of `alias` (the guarded alias)."""
    return f"{STATE_PREFIX}{alias}"


@dataclass(frozen=True)
class ErrorGuard:
    """The rollout's `error_rate` rule, carried in the state so every endpoint can stop giving
    the canary traffic on its own as soon as it fails more than the rule allows."""

    max: float | None = None
    max_increase: Margin | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"max": self.max, "max_increase": None if self.max_increase is None else
                [self.max_increase.value, self.max_increase.relative]}

    @classmethod
    def from_dict(cls, data: Any) -> ErrorGuard | None:
        if not isinstance(data, dict):
            return None
        increase = data.get("max_increase")
        margin = Margin(float(increase[0]), bool(increase[1])) if increase else None
        top = data.get("max")
        return cls(None if top is None else float(top), margin)


def guard_of(rollout: Rollout) -> ErrorGuard | None:
    """The endpoints' guard for a rollout: its error_rate rule, if it has one."""
    for rule in rollout.rules:
        if rule.name == "error_rate":
            return ErrorGuard(rule.max, rule.max_increase)
    return None


@dataclass(frozen=True)
class RolloutState:
    """The value of `promotion.rollout.<alias>`: a rollout of `version` on `canary_alias`."""

    alias: str  # the guarded alias (Production)
    canary_alias: str
    version: str
    mode: Mode
    steps: tuple[float, ...]  # shares, strictly increasing
    step: int  # the step in force, 0-based
    started_at: str  # ISO 8601 UTC: when the gate started the rollout
    step_started_at: str  # when the step in force began
    production: str | None = None  # where @alias pointed when the rollout started
    policy: str | None = None
    policy_sha256: str | None = None
    guard: ErrorGuard | None = None

    @property
    def share(self) -> float:
        return self.steps[self.step]

    @property
    def last(self) -> bool:
        return self.step == len(self.steps) - 1

    @property
    def position(self) -> str:
        """Which step of which rollout: what an interrupted advance compares (engine.intent)."""
        return f"{self.version}:{self.step}:{self.started_at}"

    def describe(self) -> str:
        what = "answered by" if self.mode == "canary" else "mirrored to"
        return (f"version {self.version} on @{self.canary_alias} ({self.mode}), step "
                f"{self.step + 1} of {len(self.steps)}: {self.share * 100:g}% of requests "
                f"{what} it since {self.step_started_at}")

    def advanced(self, at: str) -> RolloutState:
        return replace(self, step=self.step + 1, step_started_at=at)

    def to_json(self) -> str:
        data = {"v": STATE_VERSION, "alias": self.alias, "canary_alias": self.canary_alias,
                "version": self.version, "mode": self.mode, "steps": list(self.steps),
                "step": self.step, "started_at": self.started_at,
                "step_started_at": self.step_started_at, "production": self.production,
                "policy": self.policy, "policy_sha256": self.policy_sha256,
                "guard": None if self.guard is None else self.guard.to_dict()}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RolloutState | None:
        """The state in a tag's value, or None when it is not one this code understands."""
        try:
            data = json.loads(text)
            steps = tuple(float(s) for s in data["steps"])
            step = int(data["step"])
            mode = data["mode"]
            if data.get("v") != STATE_VERSION or mode not in ("canary", "shadow") or \
                    not 0 <= step < len(steps) or not all(0.0 < s <= 1.0 for s in steps):
                return None
            return cls(alias=str(data["alias"]), canary_alias=str(data["canary_alias"]),
                       version=str(data["version"]), mode=mode, steps=steps, step=step,
                       started_at=str(data["started_at"]),
                       step_started_at=str(data["step_started_at"]),
                       production=_opt(data.get("production")), policy=_opt(data.get("policy")),
                       policy_sha256=_opt(data.get("policy_sha256")),
                       guard=ErrorGuard.from_dict(data.get("guard")))
        except (ValueError, TypeError, KeyError, IndexError):
            return None


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def read_state(tags: Mapping[str, str], alias: str) -> tuple[RolloutState | None, str | None]:
    """(the rollout of `alias` in a registered model's tags, or None; what was wrong with the
    tag when there is one and it cannot be read)."""
    text = tags.get(state_tag(alias))
    if text is None:
        return None, None
    state = RolloutState.from_json(text)
    if state is None or state.alias != alias:
        return None, f"the tag {state_tag(alias)} does not hold a rollout this Promote can read"
    return state, None


def rollouts_in(tags: Mapping[str, str]) -> tuple[RolloutState, ...]:
    """Every readable rollout state among a registered model's tags, by guarded alias."""
    found = (read_state(tags, key[len(STATE_PREFIX):])[0] for key in sorted(tags)
             if key.startswith(STATE_PREFIX))
    return tuple(state for state in found if state is not None)


@dataclass(frozen=True)
class CanaryRoute:
    """What an endpoint gives the canary: which version, how, how much, in which step."""

    alias: str  # the canary alias
    version: str
    mode: Mode
    share: float  # canary: share of requests it answers; shadow: share mirrored to it
    step: int  # 0-based
    steps: int
    step_key: str  # changes with every step: an endpoint's per-step counters reset on it
    salt: str  # the same for every step of one rollout: `in_slice` keeps a client's version
    guard: ErrorGuard | None = None


@dataclass(frozen=True)
class Route:
    """Where an endpoint sends requests: the guarded alias's version, and a canary if any."""

    version: str
    canary: CanaryRoute | None = None
    note: str | None = None  # why a rollout state on the model was not followed


def route_of(aliases: Mapping[str, str], tags: Mapping[str, str], alias: str) -> Route | None:
    """The route a registered model's aliases and tags say for `alias` (None: alias unset)."""
    version = aliases.get(alias)
    if version is None:
        return None
    state, problem = read_state(tags, alias)
    if state is None:
        return Route(version, note=problem)
    on_canary = aliases.get(state.canary_alias)
    if on_canary != state.version:
        return Route(version, note=f"the rollout of version {state.version} is not in force: "
                                   f"@{state.canary_alias} points at {on_canary or 'nothing'}")
    if state.version == version:
        return Route(version)  # promoted: the canary is Production
    return Route(version, CanaryRoute(alias=state.canary_alias, version=state.version,
                                      mode=state.mode, share=state.share, step=state.step,
                                      steps=len(state.steps), step_key=state.position,
                                      salt=f"{state.version}:{state.started_at}",
                                      guard=state.guard))


def in_slice(key: str, share: float, salt: str) -> bool:
    """Whether the request with routing `key` falls in the `share` of traffic.

    A stable hash: the same key always gets the same answer for the same salt (the rollout), and
    a key inside a share stays inside every larger share, so a client that saw the canary at 5 %
    still sees it at 25 %. blake2b rather than Python's `hash`, which is salted per process: every
    replica must agree.
    """
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


def guard_breach(guard: ErrorGuard | None, canary_requests: int, canary_errors: int,
                 production_requests: int, production_errors: int,
                 min_requests: int = GUARD_MIN_REQUESTS) -> str | None:
    """Why one endpoint must stop giving the canary traffic for the rest of the step, or None.

    The rollout's own error_rate rule, on this endpoint's requests of the step: a ceiling, and
    an increase over Production's rate (with at least one failed request allowed, as the watch
    does). Nothing is judged before `min_requests` canary requests.
    """
    if guard is None or canary_requests < min_requests:
        return None
    rate = canary_errors / canary_requests
    if guard.max is not None and rate > guard.max:
        return (f"error rate {rate:.3g} over {canary_requests} requests breaches max "
                f"{guard.max:g}")
    if guard.max_increase is not None and production_requests >= min_requests:
        base = production_errors / production_requests
        allowed = max(guard.max_increase.amount(base), 1.0 / canary_requests)
        if rate > base + allowed:
            return (f"error rate {rate:.3g} over {canary_requests} requests breaches "
                    f"Production's {base:.3g} + {guard.max_increase}")
    return None


@dataclass(frozen=True)
class CanaryStart:
    """What a passing gate of a policy with a rollout does instead of moving the alias: point the
    canary alias at the candidate and write this state (step 1)."""

    state: RolloutState
    canary_before: str | None  # where the canary alias pointed when the gate read it
    replaces: RolloutState | None = None  # a rollout of another version it ends (as aborted)


def plan_canary(policy: Policy, candidate: str, production: str, at: str,
                aliases: Mapping[str, str], tags: Mapping[str, str]
                ) -> tuple[CanaryStart | None, str | None]:
    """(the rollout a passing gate starts, or None with why the candidate is in one already).

    A candidate already rolling out (the state names it and the canary alias points at it) is not
    started again: re-gating the same version must not restart its steps.
    """
    rollout = policy.rollout
    assert rollout is not None
    current, _ = read_state(tags, policy.alias)
    canary_now = aliases.get(rollout.alias)
    if current is not None and current.version == candidate and canary_now == candidate:
        return None, (f"version {candidate} is already rolling out: {current.describe()}; "
                      f"`promote rollout {policy.path}` takes it further")
    state = RolloutState(alias=policy.alias, canary_alias=rollout.alias, version=candidate,
                         mode=rollout.mode, steps=rollout.steps, step=0, started_at=at,
                         step_started_at=at, production=production, policy=policy.path,
                         policy_sha256=policy.sha256, guard=guard_of(rollout))
    return CanaryStart(state, canary_now, current), None
