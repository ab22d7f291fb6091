"""The policy language as one declarative value: pydantic models used to validate and to export.

`PolicyModel` is the whole language. Each field's type (promotion.policy.fields) carries its own
validator (promotion.policy.checks, with a short, stable message) and its JSON Schema, so
`json_schema()` (committed as policies/schema.json, used by editors through the
`# yaml-language-server: $schema=schema.json` modeline) and `validate()` cannot drift apart. Rules
that relate several keys are validators on the model that owns those keys; each reports the key
path it is about, and every problem in a file is reported at once.

`validate(document)` turns a `promotion.policy.yamlfile.Document` into the frozen
`promotion.policy.Policy` (which keeps the document's positions), or raises `PolicyError` with
one `Issue` (line, column, key path, message) per problem, translated from pydantic's errors here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promotion.policy.checks import (
    DEFAULT_TEST_SIZE,
    EVALUATION_METRICS,
    describe,
    is_real,
    no_null,
    suggest,
)
from promotion.policy.fields import (
    AliasName,
    CandidateSpec,
    Ceiling,
    Confidence,
    DataSource,
    Flag,
    GoalField,
    MarginField,
    MetricName,
    ModelName,
    NonEmpty,
    Resamples,
    Seed,
    SourceField,
    TagKey,
    TagValue,
    TestSize,
    Threshold,
    WhenNoProductionField,
)
from promotion.policy.issues import Issue, Path, PolicyError, Positions
from promotion.policy.model import (
    DEFAULT_ALIAS,
    Budget,
    Candidate,
    Evaluation,
    MetricRule,
    Policy,
)
from promotion.policy.rolloutschema import RolloutModel, rollout_problems, to_rollout
from promotion.policy.section import Problems, Section, tidy
from promotion.policy.watchschema import WatchModel, to_watch
from promotion.policy.yamlfile import Document

# --------------------------------------------------------------------------------------------
# The models

_IS_EVALUATION = {"required": ["source"], "properties": {"source": {"const": "evaluation"}}}
_BOUNDS = ("min", "max", "min_improvement", "max_regression")


class MetricModel(Section):
    """A rule on one metric: absolute bounds and/or a margin against Production."""

    model_config = ConfigDict(json_schema_extra=lambda schema: tidy(schema, {
        "anyOf": [{"required": [b]} for b in _BOUNDS],
        "not": {"required": ["min_improvement", "max_regression"]},
        "if": {"required": ["significant"], "properties": {"significant": {"const": True}}},
        "then": {**_IS_EVALUATION, "anyOf": [{"required": ["min_improvement"]},
                                             {"required": ["max_regression"]}]},
    }))

    goal: GoalField
    min: Threshold = Field(None, description="Absolute lower bound on the candidate (inclusive).")
    max: Threshold = Field(None, description="Absolute upper bound on the candidate (inclusive).")
    min_improvement: MarginField = Field(
        None, description="Better than Production by at least this: a number, or 'N%' of "
                          "|Production's value|.")
    max_regression: MarginField = Field(
        None, description="Worse than Production by at most this: a number, or 'N%' of "
                          "|Production's value|.")
    source: SourceField = "logged"
    significant: Flag = Field(
        False, description="Relative rules must hold at the confidence bound (evaluation only).")

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        if not any(bound in data for bound in _BOUNDS):
            problems.append(((), "needs at least one of min, max, min_improvement, max_regression"))
        low, high = data.get("min"), data.get("max")
        if is_real(low) and is_real(high) and low > high:
            problems.append((("min",), f"min {low:g} is greater than max {high:g}"))
        if "min_improvement" in data and "max_regression" in data:
            problems.append((("max_regression",), "min_improvement and max_regression exclude "
                                                  "each other; keep one"))
        if data.get("significant") is True:
            if data.get("source", "logged") != "evaluation":
                problems.append((("significant",), "significant: true needs source: evaluation"))
            if "min_improvement" not in data and "max_regression" not in data:
                problems.append((("significant",),
                                 "significant: true needs min_improvement or max_regression"))
        return problems


class EvaluationModel(Section):
    """The pinned evaluation set both versions are re-scored on."""

    model_config = ConfigDict(json_schema_extra=lambda schema: tidy(schema, {
        "if": {"properties": {"data": {"pattern": "^sklearn:"}}},
        "else": {"not": {"required": ["test_size"]}},
    }))

    data: DataSource
    target: NonEmpty = Field(description="The label column; every other column is an input.")
    confidence: Confidence = 0.95
    resamples: Resamples = 2000
    seed: Seed = 0
    test_size: TestSize = None

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        source = data.get("data")
        if "test_size" in data and isinstance(source, str) and not source.startswith("sklearn:"):
            return [(("test_size",), "test_size only applies to sklearn: data; a file is used "
                                     "whole")]
        return []



class BudgetModel(Section):
    """An operational budget; lower is always better."""

    model_config = ConfigDict(json_schema_extra=lambda schema: tidy(schema, {
        "anyOf": [{"required": ["max"]}, {"required": ["max_increase"]}],
    }))

    max: Ceiling = Field(None, description="Absolute ceiling on the candidate.")
    max_increase: MarginField = Field(
        None, description="May grow by at most this versus Production: a number or 'N%'.")

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        if "max" not in data and "max_increase" not in data:
            return [((), "needs max and/or max_increase")]
        return []


class BudgetsModel(Section):
    """Operational budgets, measured on the evaluation data."""

    latency_p95_ms: BudgetModel | None = Field(
        None, description="95th percentile latency of predicting the evaluation batch, in ms.")
    size_mb: BudgetModel | None = Field(None, description="Size of the model's artifacts, in MB.")

    _sections_not_null = field_validator("latency_p95_ms", "size_mb", mode="before")(no_null)


class PolicyModel(Section):
    """A promotion policy: the candidate is promoted only when every rule passes."""

    model_config = ConfigDict(
        title="Promote policy",
        json_schema_extra=lambda schema: tidy(schema, {
            "dependentRequired": {"budgets": ["evaluation"]},
            "allOf": [
                {"if": {"properties": {"metrics": {"additionalProperties": {
                    "not": _IS_EVALUATION}}}},
                 "else": {"required": ["evaluation"]}},
                {"properties": {"metrics": {"patternProperties": {
                    "^(?!(" + "|".join(EVALUATION_METRICS) + ")$)": {"not": _IS_EVALUATION}}}}},
            ],
        }),
    )

    model: ModelName
    alias: AliasName = DEFAULT_ALIAS
    candidate: CandidateSpec = "latest"
    when_no_production: WhenNoProductionField = "promote"
    evaluation: EvaluationModel | None = Field(
        None, description="Evaluation data for metrics with source: evaluation and for budgets.")
    metrics: dict[MetricName, MetricModel] = Field(
        min_length=1, description="Rules by metric name (a metric logged on the version's run).")
    require_tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        description="Tags the candidate version must carry, with these exact (string) values.")
    budgets: BudgetsModel | None = None
    watch: WatchModel | None = Field(
        None, description="How the version is watched live once promoted (promote watch).")
    rollout: RolloutModel | None = Field(
        None, description="How a candidate that passed earns the alias on live traffic first "
                          "(promote rollout).")

    _sections_not_null = field_validator("evaluation", "budgets", "watch", "rollout",
                                         mode="before")(no_null)

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return _section_problems(data)


def _section_problems(data: dict[str, Any]) -> Problems:
    """Rules that relate the sections of a policy to each other."""
    problems: Problems = []
    metrics = data.get("metrics")
    for name, rule in metrics.items() if isinstance(metrics, dict) else ():
        if not isinstance(rule, dict) or rule.get("source") != "evaluation":
            continue
        if "evaluation" not in data:
            problems.append((("metrics", name, "source"),
                             "source: evaluation needs an 'evaluation' section"))
        if name not in EVALUATION_METRICS:
            problems.append((("metrics", name),
                             f"{describe(name)} cannot be computed on evaluation data"
                             f"{suggest(str(name), EVALUATION_METRICS)} "
                             f"(known: {', '.join(EVALUATION_METRICS)})"))
    if "budgets" in data and "evaluation" not in data:
        problems.append((("budgets",), "budgets need an 'evaluation' section (latency is "
                                       "measured by predicting its data)"))
    candidate, alias = data.get("candidate"), data.get("alias", DEFAULT_ALIAS)
    if isinstance(candidate, str) and candidate == f"@{alias}":
        problems.append((("candidate",), f"the candidate cannot be the alias this policy "
                                         f"guards ({describe(candidate)})"))
    return problems + rollout_problems(data)


# --------------------------------------------------------------------------------------------
# JSON Schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the policy language, as committed in policies/."""
    schema = PolicyModel.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Promote policy",
        "description": "A promotion policy for one MLflow registered model (docs/policies.md).",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


