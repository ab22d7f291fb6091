"""The value types of the policy language: each a checker (promotion.policy.checks) plus its
JSON Schema, as `Annotated` types the models of promotion.policy.schema are made of.

A type's validator and its schema are declared side by side, so what `promote policy validate`
accepts and what editors are told (policies/schema.json) cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema

from promotion.policy.checks import (
    MAX_ALIAS_LENGTH,
    MAX_GUARDED_ALIAS_LENGTH,
    MAX_MODEL_NAME_LENGTH,
    MAX_STEPS,
    MAX_TAG_KEY_LENGTH,
    MAX_VERSION,
    SKLEARN_LOADERS,
    at_least_zero,
    boolean,
    candidate_spec,
    data_source,
    duration,
    finite_number,
    fraction,
    guarded_alias,
    integer,
    margin,
    model_name,
    non_empty,
    one_of,
    positive_duration,
    rate,
    step_share,
    string_value,
    tag_key,
)
from promotion.policy.model import Goal, Margin, RolloutMode, Source, WhenNoProduction


def _schema(json_schema: dict[str, Any], description: str) -> WithJsonSchema:
    return WithJsonSchema({**json_schema, "description": description})


_MARGIN_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0},
                            {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?%$"}]}
_ALIAS_SCHEMA = {"type": "string", "pattern": "^[\\w-]+$", "maxLength": MAX_GUARDED_ALIAS_LENGTH,
                 "not": {"anyOf": [{"pattern": "^[lL][aA][tT][eE][sS][tT]$"},
                                   {"pattern": "^[vV][0-9]+$"}]}}

ModelName = Annotated[str, PlainValidator(model_name), _schema(
    {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME_LENGTH,
     "pattern": "^(?!\\.$)(?!\\.\\.)[^/:]*[^/:\\s][^/:]*$"},
    "The registered model's name, as in MLflow (no '/' or ':').")]
AliasName = Annotated[str, PlainValidator(guarded_alias), _schema(
    _ALIAS_SCHEMA, "The alias this policy guards: the version it points to is 'Production'.")]
CandidateSpec = Annotated[str | int, PlainValidator(candidate_spec), _schema(
    {"anyOf": [{"const": "latest"}, {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
               {"type": "string", "pattern": "^[0-9]*[1-9][0-9]*$", "maxLength": 19},
               {"type": "string", "pattern": "^@[\\w-]+$", "maxLength": MAX_ALIAS_LENGTH + 1,
                "not": {"anyOf": [{"pattern": "^@[lL][aA][tT][eE][sS][tT]$"},
                                  {"pattern": "^@[vV][0-9]+$"}]}}]},
    "The version to gate: 'latest' (highest version number), a version number, or '@<alias>'.")]
GoalField = Annotated[Goal, PlainValidator(one_of("minimize", "maximize")), _schema(
    {"enum": ["minimize", "maximize"]}, "Whether lower or higher values are better.")]
SourceField = Annotated[Source, PlainValidator(one_of("logged", "evaluation")), _schema(
    {"enum": ["logged", "evaluation"]},
    "logged: the value logged on the version's run; evaluation: both versions re-scored on "
    "evaluation.data.")]
WhenNoProductionField = Annotated[WhenNoProduction, PlainValidator(one_of("promote", "reject")),
                                  _schema({"enum": ["promote", "reject"]},
                                          "What to do when no version holds the alias yet.")]
Threshold = Annotated[float | None, PlainValidator(finite_number),
                      WithJsonSchema({"type": "number"})]
MarginField = Annotated[Margin | None, PlainValidator(margin), WithJsonSchema(_MARGIN_SCHEMA)]
Tolerance = Annotated[Margin, PlainValidator(margin), WithJsonSchema(_MARGIN_SCHEMA)]
Flag = Annotated[bool, PlainValidator(boolean), WithJsonSchema({"type": "boolean"})]
NonEmpty = Annotated[str, PlainValidator(non_empty), WithJsonSchema({"type": "string",
                                                                    "minLength": 1})]
TagKey = Annotated[str, PlainValidator(tag_key), WithJsonSchema(
    {"type": "string", "minLength": 1, "maxLength": MAX_TAG_KEY_LENGTH})]
TagValue = Annotated[str, PlainValidator(string_value), WithJsonSchema({"type": "string"})]
DataSource = Annotated[str, PlainValidator(data_source), _schema(
    {"type": "string", "anyOf": [
        {"pattern": "^sklearn:(" + "|".join(SKLEARN_LOADERS) + ")$"},
        {"pattern": "^(?!sklearn:).*\\.([cC][sS][vV]|[pP][aA][rR][qQ][uU][eE][tT])$"}]},
    "A CSV or Parquet file (relative to the policy file) or 'sklearn:<loader>'.")]
Confidence = Annotated[float, PlainValidator(fraction), _schema(
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "Confidence level of the bootstrap intervals.")]
TestSize = Annotated[float | None, PlainValidator(fraction), _schema(
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "Holdout share of a sklearn: dataset (default 0.25); only for sklearn: sources.")]
Resamples = Annotated[int, PlainValidator(integer(100, 100_000)), _schema(
    {"type": "integer", "minimum": 100, "maximum": 100_000}, "Bootstrap resamples.")]
Seed = Annotated[int, PlainValidator(integer(0, 2**32 - 1)), _schema(
    {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    "Seed of the bootstrap (and of the sklearn: split).")]
MetricName = Annotated[str, PlainValidator(non_empty), WithJsonSchema({"type": "string",
                                                                      "minLength": 1})]
Ceiling = Annotated[float | None, PlainValidator(at_least_zero),
                    WithJsonSchema({"type": "number", "minimum": 0})]

_DURATION_SCHEMA = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[smhd]$"}
Duration = Annotated[float, PlainValidator(duration), _schema(
    _DURATION_SCHEMA, "A duration: a number and a unit, s, m, h or d ('15m', '2h').")]
PositiveDuration = Annotated[float, PlainValidator(positive_duration), _schema(
    {**_DURATION_SCHEMA, "not": {"pattern": "^0+(\\.0+)?[smhd]$"}},
    "A duration above zero: a number and a unit, s, m, h or d ('15m', '2h').")]
_PERCENT_SHARE = "^(100(\\.0+)?|[0-9]{1,2}(\\.[0-9]+)?)%$"
_RATE_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                          {"type": "string", "pattern": _PERCENT_SHARE}]}
Rate = Annotated[float | None, PlainValidator(rate), WithJsonSchema(_RATE_SCHEMA)]
Share = Annotated[float, PlainValidator(rate), WithJsonSchema(_RATE_SCHEMA)]
Count = Annotated[int, PlainValidator(integer(1, 10**9)), WithJsonSchema(
    {"type": "integer", "minimum": 1, "maximum": 10**9})]
OnBreach = Annotated[str, PlainValidator(one_of("rollback", "alert")), _schema(
    {"enum": ["rollback", "alert"]},
    "rollback: a breach during the bake period moves the alias back; alert: only record it.")]
Against = Annotated[str, PlainValidator(one_of("offline", "previous")), _schema(
    {"enum": ["offline", "previous"]},
    "offline: the version's own logged metric; previous: the displaced version's live value.")]
LiveSource = Annotated[str, PlainValidator(one_of("live")), _schema(
    {"const": "live"}, "live: computed from the logged predictions joined to their labels.")]

CanaryAlias = Annotated[str | None, PlainValidator(guarded_alias), _schema(
    _ALIAS_SCHEMA, "The alias the candidate holds during its rollout (default: <alias>-canary).")]
RolloutModeField = Annotated[RolloutMode, PlainValidator(one_of("canary", "shadow")), _schema(
    {"enum": ["canary", "shadow"]},
    "canary: the candidate answers each step's share of the requests; shadow: it scores a copy "
    "of that share while Production answers every request.")]
_STEP_SCHEMA = {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                          {"type": "string", "pattern": _PERCENT_SHARE,
                           "not": {"pattern": "^0+(\\.0+)?%$"}}]}
StepShare = Annotated[float, PlainValidator(step_share), WithJsonSchema(_STEP_SCHEMA)]
# The list as a whole (a list, 1 to MAX_STEPS items, not null) is checked by `checks.step_list`,
# a field validator of the rollout; increasing is a rule of the rollout (rolloutschema).
Steps = Annotated[list[StepShare], WithJsonSchema(
    {"type": "array", "items": _STEP_SCHEMA, "minItems": 1, "maxItems": MAX_STEPS})]
