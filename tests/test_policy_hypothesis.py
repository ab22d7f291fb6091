"""Whatever the input, validation ends in a Policy or a PolicyError with well-formed lines.

Three sources of input: YAML-ish token soup (reaches the reader's error paths), arbitrary nested
data dumped to YAML (reaches the schema's type errors), and the documented example with one value
replaced (reaches the rules between keys).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promotion.policy.load import PolicyError, parse_policy
from promotion.policy.model import Policy

NAME = "fuzz/policy.yaml"
LINE = re.compile(r"fuzz/policy\.yaml(:[1-9][0-9]*:[1-9][0-9]*)?: \S.*")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

WORDS = ["model", "alias", "candidate", "when_no_production", "metrics", "require_tags",
         "evaluation", "budgets", "rmse", "r2", "goal", "minimize", "maximize", "min", "max",
         "min_improvement", "max_regression", "source", "significant", "data", "target",
         "latency_p95_ms", "size_mb", "max_increase", "test_size", "latest", "@x", "1%", "70",
         "-1", ".nan", ".inf", "true", "yes", "null", "~", "sklearn:load_diabetes", "data.csv",
         "rollout", "mode", "canary", "shadow", "steps", "step_after", "agreement", "tolerance",
         "30m", "0%", "100%"]
TOKENS = [*WORDS, ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "#", "&a", "*a", "!!", "!x",
          "!!python/object:os.system", "<<", "'", '"', "|", ">", "%", "@", "?", "---", "...",
          "\n", "\n  ", "\n    ", "\t", " ", "\x00", "\ufeff", "é", "\x85"]

EXAMPLE: dict[str, Any] = {
    "model": "diabetes-regressor",
    "alias": "Production",
    "candidate": "latest",
    "when_no_production": "promote",
    "metrics": {
        "rmse": {"goal": "minimize", "max": 70, "min_improvement": "1%"},
        "r2": {"goal": "maximize", "min": 0.35, "max_regression": 0.02},
    },
    "require_tags": {"data_validated": "true"},
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
nested = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)


def check(data: str | bytes) -> None:
    try:
        policy = parse_policy(data, NAME)
    except PolicyError as exc:
        lines = exc.lines()
        assert lines, "a PolicyError without issues"
        for line in lines:
            assert LINE.fullmatch(line), repr(line)
            assert line.isprintable(), repr(line)
        for issue in exc.issues:
            assert issue.file == NAME and issue.line >= 0 and issue.col >= 0
        return
    assert isinstance(policy, Policy)
    assert policy.metrics and policy.path == NAME


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_yaml_token_soup(text: str) -> None:
    check(text)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@SETTINGS
@given(nested)
def test_arbitrary_nested_data(data: Any) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))


@st.composite
def mutated_example(draw: st.DrawFn) -> dict[str, Any]:
    """The documented example with one key replaced, added or removed, anywhere in it."""
    policy: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                              for k, v in EXAMPLE.items()}
    policy["metrics"] = {k: dict(v) for k, v in EXAMPLE["metrics"].items()}
    targets: list[dict[str, Any]] = [policy, policy["metrics"], *policy["metrics"].values(),
                                     policy["require_tags"]]
    target = draw(st.sampled_from(targets))
    key = draw(st.one_of(st.sampled_from(sorted(target)), keys))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(nested)
    return policy


@SETTINGS
@given(mutated_example())
def test_mutated_example(data: dict[str, Any]) -> None:
    check(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


ROLLOUT: dict[str, Any] = {
    "model": "m",
    "candidate": "@challenger",
    "metrics": {"rmse": {"goal": "minimize", "max": 70}},
    "rollout": {
        "alias": "Production-canary",
        "mode": "shadow",
        "steps": ["5%", "25%", 0.5],
        "step_after": "30m",
        "rules": {
            "error_rate": {"max": "1%", "max_increase": "0.5%"},
            "rmse": {"source": "live", "max_regression": "2%"},
            "agreement": {"min": 0.9, "tolerance": "5%", "min_rows": 100},
        },
    },
}


@st.composite
def mutated_rollout(draw: st.DrawFn) -> dict[str, Any]:
    """The rollout example with one key or step replaced, added or removed, anywhere in it."""
    policy = copy.deepcopy(ROLLOUT)
    rollout = policy["rollout"]
    targets: list[Any] = [policy, rollout, rollout["steps"], rollout["rules"],
                          *rollout["rules"].values()]
    target = draw(st.sampled_from(targets))
    if isinstance(target, list):
        index = draw(st.integers(0, len(target)))
        target[index:index + draw(st.integers(0, 1))] = [draw(nested)]
        return policy
    key = draw(st.one_of(st.sampled_from(sorted(target)), keys))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(nested)
    return policy


@SETTINGS
@given(mutated_rollout())
def test_mutated_rollout(data: dict[str, Any]) -> None:
    check(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
