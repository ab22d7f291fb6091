"""The watch's judgement (promotion.engine.watch.judge): pure, no server, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from promotion.engine.watch import LiveFacts, WatchFacts, judge
from promotion.policy.model import Margin, Watch, WatchRule

NOW = 1_800_000_000.0
HOUR = 3600.0


def watch(*rules: WatchRule, **kwargs) -> Watch:
    return Watch(rules=rules, bake_seconds=kwargs.pop("bake", 2 * HOUR),
                 window_seconds=900, min_requests=kwargs.pop("min_requests", 100),
                 min_labels=kwargs.pop("min_labels", 30), **kwargs)


HEALTHY = LiveFacts(version="2", requests=500, rows=500, error_rate=0.002, latency_p50_ms=4.0,
                    latency_p95_ms=9.0, drift_rows=500, prediction_psi=0.02, prediction_ks=0.05,
                    feature_psi=(("age", 0.01), ("bmi", 0.04)),
                    feature_ks=(("age", 0.03), ("bmi", 0.06)), profile="run r", labels=80,
                    quality=(("rmse", 52.0),))
BASELINE = LiveFacts(version="1", requests=2000, rows=2000, error_rate=0.001,
                     latency_p50_ms=4.0, latency_p95_ms=8.0, labels=300,
                     quality=(("rmse", 50.0),))
ALL_RULES = (
    WatchRule("error_rate", max=0.01),
    WatchRule("error_rate", max_increase=Margin(0.01)),
    WatchRule("latency_p95_ms", max_increase=Margin(0.25, relative=True)),
    WatchRule("prediction_psi", max=0.2),
    WatchRule("feature_psi", max=0.25),
    WatchRule("prediction_ks", max=0.3),
    WatchRule("feature_ks", max=0.3),
    WatchRule("rmse", max_regression=Margin(0.05, relative=True)),
)


def facts(live: LiveFacts = HEALTHY, **kwargs) -> WatchFacts:
    defaults = {"model": "m", "alias": "Production", "now": NOW, "window_seconds": 900,
                "live": live, "previous_version": "1", "promoted_at": NOW - HOUR,
                "promoted_by_gate": True, "baseline": BASELINE, "offline": (("rmse", 51.0),)}
    return WatchFacts(**{**defaults, **kwargs})


def test_a_healthy_window_passes_every_rule_and_does_nothing():
    d = judge(watch(*ALL_RULES), facts())
    assert d.outcome == "healthy" and d.action == "none"
    assert [c.status for c in d.checks] == ["pass"] * len(d.checks)
    assert len(d.checks) == len(ALL_RULES)


@pytest.mark.parametrize(("change", "rule"), [
    ({"error_rate": 0.05}, "error_rate"),
    ({"latency_p95_ms": 10.5}, "latency_p95_ms"),
    ({"prediction_psi": 0.5}, "prediction_psi"),
    ({"feature_psi": (("age", 0.01), ("bmi", 0.4))}, "feature_psi"),
    ({"prediction_ks": 0.45}, "prediction_ks"),
    ({"feature_ks": (("age", 0.5),)}, "feature_ks"),
    ({"quality": (("rmse", 54.0),)}, "rmse"),
])
def test_each_rule_breached_alone_is_named(change, rule):
    d = judge(watch(*ALL_RULES), facts(replace(HEALTHY, **change)))
    assert d.outcome == "breach" and d.action == "rollback"
    assert {c.rule for c in d.breached} == {rule}
    assert rule in d.summary


def test_the_worst_feature_is_named_in_the_reason():
    live = replace(HEALTHY, feature_psi=(("age", 0.3), ("bmi", 0.9)))
    (check,) = judge(watch(WatchRule("feature_psi", max=0.25)), facts(live)).checks
    assert check.status == "breach" and check.subject == "bmi" and "worst: bmi" in check.reason
    assert check.live == 0.9


def test_a_reference_column_missing_live_is_a_breach_naming_it():
    live = replace(HEALTHY, missing_features=("bmi",))
    (check,) = judge(watch(WatchRule("feature_psi", max=0.25)), facts(live)).checks
    assert check.status == "breach" and "bmi" in check.reason


def test_too_few_requests_is_insufficient_data_and_never_a_breach():
    live = replace(HEALTHY, requests=99, error_rate=0.9, prediction_psi=5.0)
    d = judge(watch(*ALL_RULES), facts(live))
    assert d.outcome == "insufficient_data" and d.action == "none"
    assert {c.status for c in d.checks} == {"insufficient"}
    assert "fewer than min_requests 100" in d.summary


def test_insufficient_checks_beside_passing_ones_are_reported_as_insufficient_data():
    live = replace(HEALTHY, labels=3)
    d = judge(watch(WatchRule("error_rate", max=0.01),
                    WatchRule("rmse", max_regression=Margin(0.05, relative=True))), facts(live))
    assert d.outcome == "insufficient_data"
    assert [c.status for c in d.checks] == ["pass", "insufficient"]
    assert "3 labelled rows" in d.checks[1].reason


def test_no_profile_means_drift_rules_are_insufficient():
    live = replace(HEALTHY, profile=None, prediction_psi=None)
    (check,) = judge(watch(WatchRule("prediction_psi", max=0.2)), facts(live)).checks
    assert check.status == "insufficient" and "no reference profile" in check.reason


def test_relative_rules_without_a_baseline_are_insufficient():
    d = judge(watch(WatchRule("latency_p95_ms", max_increase=Margin(0.25, relative=True))),
              facts(baseline=replace(BASELINE, requests=10)))
    assert d.checks[0].status == "insufficient" and "10 requests" in d.checks[0].reason


def test_latency_bound_is_the_baseline_plus_the_margin():
    (check,) = judge(watch(WatchRule("latency_p95_ms", max_increase=Margin(0.25, relative=True))),
                     facts(replace(HEALTHY, latency_p95_ms=10.0))).checks
    assert check.reference == 8.0 and check.bound == pytest.approx(10.0)
    assert check.status == "pass"  # inclusive


def test_quality_against_the_previous_version_live():
    rule = WatchRule("rmse", max_regression=Margin(1.0), against="previous")
    (check,) = judge(watch(rule), facts(replace(HEALTHY, quality=(("rmse", 51.5),)))).checks
    assert check.reference == 50.0 and check.bound == 51.0 and check.status == "breach"


def test_a_maximised_metric_breaches_below_its_bound():
    rule = WatchRule("accuracy", min=0.9)
    live = replace(HEALTHY, quality=(("accuracy", 0.85),))
    (check,) = judge(watch(rule), facts(live)).checks
    assert check.status == "breach" and ">=" in check.reason


def test_a_quality_rule_without_an_offline_value_is_insufficient():
    rule = WatchRule("rmse", max_regression=Margin(0.05, relative=True))
    (check,) = judge(watch(rule), facts(offline=())).checks
    assert check.status == "insufficient" and "no logged metric 'rmse'" in check.reason


BREACH = replace(HEALTHY, error_rate=0.2)


@pytest.mark.parametrize(("kwargs", "overrides", "why"), [
    ({}, {"promoted_at": NOW - 3 * HOUR}, "bake period (2h)"),
    ({"on_breach": "alert"}, {}, "on_breach: alert"),
    ({}, {"promoted_by_gate": False}, "not promoted by a gate"),
    ({}, {"promoted_at": None}, "not recorded"),
    ({}, {"previous_version": None}, "no other version"),
])
def test_a_breach_only_alerts_when_a_rollback_is_not_called_for(kwargs, overrides, why):
    d = judge(watch(WatchRule("error_rate", max=0.01), **kwargs), facts(BREACH, **overrides))
    assert d.outcome == "breach" and d.action == "alert"
    assert why in d.why_not_rollback


def test_a_breach_inside_the_bake_period_rolls_back():
    d = judge(watch(WatchRule("error_rate", max=0.01)), facts(BREACH))
    assert d.action == "rollback" and d.in_bake and d.why_not_rollback is None


def test_no_successful_request_to_time_is_insufficient_not_a_breach():
    """A broken client's 4xx leave nothing to time: the model is not to blame."""
    live = replace(HEALTHY, latency_p95_ms=None)
    (check,) = judge(watch(WatchRule("latency_p95_ms", max=100)), facts(live)).checks
    assert check.status == "insufficient" and "no successful request" in check.reason