# --------------------------------------------------------------------------------------------
# Validation


def validate(document: Document, *, sha256: str = "", base_dir: str | None = None,
             check_files: bool = True) -> Policy:
    """Validate a read document and build the Policy (`path` is the document's name).

    `base_dir` is where relative evaluation data paths start (the policy file's directory);
    `check_files=False` skips checking that they exist.
    """
    context = {"base_dir": base_dir, "check_files": check_files}
    try:
        model = PolicyModel.model_validate(document.data, context=context)
    except ValidationError as exc:
        raise PolicyError(list(_issues(document, exc.errors()))) from None
    return to_policy(model, path=document.name, sha256=sha256, positions=document.positions)


def _issues(document: Document, errors: Sequence[Any]) -> Iterator[Issue]:
    for path, at_key, message in _flatten(errors, ()):
        yield document.issue(path, message, at_value=not at_key)


def _flatten(errors: Sequence[Any], prefix: Path) -> Iterator[tuple[Path, bool, str]]:
    """pydantic errors -> (key path, whether the problem is the key itself, message)."""
    for error in errors:
        loc = (*prefix, *error["loc"])
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "policy_rules":
            yield from _flatten(ctx.get("errors", ()), loc)
            for relative, message in ctx["issues"]:
                yield (*loc, *relative), True, message
        elif loc and loc[-1] == "[key]":
            yield loc[:-1], True, error["msg"]
        elif kind == "missing":
            yield loc[:-1], True, f"missing required key '{loc[-1]}'"
        elif kind == "extra_forbidden":
            yield loc, True, _unknown_key(loc)
        else:
            yield loc, False, _message(kind, loc, error)


