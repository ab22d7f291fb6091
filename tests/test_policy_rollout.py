"""The `rollout:` block: what the valid fixtures mean, field by field, defaults included.

What it refuses, and where it says so, is pinned by tests/data/policies/invalid/rollout-*.yaml
(tests/test_policy_corpus.py) and checked against the JSON Schema (tests/test_policy_schema.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from promotion.policy.load import PolicyError, load_policy, parse_policy
from promotion.policy.model import Agreement, Margin, Rollout, WatchRule

FIXTURES = Path(__file__).parent / "data" / "policies"
HEAD = "model: m\nmetrics: {rmse: {goal: minimize, max: 70}}\n"


def test_the_canary_example_means_what_its_comments_say() -> None:
    policy = load_policy(FIXTURES / "valid" / "rollout.yaml")
    assert policy.rollout == Rollout(
        alias="Production-canary",
        mode="canary",
        steps=(0.05, 0.25, 0.5),
        step_after_seconds=1800.0,
        min_requests=500,
        min_labels=30,
        rules=(
            WatchRule("error_rate", max=0.01, max_increase=Margin(0.005, relative=True)),
            WatchRule("latency_p95_ms", max=250.0, max_increase=Margin(0.2, relative=True)),
            WatchRule("prediction_psi", max=0.6),
            WatchRule("feature_psi", max=0.7),
            WatchRule("prediction_ks", max=0.3),
            WatchRule("feature_ks", max=0.35),
            WatchRule("rmse", max_regression=Margin(0.02, relative=True)),
            WatchRule("r2", min=0.2, max=1.0, max_regression=Margin(0.05)),
        ),
        agreement=None,
    )
    assert policy.rollout.previous_alias == "Production-canary-previous"
    assert policy.watch is None  # a rollout needs no watch, and the reverse


def test_the_shadow_example_means_what_its_comments_say() -> None:
    policy = load_policy(FIXTURES / "valid" / "rollout-shadow.yaml")
    rollout = policy.rollout
    assert rollout is not None
    assert (rollout.alias, rollout.mode, rollout.steps) == ("champion-shadow", "shadow", (1.0,))
    assert (rollout.step_after_seconds, rollout.min_requests, rollout.min_labels) == \
        (7200.0, 200, 50)
    assert rollout.rules == (
        WatchRule("error_rate", max_increase=Margin(0.01, relative=True)),
        WatchRule("accuracy", max_regression=Margin(0.01, relative=True)),
    )
    assert rollout.agreement == Agreement(min=0.9, tolerance=Margin(0.0), min_rows=100)
    assert all(rule.against == "offline" for rule in rollout.rules)  # unused in a rollout


def test_agreement_takes_a_tolerance_and_min_rows() -> None:
    policy = parse_policy(HEAD + "rollout:\n  mode: shadow\n  steps: [0.1, 1]\n"
                          "  rules: {agreement: {min: 0.95, tolerance: 5%, min_rows: 20}}\n",
                          "p.yaml")
    assert policy.rollout is not None
    assert policy.rollout.steps == (0.1, 1.0)
    assert policy.rollout.rules == ()
    assert policy.rollout.agreement == Agreement(min=0.95, tolerance=Margin(0.05, relative=True),
                                                 min_rows=20)
    absolute = parse_policy(HEAD + "rollout:\n  mode: shadow\n"
                            "  rules: {agreement: {min: 1, tolerance: 0.5}}\n", "p.yaml")
    assert absolute.rollout is not None and absolute.rollout.agreement == \
        Agreement(min=1.0, tolerance=Margin(0.5))


def test_the_default_canary_alias_follows_the_guarded_alias() -> None:
    policy = parse_policy(HEAD + "alias: champion\nrollout:\n  steps: [50%]\n"
                          "  rules: {error_rate: {max: 1%}}\n", "p.yaml")
    assert policy.rollout is not None and policy.rollout.alias == "champion-canary"


def test_policies_without_a_rollout_have_none() -> None:
    assert load_policy(FIXTURES / "valid" / "watch.yaml").rollout is None
    assert load_policy(FIXTURES / "valid" / "example.yaml").rollout is None


def test_the_default_canary_alias_must_leave_room_for_previous() -> None:
    alias = "a" * 240  # a valid guarded alias, but "<alias>-canary-previous" would not fit
    text = (HEAD + f"alias: {alias}\nrollout:\n  steps: [50%]\n"
            "  rules: {error_rate: {max: 1%}}\n")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert info.value.lines() == [
        "p.yaml:4:1: rollout: the default canary alias 'aaaaaaaa...-canary' would have 247 "
        "characters, more than 246 ('-previous' must still fit); set rollout.alias"]
    named = parse_policy(text.replace("rollout:\n", "rollout:\n  alias: c\n"), "p.yaml")
    assert named.rollout is not None and named.rollout.alias == "c"


@pytest.mark.parametrize(("steps", "message"), [
    ("[]", "4:10: rollout.steps: expected at least one step, e.g. [5%, 25%, 50%]"),
    ("", "4:9: rollout.steps: expected a list of traffic shares like [5%, 25%, 50%], got null"),
    ("[0.5, 0.5]", "4:16: rollout.steps[1]: steps must increase: 0.5 is not above 0.5"),
    ("[0]", "4:11: rollout.steps[0]: a step's share must be above 0, got 0"),
    ("[-5%]", "4:11: rollout.steps[0]: expected a share from 0 to 1 or a percentage like '1%', "
              "got '-5%'"),
])
def test_steps_are_checked_item_by_item(steps: str, message: str) -> None:
    text = HEAD + f"rollout:\n  steps: {steps}\n  rules: {{error_rate: {{max: 1%}}}}\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert info.value.lines() == [f"p.yaml:{message}"]


def test_the_watch_still_takes_against() -> None:
    policy = load_policy(FIXTURES / "valid" / "watch.yaml")
    assert policy.watch is not None
    assert [rule.against for rule in policy.watch.rules if rule.is_quality] == \
        ["offline", "previous"]