def test_a_measured_value_that_is_not_finite_fails_closed():
    live = replace(HEALTHY, prediction_psi=float("nan"))
    (check,) = judge(watch(WatchRule("prediction_psi", max=0.2)), facts(live)).checks
    assert check.status == "breach" and "not a finite number" in check.reason


def test_ks_of_class_labels_is_insufficient():
    live = replace(HEALTHY, prediction_ks=None)
    (check,) = judge(watch(WatchRule("prediction_ks", max=0.2)), facts(live)).checks
    assert check.status == "insufficient" and "no KS statistic" in check.reason


def test_an_unreadable_profile_is_said_and_only_drift_is_insufficient():
    live = replace(HEALTHY, profile=None, profile_problem="its reference profile cannot be read")
    d = judge(watch(WatchRule("error_rate", max=0.01), WatchRule("feature_psi", max=0.2)),
              facts(live))
    assert [c.status for c in d.checks] == ["pass", "insufficient"]
    assert "cannot be read" in d.checks[1].reason


def test_an_error_rate_increase_over_a_zero_baseline_allows_one_failed_request():
    rule = WatchRule("error_rate", max_increase=Margin(0.25, relative=True))
    zero = replace(BASELINE, error_rate=0.0)
    one_in_500 = replace(HEALTHY, error_rate=1 / 500)
    (check,) = judge(watch(rule), facts(one_in_500, baseline=zero)).checks
    assert check.status == "pass" and check.bound == pytest.approx(1 / 500)
    (check,) = judge(watch(rule), facts(replace(HEALTHY, error_rate=2 / 500),
                                        baseline=zero)).checks
    assert check.status == "breach"


def test_a_floor_is_marked_as_one():
    (check,) = judge(watch(WatchRule("accuracy", min=0.9)),
                     facts(replace(HEALTHY, quality=(("accuracy", 0.95),)))).checks
    assert check.upper is False and check.status == "pass"