def _message(kind: str, loc: Path, error: Any) -> str:
    if kind == "policy":
        return str(error["msg"])
    got = describe(error.get("input"))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        where = " at the top level" if not loc else ""
        return f"expected a mapping{where}, got {got}"
    if kind == "too_short":
        return "expected at least one metric" if loc == ("metrics",) else \
            "expected at least one entry"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {got}"  # not expected; still clear


def _unknown_key(loc: Path) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    allowed = list(model.model_fields) if model else []
    hint = suggest(key, allowed)
    if not hint and allowed:
        hint = f" (allowed: {', '.join(allowed)})"
    return f"unknown key {describe(key)}{hint}"


def _model_at(path: Path) -> type[BaseModel] | None:
    """The model that validates the mapping at `path` (walks the field annotations)."""
    current: Any = PolicyModel
    for part in path:
        if typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]  # `part` is a key of the dict
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _strip_optional(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else annotation
    return annotation


# --------------------------------------------------------------------------------------------
# Conversion to the frozen dataclasses


def to_policy(model: PolicyModel, *, path: str, sha256: str,
              positions: Positions | None = None) -> Policy:
    """The frozen Policy of a validated model; `positions` (of its file) locate later problems."""
    return Policy(
        path=path,
        sha256=sha256,
        model=model.model,
        alias=model.alias,
        candidate=Candidate.parse(model.candidate),
        when_no_production=model.when_no_production,
        metrics=tuple(_metric(name, rule) for name, rule in model.metrics.items()),
        require_tags=tuple(model.require_tags.items()),
        evaluation=_evaluation(model.evaluation) if model.evaluation else None,
        budgets=_budgets(model.budgets) if model.budgets else (),
        watch=to_watch(model.watch) if model.watch else None,
        rollout=to_rollout(model.rollout, model.alias) if model.rollout else None,
        positions=positions,
    )


def _metric(name: str, rule: MetricModel) -> MetricRule:
    return MetricRule(name=name, goal=rule.goal, min=rule.min, max=rule.max,
                      min_improvement=rule.min_improvement, max_regression=rule.max_regression,
                      source=rule.source, significant=rule.significant)


def _evaluation(section: EvaluationModel) -> Evaluation:
    test_size = section.test_size
    if test_size is None and section.data.startswith("sklearn:"):
        test_size = DEFAULT_TEST_SIZE
    return Evaluation(data=section.data, target=section.target, confidence=section.confidence,
                      resamples=section.resamples, seed=section.seed, test_size=test_size)


def _budgets(section: BudgetsModel) -> tuple[Budget, ...]:
    names: tuple[Literal["latency_p95_ms", "size_mb"], ...] = ("latency_p95_ms", "size_mb")
    return tuple(Budget(name=name, max=b.max, max_increase=b.max_increase)
                 for name in names if (b := getattr(section, name)) is not None)

