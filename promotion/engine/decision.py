"""The decision: a pure function of (policy, candidate facts, Production facts, evaluation facts).

No I/O and no mlflow here: everything the gate knows arrives as frozen facts, so every rule can be
tested without a server and a decision can be replayed from its record.

Conventions, shared by every check:
- Bounds are inclusive. Comparisons tolerate float rounding (relative 1e-9), so a candidate sitting
  exactly on a margin computed as `0.5 + 1% of 0.5` is not rejected by the last bit of a float.
- `bound` is always the threshold on the candidate in metric units. For goal `minimize` the
  candidate must be <= bound, for `maximize` >= bound; budgets are always "lower is better".
- Fail closed: a missing or non-finite value, a version without a run, a relative rule without a
  usable Production value, or evaluation rules without evaluation facts all fail the check, with a
  reason that says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from promotion.engine.facts import EvaluationFacts, Interval, ScoredMetric, VersionFacts
from promotion.policy.model import Budget, Margin, MetricRule, Policy

Outcome = Literal["promoted", "rejected", "inconclusive", "already"]
Value = float | str | None

# Relative tolerance for "equal" when comparing a value with a bound.
REL_TOL = 1e-9
ABS_TOL = 1e-12
SUMMARY_LIMIT = 250  # characters of the short reason recorded as a tag


@dataclass(frozen=True)
class RuleResult:
    """One check of one rule: what was compared, against what, and why it passed or failed.

    kind: min | max | min_improvement | max_regression (metric rules), max | max_increase
    (budgets, source "budget"), tag, no_production.
    source: logged | evaluation | budget | registry (tags and the no-Production check).
    """

    metric: str
    kind: str
    passed: bool
    reason: str
    candidate: Value = None
    production: Value = None
    bound: Value = None
    source: str = "logged"
    # For `source: evaluation` metrics (and budgets with a Production value): the point estimate of
    # candidate - production, its paired-bootstrap interval and the margin in metric units.
    difference: float | None = None
    interval: Interval | None = None
    margin: float | None = None
    # The point estimate passes but the confidence bound does not (significant rules only).
    inconclusive: bool = False

    @property
    def label(self) -> str:
        return f"{self.metric} {self.kind}" if self.metric else self.kind


@dataclass(frozen=True)
class Decision:
    model: str
    alias: str
    outcome: Outcome
    candidate_version: str
    production_version: str | None
    rules: tuple[RuleResult, ...]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when the alias should point at the candidate (or already does)."""
        return self.outcome in ("promoted", "already")

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return _failed(self.rules)

    @property
    def inconclusive_rules(self) -> tuple[RuleResult, ...]:
        return _inconclusive(self.rules)

    @property
    def summary(self) -> str:
        """One short line: what a tag or a status column can hold."""
        if not self.reasons:
            return self.outcome
        text = self.reasons[0]
        if len(self.reasons) > 1:
            text += f" (+{len(self.reasons) - 1} more)"
        return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def decide(policy: Policy, candidate: VersionFacts, production: VersionFacts | None,
           evaluation: EvaluationFacts | None = None) -> Decision:
    """Apply every rule of `policy` to the candidate and return the full, ordered result."""
    prod_version = production.version if production is not None else None
    if production is not None and production.version == candidate.version:
        return Decision(policy.model, policy.alias, "already", candidate.version, prod_version, (),
                        (f"version {candidate.version} already holds @{policy.alias}",))

    rules: list[RuleResult] = []
    if production is None:
        rules.append(_no_production(policy))
    rules.extend(_tag_checks(policy, candidate))
    for rule in policy.metrics:
        rules.extend(_metric_checks(rule, candidate, production, evaluation))
    for budget in policy.budgets:
        rules.extend(_budget_checks(budget, production, evaluation))
    return _conclude(policy, candidate.version, prod_version, tuple(rules))


def _failed(rules: tuple[RuleResult, ...]) -> tuple[RuleResult, ...]:
    return tuple(r for r in rules if not r.passed and not r.inconclusive)


def _inconclusive(rules: tuple[RuleResult, ...]) -> tuple[RuleResult, ...]:
    return tuple(r for r in rules if r.inconclusive)


def _conclude(policy: Policy, candidate_version: str, production_version: str | None,
              rules: tuple[RuleResult, ...]) -> Decision:
    failed, unsure = _failed(rules), _inconclusive(rules)
    outcome: Outcome
    if failed:
        outcome = "rejected"
        reasons = tuple(f"{r.label}: {r.reason}" for r in failed)
    elif unsure:
        outcome = "inconclusive"
        reasons = tuple(f"{r.label}: {r.reason}" for r in unsure)
    else:
        outcome = "promoted"
        notes = tuple(f"{r.label}: {r.reason}" for r in rules if r.kind == "no_production")
        reasons = (f"all {len(rules)} checks passed", *notes)
    return Decision(policy.model, policy.alias, outcome, candidate_version, production_version,
                    rules, reasons)


