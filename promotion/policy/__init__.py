"""The policy language: read a YAML policy file, validate it, and get frozen `Policy` values.

The modules, from the file to the value:

    files     which files are policies (one rule for every command)
    yamlfile  bytes -> plain data plus the position of every key (safe, strict YAML)
    issues    Issue, PolicyError, Positions: where a problem is
    checks    the rules of single values, and their messages
    fields    each value type: its check plus its JSON Schema
    schema    the pydantic models (the one schema), JSON Schema export, `validate`; its blocks
              `watch:` and `rollout:` in watchschema and rolloutschema
    model     the frozen dataclasses the engine reads (Policy, MetricRule, ...)
    load      load_policy / parse_policy / policy_schema: the entry points
    listing   many policies at once: validate them all, list and select them

Nothing here imports mlflow, numpy or pandas, nor any other part of Promote but promotion.errors:
validating a policy stays fast enough for a pre-commit hook. pydantic is imported only when a
policy is validated (promotion.policy.load imports promotion.policy.schema on first use).
"""

from __future__ import annotations

from promotion.policy.load import (
    Issue,
    PolicyError,
    load_policy,
    parse_policy,
    policy_schema,
)
from promotion.policy.model import (
    DEFAULT_ALIAS,
    Budget,
    Candidate,
    Evaluation,
    Goal,
    Margin,
    MetricRule,
    Policy,
    Source,
    WhenNoProduction,
    previous_alias,
)

__all__ = [
    "DEFAULT_ALIAS",
    "Budget",
    "Candidate",
    "Evaluation",
    "Goal",
    "Issue",
    "Margin",
    "MetricRule",
    "Policy",
    "PolicyError",
    "Source",
    "WhenNoProduction",
    "load_policy",
    "parse_policy",
    "policy_schema",
    "previous_alias",
]
