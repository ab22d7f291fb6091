"""The pure pieces of a rollout: its state tag, the route an endpoint reads from it, the stable
split, the endpoints' error guard, the start a passing gate plans, and the step's judgement."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promotion.engine.intent import Intent, assess, standing
from promotion.engine.records import Entry
from promotion.engine.rollout import (
    GUARD_MIN_REQUESTS,
    ErrorGuard,
    RolloutState,
    guard_breach,
    in_slice,
    plan_canary,
    read_state,
    rollouts_in,
    route_of,
    state_tag,
)
from promotion.engine.step import Agreed, StepFacts, judge_step
from promotion.engine.watch import LiveFacts
from promotion.policy.model import Agreement, Margin, Policy, Rollout, WatchRule
from promotion.report.rollout_chart import timeline, timeline_png

AT = "2026-12-03T10:00:00.000Z"
STATE = RolloutState("Production", "Production-canary", "5", "canary", (0.05, 0.25, 0.5), 1,
                     AT, AT, "4", "policies/p.yaml", "ab" * 32, ErrorGuard(0.01, None))
TAGS = {state_tag("Production"): STATE.to_json()}
ALIASES = {"Production": "4", "Production-canary": "5"}


def test_the_state_reads_back_as_written_and_refuses_what_it_does_not_understand():
    assert RolloutState.from_json(STATE.to_json()) == STATE
    guard = replace(STATE, guard=ErrorGuard(None, Margin(0.005, relative=True)))
    assert RolloutState.from_json(guard.to_json()) == guard
    for broken in ("", "{", "[]", '{"v": 2}', STATE.to_json().replace('"step":1', '"step":3'),
                   STATE.to_json().replace("0.05", "0")):
        assert RolloutState.from_json(broken) is None, broken
    assert read_state({state_tag("Production"): "{"}, "Production")[1] is not None
    assert read_state({}, "Production") == (None, None)
    assert rollouts_in({**TAGS, "other": "x", state_tag("Staging"): "{"}) == (STATE,)


def test_the_route_follows_the_state_only_while_the_canary_alias_holds_its_version():
    route = route_of(ALIASES, TAGS, "Production")
    assert route is not None and route.version == "4" and route.canary is not None
    assert (route.canary.version, route.canary.share, route.canary.step) == ("5", 0.25, 1)
    assert route.canary.step_key == STATE.position
    assert route_of({}, TAGS, "Production") is None
    moved = route_of({**ALIASES, "Production-canary": "6"}, TAGS, "Production")
    assert moved.canary is None and "points at 6" in moved.note
    removed = route_of({"Production": "4"}, TAGS, "Production")
    assert removed.canary is None and "nothing" in removed.note
    promoted = route_of({"Production": "5", "Production-canary": "5"}, TAGS, "Production")
    assert promoted.canary is None and promoted.note is None
    unreadable = route_of(ALIASES, {state_tag("Production"): "{"}, "Production")
    assert unreadable.canary is None and "can read" in unreadable.note
    assert route_of(ALIASES, {}, "Production").canary is None


def test_the_split_honours_the_share_and_keeps_every_client_in_its_slice():
    rng = random.Random(3)
    keys = [f"{rng.getrandbits(64):x}" for _ in range(20_000)]
    for share in (0.05, 0.25, 0.5):
        inside = sum(in_slice(k, share, "s") for k in keys)
        sd = math.sqrt(len(keys) * share * (1 - share))
        assert abs(inside - len(keys) * share) < 4.5 * sd, (share, inside)
    small = {k for k in keys if in_slice(k, 0.05, "s")}
    assert small <= {k for k in keys if in_slice(k, 0.25, "s")}  # a step up keeps them in
    assert not any(in_slice(k, 0.0, "s") for k in keys[:100])
    assert all(in_slice(k, 1.0, "s") for k in keys[:100])
    other = {k for k in keys if in_slice(k, 0.05, "another rollout")}
    assert len(small & other) < len(small) / 2  # another rollout picks another slice


@given(st.text(min_size=1, max_size=64), st.floats(0.0, 1.0))
def test_the_split_is_a_pure_function_of_key_share_and_salt(key, share):
    assert in_slice(key, share, "x") == in_slice(key, share, "x")


def test_the_guard_waits_for_enough_requests_then_applies_the_rule():
    ceiling = ErrorGuard(max=0.05)
    n = GUARD_MIN_REQUESTS
    assert guard_breach(ceiling, n - 1, n - 1, 100, 0) is None  # too few to judge
    assert guard_breach(ceiling, n, 1, 100, 0) is None  # 5%: within
    assert "breaches max 0.05" in guard_breach(ceiling, n, 2, 100, 0)
    assert guard_breach(None, 100, 100, 100, 0) is None
    growth = ErrorGuard(max_increase=Margin(0.5, relative=True))
    assert guard_breach(growth, 100, 15, 1000, 100) is None  # 15% vs 10% + 5%
    assert "Production's 0.1" in guard_breach(growth, 100, 16, 1000, 100)
    # Over a zero baseline one failed request is allowed (as the watch allows), not two.
    assert guard_breach(growth, 100, 1, 1000, 0) is None
    assert guard_breach(growth, 100, 2, 1000, 0) is not None


def _policy(**rollout) -> Policy:
    r = Rollout(alias="Production-canary", rules=(WatchRule("error_rate", max=0.05),),
                steps=(0.1, 0.5), **rollout)
    return Policy(path="p.yaml", sha256="c" * 64, model="m", metrics=(), rollout=r)


def test_a_passing_gate_plans_step_one_and_never_restarts_a_running_rollout():
    start, already = plan_canary(_policy(), "5", "4", AT, {"Production": "4"}, {})
    assert already is None and start.canary_before is None and start.replaces is None
    assert (start.state.version, start.state.step, start.state.share) == ("5", 0, 0.1)
    assert start.state.guard == ErrorGuard(0.05, None) and start.state.production == "4"
    running = {state_tag("Production"): start.state.to_json()}
    again, why = plan_canary(_policy(), "5", "4", AT, {**ALIASES, "Production-canary": "5"},
                             running)
    assert again is None and "already rolling out" in why
    newer, _ = plan_canary(_policy(), "6", "4", AT, {**ALIASES, "Production-canary": "5"},
                           running)
    assert newer.replaces == start.state and newer.canary_before == "5"


def test_an_interrupted_step_is_assessed_by_the_state_it_left():
    after = STATE.advanced(AT)
    intent = Intent("op", "step", "m", "Production-canary", "Production-canary-previous",
                    STATE.position, after.position, None, None, AT, "me",
                    rollout_alias="Production", rollout_before=STATE.to_json(),
                    rollout_after=after.to_json())
    assert assess(intent, standing(intent, ALIASES, TAGS)) == "not_applied"
    moved = {state_tag("Production"): after.to_json()}
    assert assess(intent, standing(intent, ALIASES, moved)) == "applied"
    assert assess(intent, standing(intent, ALIASES, {})) == "superseded"
    assert Intent.from_json(intent.to_json()) == intent
    assert replace(intent, policy="p.yaml").finish_hint() == "promote rollout p.yaml"


RULES = (WatchRule("error_rate", max=0.05, max_increase=Margin(0.5, relative=True)),
         WatchRule("latency_p95_ms", max_increase=Margin(0.2, relative=True)),
         WatchRule("rmse", max_regression=Margin(0.1, relative=True)))


def _facts(candidate: LiveFacts, production: LiveFacts, *, elapsed: float = 700.0,
           step: int = 0, agreed: Agreed | None = None, mode: str = "canary") -> StepFacts:
    state = replace(STATE, step=step, mode=mode)  # type: ignore[arg-type]
    return StepFacts("m", state, 10_000.0 + elapsed, 10_000.0, candidate, production, agreed)


def _live(version: str, requests: int, errors: float = 0.0, p95: float = 10.0,
          rmse: float = 50.0, labels: int = 100) -> LiveFacts:
    return LiveFacts(version, requests=requests, rows=requests, error_rate=errors,
                     latency_p95_ms=p95, labels=labels, quality=(("rmse", rmse),))


def _rollout(**kwargs) -> Rollout:
    return Rollout(alias="Production-canary", rules=RULES, steps=(0.05, 0.25, 0.5),
                   step_after_seconds=600.0, min_requests=100, min_labels=30, **kwargs)


def test_a_step_waits_for_requests_then_for_time_then_advances_and_promotes_at_the_end():
    prod = _live("4", 2000)
    few = judge_step(_rollout(), _facts(_live("5", 99), prod))
    assert (few.action, few.standing) == ("wait", "insufficient_data")
    early = judge_step(_rollout(), _facts(_live("5", 100), prod, elapsed=60))
    assert (early.action, early.standing) == ("wait", "passing") and "9m to go" in early.why
    go = judge_step(_rollout(), _facts(_live("5", 100), prod))
    assert go.action == "advance" and "step 2 gives it 25%" in go.why
    last = judge_step(_rollout(), _facts(_live("5", 100), prod, step=2))
    assert last.action == "promote" and "@Production moves" in last.why


def test_any_breach_aborts_even_before_the_step_has_lasted_long_enough():
    prod = _live("4", 2000, errors=0.01, p95=10.0, rmse=50.0)
    slow = judge_step(_rollout(), _facts(_live("5", 100, p95=12.5), prod, elapsed=5))
    assert slow.action == "abort" and [c.rule for c in slow.breached] == ["latency_p95_ms"]
    worse = judge_step(_rollout(), _facts(_live("5", 100, rmse=56.0), prod))
    assert worse.action == "abort" and "rmse" in worse.why
    # The reference is Production in the same window, and the reasons say so.
    idle = judge_step(_rollout(), _facts(_live("5", 100), _live("4", 10)))
    assert idle.action == "wait"
    assert "@Production (version 4) in the same window has 10 requests" in idle.why


def test_agreement_judges_shadow_rows_and_waits_for_enough_of_them():
    rollout = _rollout(mode="shadow", agreement=Agreement(0.9, Margin(0.5), min_rows=50))
    prod = _live("4", 2000)
    agreed = judge_step(rollout, _facts(_live("5", 100), prod, agreed=Agreed(100, 95),
                                        mode="shadow"))
    check = next(c for c in agreed.checks if c.rule == "agreement")
    assert check.status == "pass" and "95 of 100 rows within 0.5" in check.reason
    apart = judge_step(rollout, _facts(_live("5", 100), prod, agreed=Agreed(100, 80),
                                       mode="shadow"))
    assert apart.action == "abort"
    few = judge_step(rollout, _facts(_live("5", 100), prod, agreed=Agreed(40, 40),
                                     mode="shadow"))
    assert few.action == "wait" and "fewer than min_rows 50" in few.why


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_computed_value_that_is_not_finite_fails_closed(value):
    decision = judge_step(_rollout(), _facts(_live("5", 100, p95=value), _live("4", 2000)))
    assert decision.action == "abort"


def test_the_timeline_follows_the_records_of_one_rollout():
    def entry(minute: int, kind: str, outcome: str) -> Entry:
        return Entry(kind, "m", "Production-canary", outcome, "5", "4",
                     f"2026-12-03T10:{minute:02d}:00.000Z", "", "me")

    records = [entry(40, "rollout", "promoted"), entry(0, "gate", "canary"),
               entry(30, "rollout", "advanced"), entry(10, "rollout", "conflict")]
    points = timeline(records, (0.05, 0.5))
    assert [(p.outcome, p.share, p.label) for p in points] == [
        ("canary", 0.05, "canary 5%"), ("advanced", 0.5, "advanced to 50%"),
        ("promoted", 1.0, "promoted: @Production-canary")]
    assert points[1].at - points[0].at == 1800
    aborted = timeline([entry(0, "gate", "canary"), entry(5, "rollout", "aborted")], (0.1,))
    assert [p.share for p in aborted] == [0.1, 0.0]
    png = timeline_png(points, "m version 5")
    assert png.startswith(b"\x89PNG") and png == timeline_png(points, "m version 5")