# ---------------------------------------------------------------------------------------------
# Registry-level checks


def _no_production(policy: Policy) -> RuleResult:
    if policy.when_no_production == "reject":
        return RuleResult("", "no_production", False,
                          f"no version holds @{policy.alias} and when_no_production is reject",
                          source="registry")
    skipped = sorted({r.name for r in policy.metrics if r.is_relative}
                     | {b.name for b in policy.budgets if b.max_increase is not None})
    note = f"; relative rules not applied: {', '.join(skipped)}" if skipped else ""
    return RuleResult("", "no_production", True,
                      f"no version holds @{policy.alias}: only absolute bounds and required tags "
                      f"apply{note}", source="registry")


def _tag_checks(policy: Policy, candidate: VersionFacts) -> Iterable[RuleResult]:
    for key, expected in policy.require_tags:
        actual = candidate.tags.get(key)
        if actual is None:
            yield RuleResult(key, "tag", False, f"tag missing (required {expected!r})",
                             None, None, expected, source="registry")
        elif actual != expected:
            yield RuleResult(key, "tag", False, f"tag is {actual!r}, required {expected!r}",
                             actual, None, expected, source="registry")
        else:
            yield RuleResult(key, "tag", True, f"tag is {expected!r}", actual, None, expected,
                             source="registry")


# ---------------------------------------------------------------------------------------------
# Metric rules


@dataclass(frozen=True)
class _Reading:
    """A value for one side of a comparison, or why there is none usable."""

    value: float | None
    problem: str | None = None


def _logged(facts: VersionFacts, name: str, side: str) -> _Reading:
    if facts.run_id is None:
        return _Reading(None, f"{side} version {facts.version} has no run")
    if name not in facts.metrics:
        return _Reading(None, f"metric not logged on the {side} run")
    return _finite(float(facts.metrics[name]), side)


def _finite(value: float, side: str) -> _Reading:
    if not math.isfinite(value):
        return _Reading(value, f"{side} value is {value} (not finite)")
    return _Reading(value)


def _scored(evaluation: EvaluationFacts | None,
            name: str) -> tuple[ScoredMetric | None, str | None]:
    if evaluation is None:
        return None, "no evaluation facts: this rule is re-scored on evaluation data, none gathered"
    scored = evaluation.metrics.get(name)
    if scored is None:
        return None, "metric missing from the evaluation results"
    return scored, None


def _metric_checks(rule: MetricRule, candidate: VersionFacts, production: VersionFacts | None,
                   evaluation: EvaluationFacts | None) -> list[RuleResult]:
    source = rule.source
    scored: ScoredMetric | None = None
    if source == "evaluation":
        scored, problem = _scored(evaluation, rule.name)
        cand = (_Reading(None, problem) if scored is None
                else _finite(scored.candidate, "candidate"))
    else:
        cand = _logged(candidate, rule.name, "candidate")

    results: list[RuleResult] = []
    for kind, bound in (("min", rule.min), ("max", rule.max)):
        if bound is not None:
            results.append(_absolute(rule.name, kind, cand, bound, source))

    relative = [(k, m) for k, m in (("min_improvement", rule.min_improvement),
                                    ("max_regression", rule.max_regression)) if m is not None]
    if not relative or production is None:
        return results  # without Production, relative rules do not apply (see _no_production)

    if source == "evaluation":
        if scored is None:
            prod = _Reading(None, cand.problem)
        elif scored.production is None:
            prod = _Reading(None, "no Production score in the evaluation results")
        else:
            prod = _finite(scored.production, "Production")
    else:
        prod = _logged(production, rule.name, "Production")

    for kind, margin in relative:
        results.append(_relative(rule, kind, margin, cand, prod, scored))
    return results


def _absolute(metric: str, kind: str, cand: _Reading, bound: float, source: str) -> RuleResult:
    if cand.problem is not None or cand.value is None:
        return RuleResult(metric, kind, False, cand.problem or "no value", cand.value, None,
                          bound, source)
    ok = _at_least(cand.value, bound) if kind == "min" else _at_most(cand.value, bound)
    op = (">=" if ok else "<") if kind == "min" else ("<=" if ok else ">")
    return RuleResult(metric, kind, ok, f"{_n(cand.value)} {op} {kind} {_n(bound)}",
                      cand.value, None, bound, source)


