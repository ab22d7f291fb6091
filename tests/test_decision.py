"""The decision function, without a server: every rule kind, every fail-closed path."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promotion.engine.decision import Decision, RuleResult, decide
from promotion.engine.facts import (
    BudgetMeasure,
    EvaluationFacts,
    Interval,
    ScoredMetric,
    VersionFacts,
)
from promotion.policy.model import Budget, Evaluation, Margin, MetricRule, Policy

MODEL = "churn"


def policy(*metrics: MetricRule, **kw) -> Policy:
    return Policy(path="policies/churn.yaml", sha256="0" * 64, model=MODEL, metrics=metrics, **kw)


def version(v: str, run: str | None = "run", tags: dict | None = None, **metrics: float):
    return VersionFacts(MODEL, v, None if run is None else f"{run}{v}", metrics, tags or {})


def rule_of(decision: Decision, kind: str, metric: str | None = None) -> RuleResult:
    found = [r for r in decision.rules if r.kind == kind and (metric is None or r.metric == metric)]
    assert len(found) == 1, decision.rules
    return found[0]


RMSE_BETTER_1PCT = MetricRule("rmse", "minimize", max=1.0, min_improvement=Margin(0.01, True))
ACC_NON_INFERIOR = MetricRule("accuracy", "maximize", min=0.7, max_regression=Margin(0.02))


# -- no Production ---------------------------------------------------------------------------


def test_first_version_promoted_on_absolute_bounds_only():
    d = decide(policy(RMSE_BETTER_1PCT), version("1", rmse=0.4), None)
    assert d.outcome == "promoted" and d.passed
    assert d.production_version is None
    assert [r.kind for r in d.rules] == ["no_production", "max"]  # relative rule not applied
    assert "relative rules not applied: rmse" in rule_of(d, "no_production").reason


def test_first_version_still_fails_an_absolute_bound():
    d = decide(policy(RMSE_BETTER_1PCT), version("1", rmse=1.5), None)
    assert d.outcome == "rejected"
    assert rule_of(d, "max").reason == "1.5 > max 1"


def test_first_version_rejected_when_policy_says_so():
    d = decide(policy(RMSE_BETTER_1PCT, when_no_production="reject"), version("1", rmse=0.4), None)
    assert d.outcome == "rejected" and not d.passed
    no_prod = rule_of(d, "no_production")
    assert not no_prod.passed and "when_no_production is reject" in no_prod.reason
    assert rule_of(d, "max").passed  # the other checks are still listed


# -- relative rules --------------------------------------------------------------------------


def test_better_candidate_promoted_and_every_value_reported():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=0.40), version("1", rmse=0.50))
    assert d.outcome == "promoted"
    assert (d.candidate_version, d.production_version) == ("2", "1")
    r = rule_of(d, "min_improvement")
    assert (r.metric, r.candidate, r.production, r.passed) == ("rmse", 0.40, 0.50, True)
    assert r.bound == pytest.approx(0.495)
    assert r.reason == "0.4 <= 0.495 (Production 0.5 - 1% improvement required)"


def test_worse_candidate_rejected():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=0.52), version("1", rmse=0.50))
    assert d.outcome == "rejected"
    assert d.reasons == ("rmse min_improvement: 0.52 > 0.495 "
                         "(Production 0.5 - 1% improvement required)",)
    assert d.failed == (rule_of(d, "min_improvement"),)


def test_better_but_under_absolute_floor_rejected():
    rule = MetricRule("accuracy", "maximize", min=0.9, min_improvement=Margin(0.01))
    d = decide(policy(rule), version("2", accuracy=0.85), version("1", accuracy=0.80))
    assert d.outcome == "rejected"
    assert rule_of(d, "min_improvement").passed
    assert not rule_of(d, "min").passed and rule_of(d, "min").reason == "0.85 < min 0.9"


@pytest.mark.parametrize(("candidate", "outcome"), [(0.81, "promoted"), (0.80, "promoted"),
                                                     (0.799, "rejected")])
def test_non_inferiority_margin(candidate, outcome):
    d = decide(policy(ACC_NON_INFERIOR), version("2", accuracy=candidate),
               version("1", accuracy=0.82))
    assert d.outcome == outcome
    assert rule_of(d, "max_regression").bound == pytest.approx(0.80)


@pytest.mark.parametrize(("margin", "outcome", "bound"), [
    (Margin(0.01, relative=True), "rejected", 9.9),  # 1% of 10 = 0.1
    (Margin(0.01), "promoted", 9.99),  # 0.01 in metric units
])
def test_percent_and_absolute_margins_differ(margin, outcome, bound):
    rule = MetricRule("rmse", "minimize", min_improvement=margin)
    d = decide(policy(rule), version("2", rmse=9.95), version("1", rmse=10.0))
    assert d.outcome == outcome
    assert rule_of(d, "min_improvement").bound == pytest.approx(bound)


def test_relative_margin_uses_magnitude_of_a_negative_production_value():
    rule = MetricRule("log_likelihood", "maximize", min_improvement=Margin(0.1, relative=True))
    d = decide(policy(rule), version("2", log_likelihood=-9.0), version("1", log_likelihood=-10.0))
    assert rule_of(d, "min_improvement").bound == pytest.approx(-9.0)
    assert d.outcome == "promoted"


def test_value_exactly_on_a_computed_margin_passes_despite_float_rounding():
    # 0.5 + 1% of 0.5 is 0.505 on paper and 0.505000000000000004 in floats.
    rule = MetricRule("rmse", "minimize", max_regression=Margin(0.01, relative=True))
    d = decide(policy(rule), version("2", rmse=0.505), version("1", rmse=0.5))
    assert d.outcome == "promoted"


def test_max_regression_for_minimize_goal():
    rule = MetricRule("latency", "minimize", max_regression=Margin(5.0))
    ok = decide(policy(rule), version("2", latency=104.0), version("1", latency=100.0))
    bad = decide(policy(rule), version("2", latency=106.0), version("1", latency=100.0))
    assert (ok.outcome, bad.outcome) == ("promoted", "rejected")
    assert rule_of(bad, "max_regression").reason == (
        "106 > 105 (Production 100 + 5 regression allowed)")


# -- fail closed -----------------------------------------------------------------------------


def test_metric_missing_on_candidate_fails():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", mae=0.1), version("1", rmse=0.5))
    assert d.outcome == "rejected"
    assert rule_of(d, "max").reason == "metric not logged on the candidate run"
    assert rule_of(d, "min_improvement").reason == "metric not logged on the candidate run"


def test_metric_missing_on_production_fails_relative_rules_only():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=0.4), version("1", mae=0.5))
    assert d.outcome == "rejected"
    assert rule_of(d, "max").passed
    r = rule_of(d, "min_improvement")
    assert not r.passed
    assert r.reason == "metric not logged on the Production run: cannot compare"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_candidate_metric_fails(bad):
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=bad), version("1", rmse=0.5))
    assert d.outcome == "rejected"
    assert all(not r.passed and "not finite" in r.reason for r in d.rules)


def test_non_finite_production_metric_fails_relative_rule():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=0.4), version("1", rmse=math.nan))
    r = rule_of(d, "min_improvement")
    assert not r.passed and r.reason == "Production value is nan (not finite): cannot compare"
    assert d.outcome == "rejected"


def test_candidate_without_run_fails_metric_rules():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", run=None), version("1", rmse=0.5))
    assert d.outcome == "rejected"
    assert {r.reason for r in d.rules} == {"candidate version 2 has no run"}


def test_production_without_run_fails_relative_rules():
    d = decide(policy(RMSE_BETTER_1PCT), version("2", rmse=0.4), version("1", run=None))
    assert rule_of(d, "min_improvement").reason == "Production version 1 has no run: cannot compare"
    assert d.outcome == "rejected"


# -- tags, already ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tags", "reason"), [
    ({}, "tag missing (required 'passed')"),
    ({"validation": "failed"}, "tag is 'failed', required 'passed'"),
    ({"validation": "Passed"}, "tag is 'Passed', required 'passed'"),  # exact strings
])
def test_required_tag_missing_or_different_fails(tags, reason):
    p = policy(RMSE_BETTER_1PCT, require_tags=(("validation", "passed"),))
    d = decide(p, version("2", tags=tags, rmse=0.4), version("1", rmse=0.5))
    assert d.outcome == "rejected"
    r = rule_of(d, "tag")
    assert (r.metric, r.bound, r.reason) == ("validation", "passed", reason)


def test_required_tag_present_passes():
    p = policy(RMSE_BETTER_1PCT, require_tags=(("validation", "passed"),))
    d = decide(p, version("2", tags={"validation": "passed"}, rmse=0.4), version("1", rmse=0.5))
    assert d.outcome == "promoted" and rule_of(d, "tag").passed


def test_candidate_already_holding_the_alias():
    d = decide(policy(RMSE_BETTER_1PCT), version("3", rmse=0.9), version("3", rmse=0.9))
    assert d.outcome == "already" and d.passed
    assert d.rules == ()
    assert d.reasons == ("version 3 already holds @Production",)


# -- evaluation metrics and significance -----------------------------------------------------


EVAL = Evaluation(data="/data/holdout.csv", target="y")


def evaluation(**metrics: ScoredMetric | BudgetMeasure) -> EvaluationFacts:
    scored = {k: v for k, v in metrics.items() if isinstance(v, ScoredMetric)}
    budgets = {k: v for k, v in metrics.items() if isinstance(v, BudgetMeasure)}
    return EvaluationFacts("f" * 64, 500, scored, budgets)


def scored(name: str, cand: float, prod: float | None, low=None, high=None) -> ScoredMetric:
    interval = Interval(low, high, 0.95) if low is not None else None
    return ScoredMetric(name, cand, prod, interval)


SIG_RMSE = MetricRule("rmse", "minimize", min_improvement=Margin(0.01), source="evaluation",
                      significant=True)


def test_evaluation_rules_without_evaluation_facts_fail_closed():
    p = policy(SIG_RMSE, evaluation=EVAL)
    d = decide(p, version("2"), version("1"), None)
    assert d.outcome == "rejected"
    assert rule_of(d, "min_improvement").reason.startswith("no evaluation facts")


def test_evaluation_metric_missing_from_results_fails():
    p = policy(SIG_RMSE, evaluation=EVAL)
    d = decide(p, version("2"), version("1"), evaluation())
    assert rule_of(d, "min_improvement").reason == "metric missing from the evaluation results"


def test_significant_improvement_promoted_with_interval_reported():
    p = policy(SIG_RMSE, evaluation=EVAL)
    ev = evaluation(rmse=scored("rmse", 0.40, 0.45, low=-0.07, high=-0.02))
    d = decide(p, version("2"), version("1"), ev)
    assert d.outcome == "promoted"
    r = rule_of(d, "min_improvement")
    assert r.difference == pytest.approx(-0.05)
    assert r.interval == Interval(-0.07, -0.02, 0.95)
    assert r.margin == pytest.approx(0.01) and not r.inconclusive
    assert "holds at 95% confidence" in r.reason


def test_point_passes_but_bound_does_not_is_inconclusive():
    p = policy(SIG_RMSE, evaluation=EVAL)
    # Improvement 0.05 on the point estimate, but only 0.005 at the interval's worst end.
    ev = evaluation(rmse=scored("rmse", 0.40, 0.45, low=-0.09, high=-0.005))
    d = decide(p, version("2"), version("1"), ev)
    assert d.outcome == "inconclusive" and not d.passed
    r = rule_of(d, "min_improvement")
    assert r.inconclusive and not r.passed
    assert d.failed == () and d.inconclusive_rules == (r,)
    assert "not at 95% confidence" in d.reasons[0]


def test_point_failing_is_rejected_not_inconclusive():
    p = policy(SIG_RMSE, evaluation=EVAL)
    ev = evaluation(rmse=scored("rmse", 0.445, 0.45, low=-0.02, high=0.01))
    d = decide(p, version("2"), version("1"), ev)
    assert d.outcome == "rejected"
    assert not rule_of(d, "min_improvement").inconclusive


def test_a_failure_outranks_an_inconclusive_rule():
    floor = MetricRule("auc", "maximize", min=0.9, source="evaluation")
    p = policy(SIG_RMSE, floor, evaluation=EVAL)
    ev = evaluation(rmse=scored("rmse", 0.40, 0.45, low=-0.09, high=-0.005),
                    auc=scored("auc", 0.85, 0.84))
    d = decide(p, version("2"), version("1"), ev)
    assert d.outcome == "rejected"
    assert [r.label for r in d.failed] == ["auc min"]


@pytest.mark.parametrize(("low", "outcome"), [(-0.015, "promoted"), (-0.03, "inconclusive")])
def test_significant_non_inferiority_for_maximize(low, outcome):
    rule = MetricRule("auc", "maximize", max_regression=Margin(0.02), source="evaluation",
                      significant=True)
    ev = evaluation(auc=scored("auc", 0.80, 0.805, low=low, high=0.01))
    d = decide(policy(rule, evaluation=EVAL), version("2"), version("1"), ev)
    assert d.outcome == outcome


def test_significant_rule_without_interval_fails_closed():
    ev = evaluation(rmse=scored("rmse", 0.40, 0.45))
    d = decide(policy(SIG_RMSE, evaluation=EVAL), version("2"), version("1"), ev)
    assert d.outcome == "rejected"
    assert "no confidence interval" in rule_of(d, "min_improvement").reason


def test_evaluation_score_without_production_score_fails_relative_rule():
    ev = evaluation(rmse=scored("rmse", 0.40, None))
    d = decide(policy(SIG_RMSE, evaluation=EVAL), version("2"), version("1"), ev)
    assert "no Production score" in rule_of(d, "min_improvement").reason


def test_non_significant_evaluation_rule_uses_the_point_estimate():
    rule = MetricRule("rmse", "minimize", min_improvement=Margin(0.01), source="evaluation")
    ev = evaluation(rmse=scored("rmse", 0.40, 0.45, low=-0.09, high=0.02))
    d = decide(policy(rule, evaluation=EVAL), version("2"), version("1"), ev)
    assert d.outcome == "promoted"


def test_evaluation_absolute_bound_uses_the_rescored_value_not_the_logged_one():
    rule = MetricRule("auc", "maximize", min=0.8, source="evaluation")
    ev = evaluation(auc=scored("auc", 0.75, 0.7))
    d = decide(policy(rule, evaluation=EVAL), version("2", auc=0.95), version("1"), ev)
    assert d.outcome == "rejected" and rule_of(d, "min").candidate == 0.75


# -- budgets ---------------------------------------------------------------------------------


LATENCY = Budget("latency_p95_ms", max=50.0, max_increase=Margin(0.1, relative=True))


@pytest.mark.parametrize(("cand", "outcome"), [(43.0, "promoted"), (45.0, "rejected"),
                                               (51.0, "rejected")])
def test_budget_ceiling_and_relative_increase(cand, outcome):
    ev = evaluation(latency_p95_ms=BudgetMeasure("latency_p95_ms", cand, 40.0))
    d = decide(policy(budgets=(LATENCY,), evaluation=EVAL), version("2"), version("1"), ev)
    assert d.outcome == outcome
    inc = rule_of(d, "max_increase")
    assert inc.bound == pytest.approx(44.0) and inc.source == "budget"


def test_budget_without_production_applies_ceiling_only():
    ev = evaluation(size_mb=BudgetMeasure("size_mb", 3.0, None))
    b = Budget("size_mb", max=5.0, max_increase=Margin(1.0))
    d = decide(policy(budgets=(b,), evaluation=EVAL), version("1"), None, ev)
    assert d.outcome == "promoted"
    assert [r.kind for r in d.rules] == ["no_production", "max"]


def test_budget_missing_production_measure_fails():
    ev = evaluation(size_mb=BudgetMeasure("size_mb", 3.0, None))
    b = Budget("size_mb", max_increase=Margin(1.0))
    d = decide(policy(budgets=(b,), evaluation=EVAL), version("2"), version("1"), ev)
    assert rule_of(d, "max_increase").reason == "no Production measurement: cannot compare"


def test_budgets_without_evaluation_fail_closed():
    d = decide(policy(budgets=(LATENCY,)), version("2"), version("1"), None)
    assert d.outcome == "rejected"
    assert all(r.reason.startswith("no evaluation facts") for r in d.rules)


# -- the result as a whole -------------------------------------------------------------------


def test_summary_is_short_and_counts_the_rest():
    rules = tuple(MetricRule(f"m{i}", "maximize", min=1.0) for i in range(3))
    d = decide(policy(*rules), version("2", m0=0.0, m1=0.0, m2=0.0), version("1"))
    assert d.summary == "m0 min: 0 < min 1 (+2 more)"
    long = MetricRule("x" * 400, "maximize", min=1.0)
    assert len(decide(policy(long), version("2"), version("1")).summary) == 250


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(cand=finite, prod=finite, margin=st.floats(min_value=0, max_value=1e3),
       goal=st.sampled_from(["minimize", "maximize"]))
def test_min_improvement_matches_its_definition(cand, prod, margin, goal):
    rule = MetricRule("m", goal, min_improvement=Margin(margin))
    d = decide(policy(rule), version("2", m=cand), version("1", m=prod))
    improvement = prod - cand if goal == "minimize" else cand - prod
    # Within the engine's documented tolerance of the bound (relative 1e-9 of the bound's own
    # magnitude: module docstring of promotion.engine.decision), either answer is right.
    bound = prod - margin if goal == "minimize" else prod + margin
    near_bound = math.isclose(cand, bound, rel_tol=1e-9, abs_tol=1e-12)
    if not near_bound and not math.isclose(improvement, margin, rel_tol=1e-6, abs_tol=1e-6):
        assert d.passed == (improvement > margin)


@given(values=st.lists(st.one_of(finite, st.just(math.nan)), min_size=1, max_size=4),
       bound=finite)
def test_outcome_is_promoted_exactly_when_every_check_passes(values, bound):
    rules = tuple(MetricRule(f"m{i}", "maximize", min=bound) for i in range(len(values)))
    metrics = {f"m{i}": v for i, v in enumerate(values)}
    d = decide(policy(*rules), version("2", **metrics), version("1"))
    assert len(d.rules) == len(values)
    assert (d.outcome == "promoted") == all(r.passed for r in d.rules)
    assert all(not r.passed for r in d.rules if isinstance(r.candidate, float)
               and math.isnan(r.candidate))
