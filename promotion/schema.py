"""The policy language as one declarative value: pydantic models used to validate and to export.

`PolicyModel` is the whole language. Each field's type carries its own validator (with a short,
stable message) and its JSON Schema, so `json_schema()` (committed as policies/schema.json, used by
editors through the `# yaml-language-server: $schema=schema.json` modeline) and `validate()` cannot
drift apart. Rules that relate several keys are validators on the model that owns those keys; each
reports the key path it is about, and every problem in a file is reported at once.

`validate(document)` turns a `promotion.policyfile.Document` into the frozen
`promotion.policy.Policy`, or raises `PolicyError` with one `Issue` (line, column, key path,
message) per problem.

Two things pydantic would accept are refused on purpose: `null` anywhere (an empty `max:` is a
mistake, not "no bound"), and numbers written as strings or booleans (`max: "70"`, `min: true`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from typing import Annotated, Any, Literal, NoReturn, TypeGuard

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from promotion.policy import (
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
)
from promotion.policyfile import Document, Issue, Path, PolicyError, printable

EVALUATION_METRICS = ("rmse", "mae", "r2", "accuracy", "f1", "roc_auc", "log_loss")
# The datasets bundled with scikit-learn (no download) that load as (features, target).
SKLEARN_LOADERS = ("load_breast_cancer", "load_diabetes", "load_digits", "load_iris", "load_wine")
DATA_SUFFIXES = (".csv", ".parquet")
DEFAULT_TEST_SIZE = 0.25

# MLflow's own rules (mlflow.utils.validation): alias names match ^[\w\-]*$ (Unicode \w), are
# non-empty and at most 255 characters; 'latest' (any case) and v<digits> are reserved.
_ALIAS_CHARS = re.compile(r"[\w-]+")
_VERSION_ALIAS = re.compile(r"[vV]\d+")
MAX_ALIAS_LENGTH = 255
MAX_GUARDED_ALIAS_LENGTH = MAX_ALIAS_LENGTH - len("-previous")
MAX_MODEL_NAME_LENGTH = 256  # the registry's column width
MAX_TAG_KEY_LENGTH = 250
MAX_VERSION = 2**63 - 1  # the registry stores version numbers as 64-bit integers at most
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_NEGATIVE_PERCENT = re.compile(r"-\s*[0-9]+(?:\.[0-9]+)?\s*%")


# --------------------------------------------------------------------------------------------
# Messages


def fail(message: str) -> NoReturn:
    """Raise a validation error whose text is exactly `message` (no pydantic prefix)."""
    # The message goes through the context, never the template: user text may contain braces.
    raise PydanticCustomError("policy", "{message}", {"message": message})


def describe(value: Any) -> str:
    """A value as YAML would show it, for `got ...` in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return printable(repr(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return printable(str(value), limit=40)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return value.isoformat()
    return type(value).__name__


def suggest(word: str, options: Sequence[str], cutoff: float = 0.6) -> str:
    """`; did you mean 'min'?` when a close option exists, else ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not close:
        close = difflib.get_close_matches(word.lower(), options, n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""


def _quote_hint(value: Any) -> str:
    """YAML turns unquoted `true`, `3` or `1.5` into non-strings: say how to keep the text."""
    if isinstance(value, bool | int | float):
        return f'; quote it: "{describe(value)}"'
    return ""


# --------------------------------------------------------------------------------------------
# Scalar types: each a validator plus its JSON Schema


def _unquote_hint(value: str, accepted: Callable[[str], bool]) -> str:
    """A quoted number or boolean is a string in YAML: say so when that is the only problem."""
    try:
        return "; write it without quotes" if accepted(value.strip()) else ""
    except (ValueError, OverflowError):
        return ""


def _number(value: Any, expected: str = "a finite number") -> float:
    if isinstance(value, str):
        hint = _unquote_hint(value, lambda v: math.isfinite(float(v)))
        fail(f"expected {expected}, got {describe(value)}{hint}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(f"expected {expected}, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        fail(f"expected {expected}, got {describe(value)}")
    if not math.isfinite(number):
        fail(f"expected {expected}, got {describe(value)}")
    return number


def _string(value: Any) -> str:
    if not isinstance(value, str):
        fail(f"expected a string, got {describe(value)}{_quote_hint(value)}")
    return value


def _non_empty(value: Any) -> str:
    text = _string(value)
    if not text.strip():
        fail("expected a non-empty string")
    return text


def _margin(value: Any) -> Margin:
    expected = "a number >= 0 or a percentage like '1%'"
    if isinstance(value, str):
        if match := _PERCENT.fullmatch(value):
            return Margin(_number(float(match[1]), expected) / 100, relative=True)
        if _NEGATIVE_PERCENT.fullmatch(value):
            fail(f"a margin cannot be negative, got {describe(value)}")
        hint = _unquote_hint(value, lambda v: math.isfinite(float(v)))
        fail(f"expected {expected}, got {describe(value)}{hint}")
    number = _number(value, expected)
    if number < 0:
        fail(f"a margin cannot be negative, got {describe(value)}")
    return Margin(number)


def _one_of(*options: str) -> Callable[[Any], Any]:
    listed = " or ".join(f"'{o}'" for o in options) if len(options) == 2 else \
        "one of " + ", ".join(f"'{o}'" for o in options)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            hint = suggest(value, options) if isinstance(value, str) else ""
            fail(f"expected {listed}, got {describe(value)}{hint}")
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        hint = _unquote_hint(value, lambda v: v in ("true", "false")) \
            if isinstance(value, str) else ""
        fail(f"expected true or false, got {describe(value)}{hint}")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = _unquote_hint(value, str.isdigit) if isinstance(value, str) else ""
            fail(f"expected an integer, got {describe(value)}{hint}")
        if not low <= value <= high:
            fail(f"expected an integer from {low} to {high}, got {describe(value)}")
        return value

    return check


def _fraction(value: Any) -> float:
    number = _number(value, "a number between 0 and 1")
    if not 0 < number < 1:
        hint = f"; {number:g}% is {number / 100:g}" if 1 < number < 100 else ""
        fail(f"expected a number between 0 and 1 (exclusive), got {describe(value)}{hint}")
    return number


def alias_problem(name: str) -> str | None:
    """Why MLflow would refuse `name` as an alias, or None."""
    if not name:
        return "an alias name cannot be empty"
    if not _ALIAS_CHARS.fullmatch(name):
        return f"alias names may only contain letters, digits, '_' and '-', got {describe(name)}"
    if len(name) > MAX_ALIAS_LENGTH:
        return f"alias names are at most {MAX_ALIAS_LENGTH} characters, got {len(name)}"
    if name.lower() == "latest":
        return f"alias {describe(name)} is reserved by MLflow ('latest' in any case)"
    if _VERSION_ALIAS.fullmatch(name):
        return f"alias {describe(name)} is reserved by MLflow for version numbers"
    return None


def _guarded_alias(value: Any) -> str:
    name = _string(value)
    if problem := alias_problem(name):
        fail(problem)
    if len(name) > MAX_GUARDED_ALIAS_LENGTH:
        # Promotion also sets `<alias>-previous` (Policy.previous_alias), which MLflow must accept.
        fail(f"the guarded alias is at most {MAX_GUARDED_ALIAS_LENGTH} characters, got "
             f"{len(name)} ('{name[:8]}...-previous' must fit MLflow's {MAX_ALIAS_LENGTH})")
    return name


def _candidate(value: Any) -> str | int:
    expected = "expected 'latest', a version number or '@<alias>'"
    if isinstance(value, bool) or not isinstance(value, int | str):
        fail(f"{expected}, got {describe(value)}")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 30:
        value = int(value)  # a quoted version number
    if isinstance(value, int):
        if value < 1:
            fail(f"version numbers start at 1, got {value}")
        if value > MAX_VERSION:
            fail(f"version numbers are at most {MAX_VERSION}, got {describe(value)}")
        return value
    if value == "latest":
        return value
    if value.startswith("@"):
        if problem := alias_problem(value[1:]):
            fail(problem)
        return value
    hint = suggest(value, ["latest"], cutoff=0.5)
    if not hint and alias_problem(value) is None:
        hint = f"; did you mean '@{value}'?"
    fail(f"{expected}, got {describe(value)}{hint}")


def _model_name(value: Any) -> str:
    name = _string(value)
    if not name.strip():
        fail("the model name cannot be empty")
    if "/" in name or ":" in name:
        fail(f"model names cannot contain '/' or ':', got {describe(name)}")
    if name == "." or name.startswith(".."):
        fail(f"model names cannot be '.' or start with '..', got {describe(name)}")
    if len(name) > MAX_MODEL_NAME_LENGTH:
        fail(f"model names are at most {MAX_MODEL_NAME_LENGTH} characters, got {len(name)}")
    return name


def _tag_key(value: Any) -> str:
    key = _non_empty(value)
    if len(key) > MAX_TAG_KEY_LENGTH:
        fail(f"tag keys are at most {MAX_TAG_KEY_LENGTH} characters, got {len(key)}")
    return key


def _data_source(value: Any, info: ValidationInfo) -> str:
    """`sklearn:<loader>` as is; a file path resolved against the policy's directory."""
    text = _non_empty(value)
    if text.startswith("sklearn:"):
        loader = text.removeprefix("sklearn:")
        if loader not in SKLEARN_LOADERS:
            hint = suggest(loader, SKLEARN_LOADERS)
            fail(f"unknown scikit-learn dataset {describe(loader)}{hint} "
                 f"(known: {', '.join(SKLEARN_LOADERS)})")
        return text
    if not text.lower().endswith(DATA_SUFFIXES):
        fail(f"expected a .csv or .parquet file or 'sklearn:<loader>', got {describe(text)}")
    context = info.context or {}
    path = os.path.abspath(os.path.join(context.get("base_dir") or os.curdir, text))
    if context.get("check_files", True) and not os.path.isfile(path):
        fail(f"file not found: {describe(text)} (paths are relative to the policy file)")
    return path


def _schema(json_schema: dict[str, Any], description: str) -> WithJsonSchema:
    return WithJsonSchema({**json_schema, "description": description})


_MARGIN_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0},
                            {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?%$"}]}
_ALIAS_SCHEMA = {"type": "string", "pattern": "^[\\w-]+$", "maxLength": MAX_GUARDED_ALIAS_LENGTH,
                 "not": {"anyOf": [{"pattern": "^[lL][aA][tT][eE][sS][tT]$"},
                                   {"pattern": "^[vV][0-9]+$"}]}}

ModelName = Annotated[str, PlainValidator(_model_name), _schema(
    {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME_LENGTH,
     "pattern": "^(?!\\.$)(?!\\.\\.)[^/:]*[^/:\\s][^/:]*$"},
    "The registered model's name, as in MLflow (no '/' or ':').")]
AliasName = Annotated[str, PlainValidator(_guarded_alias), _schema(
    _ALIAS_SCHEMA, "The alias this policy guards: the version it points to is 'Production'.")]
CandidateSpec = Annotated[str | int, PlainValidator(_candidate), _schema(
    {"anyOf": [{"const": "latest"}, {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
               {"type": "string", "pattern": "^[0-9]*[1-9][0-9]*$", "maxLength": 19},
               {"type": "string", "pattern": "^@[\\w-]+$", "maxLength": MAX_ALIAS_LENGTH + 1,
                "not": {"anyOf": [{"pattern": "^@[lL][aA][tT][eE][sS][tT]$"},
                                  {"pattern": "^@[vV][0-9]+$"}]}}]},
    "The version to gate: 'latest' (highest version number), a version number, or '@<alias>'.")]
GoalField = Annotated[Goal, PlainValidator(_one_of("minimize", "maximize")), _schema(
    {"enum": ["minimize", "maximize"]}, "Whether lower or higher values are better.")]
SourceField = Annotated[Source, PlainValidator(_one_of("logged", "evaluation")), _schema(
    {"enum": ["logged", "evaluation"]},
    "logged: the value logged on the version's run; evaluation: both versions re-scored on "
    "evaluation.data.")]
WhenNoProductionField = Annotated[WhenNoProduction, PlainValidator(_one_of("promote", "reject")),
                                  _schema({"enum": ["promote", "reject"]},
                                          "What to do when no version holds the alias yet.")]
Threshold = Annotated[float | None, PlainValidator(_number), WithJsonSchema({"type": "number"})]
MarginField = Annotated[Margin | None, PlainValidator(_margin), WithJsonSchema(_MARGIN_SCHEMA)]
Flag = Annotated[bool, PlainValidator(_bool), WithJsonSchema({"type": "boolean"})]
NonEmpty = Annotated[str, PlainValidator(_non_empty), WithJsonSchema({"type": "string",
                                                                     "minLength": 1})]
TagKey = Annotated[str, PlainValidator(_tag_key), WithJsonSchema(
    {"type": "string", "minLength": 1, "maxLength": MAX_TAG_KEY_LENGTH})]
TagValue = Annotated[str, PlainValidator(_string), WithJsonSchema({"type": "string"})]
DataSource = Annotated[str, PlainValidator(_data_source), _schema(
    {"type": "string", "anyOf": [
        {"pattern": "^sklearn:(" + "|".join(SKLEARN_LOADERS) + ")$"},
        {"pattern": "^(?!sklearn:).*\\.([cC][sS][vV]|[pP][aA][rR][qQ][uU][eE][tT])$"}]},
    "A CSV or Parquet file (relative to the policy file) or 'sklearn:<loader>'.")]
Confidence = Annotated[float, PlainValidator(_fraction), _schema(
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "Confidence level of the bootstrap intervals.")]
TestSize = Annotated[float | None, PlainValidator(_fraction), _schema(
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "Holdout share of a sklearn: dataset (default 0.25); only for sklearn: sources.")]
Resamples = Annotated[int, PlainValidator(_integer(100, 100_000)), _schema(
    {"type": "integer", "minimum": 100, "maximum": 100_000}, "Bootstrap resamples.")]
Seed = Annotated[int, PlainValidator(_integer(0, 2**32 - 1)), _schema(
    {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    "Seed of the bootstrap (and of the sklearn: split).")]
MetricName = Annotated[str, PlainValidator(_non_empty), WithJsonSchema({"type": "string",
                                                                       "minLength": 1})]


# --------------------------------------------------------------------------------------------
# The models

_IS_EVALUATION = {"required": ["source"], "properties": {"source": {"const": "evaluation"}}}
_BOUNDS = ("min", "max", "min_improvement", "max_regression")


Problems = list[tuple[Path, str]]  # (key path relative to the section, message)


class _Section(BaseModel):
    """A mapping of the language: unknown keys refused, and `rules` relating its keys.

    `rules` read the raw mapping (key presence, plain values) rather than the validated model, so
    they are reported together with problems in the individual values instead of only once
    those are fixed: every issue in a file is listed in one run.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=lambda schema: _tidy(schema))

    @classmethod
    def rules(cls, data: dict[str, Any]) -> Problems:
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        problems = cls.rules(data) if isinstance(data, dict) else []
        if not problems:
            return handler(data)
        errors: list[Any] = []
        try:
            handler(data)
        except ValidationError as exc:
            errors = list(exc.errors())
        # One error carrying the rules' problems and the values' errors; `_flatten` unpacks it.
        raise PydanticCustomError("policy_rules", "{message}",
                                  {"message": problems[0][1], "issues": problems, "errors": errors})


def _real(value: Any) -> TypeGuard[int | float]:
    """A plain finite number (rules compare values only when they are valid ones)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def _no_null(value: Any) -> Any:
    """For optional sections: leaving one out is fine, writing `evaluation:` with nothing is not.

    (Every scalar type refuses null itself; pydantic would take null for a `Model | None`.)
    """
    if value is None:
        fail("expected a mapping, got null")
    return value


class MetricModel(_Section):
    """A rule on one metric: absolute bounds and/or a margin against Production."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _tidy(schema, {
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
    def rules(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        if not any(bound in data for bound in _BOUNDS):
            problems.append(((), "needs at least one of min, max, min_improvement, max_regression"))
        low, high = data.get("min"), data.get("max")
        if _real(low) and _real(high) and low > high:
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


class EvaluationModel(_Section):
    """The pinned evaluation set both versions are re-scored on."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _tidy(schema, {
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
    def rules(cls, data: dict[str, Any]) -> Problems:
        source = data.get("data")
        if "test_size" in data and isinstance(source, str) and not source.startswith("sklearn:"):
            return [(("test_size",), "test_size only applies to sklearn: data; a file is used "
                                     "whole")]
        return []


def _at_least_zero(value: Any) -> float:
    number = _number(value, "a number >= 0")
    if number < 0:
        fail(f"expected a number >= 0, got {describe(value)}")
    return number


class BudgetModel(_Section):
    """An operational budget; lower is always better."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _tidy(schema, {
        "anyOf": [{"required": ["max"]}, {"required": ["max_increase"]}],
    }))

    max: Annotated[float | None, PlainValidator(_at_least_zero),
                   WithJsonSchema({"type": "number", "minimum": 0})] = Field(
        None, description="Absolute ceiling on the candidate.")
    max_increase: MarginField = Field(
        None, description="May grow by at most this versus Production: a number or 'N%'.")

    @classmethod
    def rules(cls, data: dict[str, Any]) -> Problems:
        if "max" not in data and "max_increase" not in data:
            return [((), "needs max and/or max_increase")]
        return []


class BudgetsModel(_Section):
    """Operational budgets, measured on the evaluation data."""

    latency_p95_ms: BudgetModel | None = Field(
        None, description="95th percentile latency of predicting the evaluation batch, in ms.")
    size_mb: BudgetModel | None = Field(None, description="Size of the model's artifacts, in MB.")

    _sections_not_null = field_validator("latency_p95_ms", "size_mb", mode="before")(_no_null)


class PolicyModel(_Section):
    """A promotion policy: the candidate is promoted only when every rule passes."""

    model_config = ConfigDict(
        title="Promote policy",
        json_schema_extra=lambda schema: _tidy(schema, {
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

    _sections_not_null = field_validator("evaluation", "budgets", mode="before")(_no_null)

    @classmethod
    def rules(cls, data: dict[str, Any]) -> Problems:
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
    return problems


# --------------------------------------------------------------------------------------------
# JSON Schema


def _tidy(schema: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Drop pydantic's noise (titles, null branches, null defaults) and add the cross-key rules.

    null is never a valid value in a policy, so `X | None` fields are exported as plain `X`.
    """
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            del prop["default"]
        branches = prop.get("anyOf")
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update({k: v for k, v in rest[0].items() if k not in prop})
            else:
                prop["anyOf"] = rest
    schema.update(extra or {})


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
    return to_policy(model, path=document.name, sha256=sha256)


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


def to_policy(model: PolicyModel, *, path: str, sha256: str) -> Policy:
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