def _relative(rule: MetricRule, kind: str, margin: Margin, cand: _Reading, prod: _Reading,
              scored: ScoredMetric | None) -> RuleResult:
    source = rule.source
    evaluation_fields = scored is not None
    interval = scored.difference if scored is not None else None
    if cand.problem is not None or cand.value is None:
        return RuleResult(rule.name, kind, False, cand.problem or "no value", cand.value,
                          prod.value, None, source, interval=interval)
    if prod.problem is not None or prod.value is None:
        return RuleResult(rule.name, kind, False, f"{prod.problem or 'no value'}: cannot compare",
                          cand.value, prod.value, None, source, interval=interval)

    c, p = cand.value, prod.value
    amount = margin.amount(p)
    # The threshold on the candidate. Improvement is "lower" for minimize, "higher" for maximize;
    # a regression margin allows that much movement the wrong way.
    better = -1.0 if rule.goal == "minimize" else 1.0
    shift = better * amount if kind == "min_improvement" else -better * amount
    bound = p + shift
    ok = _at_most(c, bound) if rule.goal == "minimize" else _at_least(c, bound)
    op = ("<=" if ok else ">") if rule.goal == "minimize" else (">=" if ok else "<")
    words = "improvement required" if kind == "min_improvement" else "regression allowed"
    pm = "-" if shift < 0 else "+"
    reason = f"{_n(c)} {op} {_n(bound)} (Production {_n(p)} {pm} {margin} {words})"

    difference = c - p if evaluation_fields else None
    result = RuleResult(rule.name, kind, ok, reason, c, p, bound, source,
                        difference=difference, interval=interval,
                        margin=amount if evaluation_fields else None)
    if not (ok and rule.significant and source == "evaluation"):
        return result
    return _significance(result, rule, kind, amount)


def _significance(point: RuleResult, rule: MetricRule, kind: str, amount: float) -> RuleResult:
    """The point estimate passed; the rule must also hold at the interval's confidence bound."""
    interval = point.interval
    if interval is None:
        return replace(point, passed=False,
                       reason="no confidence interval in the evaluation results: cannot test "
                              "significance")
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return replace(point, passed=False,
                       reason=f"confidence interval [{interval.low}, {interval.high}] not finite")
    # Improvement is -d for minimize and d for maximize (d = candidate - production); its worst
    # case at the confidence bound is -high or low respectively.
    worst = -interval.high if rule.goal == "minimize" else interval.low
    need = amount if kind == "min_improvement" else -amount
    level = f"{interval.confidence * 100:g}%"
    if _at_least(worst, need):
        return replace(point, reason=f"{point.reason}; holds at {level} confidence "
                                     f"(worst-case improvement {_n(worst)} >= {_n(need)})")
    return replace(point, passed=False, inconclusive=True,
                   reason=f"point estimate passes ({point.reason}) but not at {level} confidence "
                           f"(worst-case improvement {_n(worst)} < {_n(need)})")


# ---------------------------------------------------------------------------------------------
# Budgets (lower is always better)


def _budget_checks(budget: Budget, production: VersionFacts | None,
                   evaluation: EvaluationFacts | None) -> list[RuleResult]:
    name = budget.name
    measure = evaluation.budgets.get(name) if evaluation is not None else None
    if evaluation is None:
        cand = _Reading(None, "no evaluation facts: budgets are measured during evaluation, "
                              "none gathered")
    elif measure is None:
        cand = _Reading(None, "budget not measured")
    else:
        cand = _finite(measure.candidate, "candidate")

    results: list[RuleResult] = []
    if budget.max is not None:
        results.append(_absolute(name, "max", cand, budget.max, "budget"))
    if budget.max_increase is None or production is None:
        return results
    if cand.problem is not None or cand.value is None:
        results.append(RuleResult(name, "max_increase", False, cand.problem or "no value",
                                  cand.value, None, None, "budget"))
        return results
    if measure is None or measure.production is None:
        results.append(RuleResult(name, "max_increase", False,
                                  "no Production measurement: cannot compare", cand.value,
                                  None, None, "budget"))
        return results
    prod = _finite(measure.production, "Production")
    if prod.problem is not None or prod.value is None:
        results.append(RuleResult(name, "max_increase", False, f"{prod.problem}: cannot compare",
                                  cand.value, prod.value, None, "budget"))
        return results
    amount = budget.max_increase.amount(prod.value)
    bound = prod.value + amount
    ok = _at_most(cand.value, bound)
    reason = (f"{_n(cand.value)} {'<=' if ok else '>'} {_n(bound)} "
              f"(Production {_n(prod.value)} + {budget.max_increase} increase allowed)")
    results.append(RuleResult(name, "max_increase", ok, reason, cand.value, prod.value, bound,
                              "budget", difference=cand.value - prod.value, margin=amount))
    return results


# ---------------------------------------------------------------------------------------------
# Helpers


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _at_least(value: float, bound: float) -> bool:
    return value >= bound or _close(value, bound)


def _at_most(value: float, bound: float) -> bool:
    return value <= bound or _close(value, bound)


def _n(value: float) -> str:
    return f"{value:.6g}"
