"""The `rollout:` block of the policy language: how a candidate that passed the gate earns the
guarded alias on a slice of live traffic first (promote rollout).

    rollout:
      alias: Production-canary   # default: <alias>-canary
      mode: canary               # canary (it answers its share) | shadow (it scores a copy)
      steps: [5%, 25%, 50%]      # the traffic share of each step; required in canary mode
      step_after: 30m            # each step lasts at least this long
      min_requests: 500          # the candidate's requests in the step (served or mirrored)
      min_labels: 30             # quality rules need this many labelled rows
      rules:
        error_rate:     {max: 1%, max_increase: 0.5%}
        latency_p95_ms: {max: 250, max_increase: 20%}
        prediction_psi: {max: 0.6}
        rmse:           {source: live, max_regression: 2%}
        agreement:      {min: 0.9, tolerance: 0.5}      # shadow mode only

The rules are the watch's (promotion.policy.watchschema), except that `max_increase` and
`max_regression` always compare with Production in the same window, so quality rules take no
`against`; `agreement` is the rollout's own.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from promotion.policy.checks import (
    MAX_GUARDED_ALIAS_LENGTH,
    MAX_STEPS,
    alias_problem,
    describe,
    no_null,
    step_list,
    step_share,
)
from promotion.policy.fields import (
    CanaryAlias,
    Count,
    MarginField,
    PositiveDuration,
    RolloutModeField,
    Share,
    Steps,
    Tolerance,
)
from promotion.policy.model import (
    DEFAULT_ALIAS,
    Agreement,
    Rollout,
    canary_alias,
    previous_alias,
)
from promotion.policy.section import Problems, Section, tidy
from promotion.policy.watchschema import (
    DriftRule,
    ErrorRateRule,
    LatencyRule,
    LiveQualityRule,
    rules_of,
)

_VS_PRODUCTION = "Versus Production in the same window: a number or 'N%' of its value."


class RolloutErrorRateRule(ErrorRateRule):
    """The share of the candidate's requests that failed (HTTP 5xx) in the step's window."""

    max_increase: MarginField = Field(None, description=_VS_PRODUCTION)


class RolloutLatencyRule(LatencyRule):
    """The 95th percentile latency of the candidate's successful requests in the step, in ms."""

    max_increase: MarginField = Field(None, description=_VS_PRODUCTION)


class RolloutMetricRule(LiveQualityRule):
    """A quality metric of the candidate's labelled rows in the step, computed like the watch's."""

    max_regression: MarginField = Field(
        None, description="Worse than Production on its labelled rows of the same window by at "
                          "most this: a number or 'N%'.")


class AgreementRule(Section):
    """Shadow mode: the share of mirrored requests on which the candidate agrees with Production."""

    min: Share = Field(description="The least share of agreeing rows: 0.9 or '90%'.")
    tolerance: Tolerance = Field(
        0, validate_default=True,
        description="Numbers agree when they differ by at most this: a number, or 'N%' of "
                    "|Production's prediction|. Class labels agree when equal.")
    min_rows: Count = Field(100, description="Fewer rows scored by both versions: insufficient "
                                             "data, never a breach.")


