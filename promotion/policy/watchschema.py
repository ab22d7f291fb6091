"""The `watch:` block of the policy language: how a promoted version is watched live.

    watch:
      bake: 2h                # after a promotion, breaches roll back; later they only alert
      window: 15m             # each watch judges the last 15 minutes of the version's traffic
      min_requests: 200       # fewer: "insufficient data", never a breach
      min_labels: 30          # quality rules (source: live) need this many labelled rows
      rules:
        error_rate:     {max: 1%}
        latency_p95_ms: {max_increase: 25%}
        prediction_psi: {max: 0.2}
        feature_psi:    {max: 0.25}
        rmse:           {source: live, max_regression: 5%}
      on_breach: rollback     # or alert

Each rule has its own mapping type, so the JSON Schema names exactly which keys each rule takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, cast

from pydantic import ConfigDict, Field, field_validator

from promotion.policy.checks import is_real, no_null
from promotion.policy.fields import (
    Against,
    Ceiling,
    Count,
    Duration,
    LiveSource,
    MarginField,
    OnBreach,
    PositiveDuration,
    Rate,
    Threshold,
)
from promotion.policy.model import Watch, WatchRule
from promotion.policy.section import Problems, Section, tidy


def _needs(*keys: str) -> dict[str, Any]:
    return {"anyOf": [{"required": [k]} for k in keys]}


class _CeilingRule(Section):
    """A signal with a ceiling and/or a growth limit against the displaced version."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, _needs("max", "max_increase")))

    max_increase: MarginField = Field(
        None, description="Versus the displaced version's recent traffic: a number or 'N%' of "
                          "its value.")

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return [] if {"max", "max_increase"} & set(data) else [((), "needs max and/or "
                                                                    "max_increase")]


class ErrorRateRule(_CeilingRule):
    """The share of requests the model failed (HTTP 5xx) in the window."""

    max: Rate = Field(None, description="Ceiling: a share (0.01) or a percentage ('1%').")


class LatencyRule(_CeilingRule):
    """The 95th percentile latency of the version's successful requests, in ms."""

    max: Ceiling = Field(None, description="Ceiling in milliseconds.")


class DriftRule(Section):
    """A drift statistic against the version's reference profile (PSI, or the KS statistic)."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {"required": ["max"]}))

    max: Ceiling = Field(None, description="Ceiling on the statistic.")

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return [] if "max" in data else [((), "needs max")]


class LiveQualityRule(Section):
    """A quality metric computed from logged predictions joined to their labels (the keys the
    watch and a rollout share; a rollout's regression is always against Production)."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {
        "required": ["source"], **_needs("min", "max", "max_regression")}))

    source: LiveSource = Field(description="Must be 'live'.")
    min: Threshold = Field(None, description="Absolute lower bound (inclusive).")
    max: Threshold = Field(None, description="Absolute upper bound (inclusive).")
    max_regression: MarginField = Field(
        None, description="Worse than the reference by at most this: a number or 'N%'.")

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        problems: Problems = []
        if not {"min", "max", "max_regression"} & set(data):
            problems.append(((), "needs at least one of min, max, max_regression"))
        low, high = data.get("min"), data.get("max")
        if is_real(low) and is_real(high) and low > high:
            problems.append((("min",), f"min {low:g} is greater than max {high:g}"))
        return problems


class LiveMetricRule(LiveQualityRule):
    """A quality metric computed from logged predictions joined to their labels."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {
        "required": ["source"], "dependentRequired": {"against": ["max_regression"]},
        **_needs("min", "max", "max_regression")}))

    against: Against = "offline"

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        problems = super().relations(data)
        if "against" in data and "max_regression" not in data:
            problems.append((("against",), "against only applies to max_regression"))
        return problems


class WatchRules(Section):
    """The rules a watched version must keep; any one breached is a breach."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {"minProperties": 1}))

    error_rate: ErrorRateRule | None = None
    latency_p95_ms: LatencyRule | None = None
    prediction_psi: DriftRule | None = Field(
        None, description="PSI of the prediction distribution vs the reference profile.")
    feature_psi: DriftRule | None = Field(
        None, description="PSI of the worst input feature vs the reference profile.")
    prediction_ks: DriftRule | None = Field(
        None, description="Two-sample KS statistic of the predictions vs the reference.")
    feature_ks: DriftRule | None = Field(
        None, description="Two-sample KS statistic of the worst numeric feature.")
    rmse: LiveMetricRule | None = None
    mae: LiveMetricRule | None = None
    r2: LiveMetricRule | None = None
    accuracy: LiveMetricRule | None = None
    f1: LiveMetricRule | None = None
    roc_auc: LiveMetricRule | None = None
    log_loss: LiveMetricRule | None = None

    _not_null = field_validator("*", mode="before")(no_null)

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return [] if data else [((), "expected at least one rule")]


class WatchModel(Section):
    """How a promoted version is watched live: `promote watch` (docs/monitoring.md)."""

    model_config = ConfigDict(json_schema_extra=lambda s: tidy(s, {"required": ["rules"]}))

    bake: Duration = Field("1h", validate_default=True, description=(
        "After a promotion, how long a breach rolls the version back (on_breach: rollback)."))
    window: PositiveDuration = Field("15m", validate_default=True, description=(
        "The traffic each watch judges: the last window of the version's requests."))
    min_requests: Count = Field(100, description="Fewer requests in the window: insufficient "
                                                 "data, never a breach.")
    min_labels: Count = Field(30, description="Quality rules need this many labelled rows.")
    rules: WatchRules
    on_breach: OnBreach = "rollback"

    _rules_not_null = field_validator("rules", mode="before")(no_null)


def to_watch(model: WatchModel) -> Watch:
    """The frozen `Watch` of a validated block."""
    return Watch(
        rules=rules_of(model.rules, WatchRules.model_fields),
        bake_seconds=model.bake, window_seconds=model.window,
        min_requests=model.min_requests, min_labels=model.min_labels,
        on_breach=cast(Literal["rollback", "alert"], model.on_breach))


def rules_of(section: Section, names: Iterable[str]) -> tuple[WatchRule, ...]:
    """The `WatchRule`s of the rules `names` of a validated rules mapping (those it has)."""
    rules = []
    for name in names:
        rule = getattr(section, name)
        if rule is None:
            continue
        rules.append(WatchRule(
            name=name, max=rule.max, min=getattr(rule, "min", None),
            max_increase=getattr(rule, "max_increase", None),
            max_regression=getattr(rule, "max_regression", None),
            against=cast(Literal["offline", "previous"], getattr(rule, "against", "offline"))))
    return tuple(rules)