class RolloutRules(Section):
    """The rules each step must pass; any one breached aborts the rollout."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {"minProperties": 1}))

    error_rate: RolloutErrorRateRule | None = None
    latency_p95_ms: RolloutLatencyRule | None = None
    prediction_psi: DriftRule | None = Field(
        None, description="PSI of the candidate's predictions vs its reference profile.")
    feature_psi: DriftRule | None = Field(
        None, description="PSI of the worst input feature vs the candidate's reference profile.")
    prediction_ks: DriftRule | None = Field(
        None, description="Two-sample KS statistic of the predictions vs the reference.")
    feature_ks: DriftRule | None = Field(
        None, description="Two-sample KS statistic of the worst numeric feature.")
    rmse: RolloutMetricRule | None = None
    mae: RolloutMetricRule | None = None
    r2: RolloutMetricRule | None = None
    accuracy: RolloutMetricRule | None = None
    f1: RolloutMetricRule | None = None
    roc_auc: RolloutMetricRule | None = None
    log_loss: RolloutMetricRule | None = None
    agreement: AgreementRule | None = Field(
        None, description="Shadow mode only: how often the candidate agrees with Production.")

    _not_null = field_validator("*", mode="before")(no_null)

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return [] if data else [((), "expected at least one rule")]


_SHADOW = {"required": ["mode"], "properties": {"mode": {"const": "shadow"}}}


class RolloutModel(Section):
    """How a candidate that passed the gate earns the alias on live traffic: promote rollout."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {
        "required": ["rules"],
        "if": _SHADOW,
        "else": {"required": ["steps"],
                 "properties": {"rules": {"not": {"required": ["agreement"]}}}},
    }))

    alias: CanaryAlias = None
    mode: RolloutModeField = "canary"
    steps: Steps | None = Field(
        None, description="The traffic share of each step, increasing: [5%, 25%, 50%]. Required "
                          "in canary mode; default [100%] in shadow mode.")
    step_after: PositiveDuration = Field("30m", validate_default=True, description=(
        "Each step lasts at least this long before it may advance."))
    min_requests: Count = Field(500, description="The candidate's requests in the step (served "
                                                 "or mirrored) before it may advance.")
    min_labels: Count = Field(30, description="Quality rules need this many labelled rows.")
    rules: RolloutRules

    _rules_not_null = field_validator("rules", mode="before")(no_null)
    _steps_list = field_validator("steps", mode="before")(step_list)

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        if data.get("mode", "canary") == "canary":
            if "steps" not in data:
                problems.append(((), "canary mode needs steps (the traffic share of each step, "
                                     "e.g. [5%, 25%, 50%])"))
            rules = data.get("rules")
            if isinstance(rules, dict) and "agreement" in rules:
                problems.append((("rules", "agreement"), "agreement needs mode: shadow (in canary "
                                                         "mode each request is scored by one "
                                                         "version only)"))
        return problems + _not_increasing(data.get("steps"))


def _not_increasing(steps: Any) -> Problems:
    """Each valid step above every valid step before it (invalid ones are reported on their own)."""
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        return []
    problems: Problems = []
    highest: tuple[Any, float] | None = None  # the highest step so far: as written, and its share
    for index, raw in enumerate(steps):
        try:
            share = step_share(raw)
        except PydanticCustomError:
            continue
        if highest is not None and share <= highest[1]:
            problems.append((("steps", index), f"steps must increase: {_shown(raw)} is not above "
                                               f"{_shown(highest[0])}"))
        else:
            highest = (raw, share)
    return problems


def _shown(step: Any) -> str:
    return step.strip() if isinstance(step, str) else f"{step:g}"


def rollout_problems(data: dict[str, Any]) -> Problems:
    """The rules between a policy's rollout and the rest of it: which aliases it may use."""
    rollout, alias = data.get("rollout"), data.get("alias", DEFAULT_ALIAS)
    if not isinstance(rollout, dict) or not isinstance(alias, str):
        return []
    problems: Problems = []
    canary = rollout.get("alias", canary_alias(alias))
    if "alias" in rollout and canary == alias:
        problems.append((("rollout", "alias"), f"the canary alias must differ from the alias this "
                                               f"policy guards ({describe(alias)})"))
    elif "alias" in rollout and canary == previous_alias(alias):
        problems.append((("rollout", "alias"), f"the canary alias cannot be {describe(canary)}: "
                                               f"promotion keeps the displaced version there"))
    elif "alias" not in rollout and alias_problem(alias) is None \
            and len(alias) <= MAX_GUARDED_ALIAS_LENGTH < len(canary):
        problems.append((("rollout",), f"the default canary alias '{alias[:8]}...-canary' would "
                                       f"have {len(canary)} characters, more than "
                                       f"{MAX_GUARDED_ALIAS_LENGTH} ('-previous' must still "
                                       f"fit); set rollout.alias"))
    if isinstance(canary, str) and data.get("candidate") == f"@{canary}":
        problems.append((("candidate",), f"the candidate cannot be the rollout's canary alias "
                                         f"({describe(data['candidate'])})"))
    return problems


def to_rollout(model: RolloutModel, guarded_alias: str) -> Rollout:
    """The frozen `Rollout` of a validated block of a policy guarding `guarded_alias`."""
    rules, agreement = model.rules, model.rules.agreement
    return Rollout(
        alias=model.alias or canary_alias(guarded_alias),
        rules=rules_of(rules, [name for name in RolloutRules.model_fields if name != "agreement"]),
        mode=model.mode,
        steps=tuple(model.steps) if model.steps is not None else (1.0,),
        step_after_seconds=model.step_after,
        min_requests=model.min_requests,
        min_labels=model.min_labels,
        agreement=None if agreement is None else Agreement(
            min=agreement.min, tolerance=agreement.tolerance, min_rows=agreement.min_rows),
    )

