"""The watch's judgement: a pure function of (watch rules, live facts) in the gate's table shape.

`promote watch` measures the version behind an alias over the last window (requests, errors,
latency, drift against its reference profile, quality where labels arrived) and hands the numbers
here as frozen facts; `judge` returns one check per rule (live value, reference, bound, status,
reason) and what to do about it. No I/O: every rule is testable without a server or a database.

Conventions:
- A rule is `pass`, `breach` or `insufficient` (too few requests, rows or labels, or nothing to
  compare with). Insufficient data is never a breach: an idle endpoint is not a bad model.
- Fewer requests than `min_requests` in the window makes every check insufficient.
- Bounds are inclusive, compared with the same float tolerance as the gate.
- A breach rolls the alias back only inside the bake period, with `on_breach: rollback`, for a
  version a gate promoted and with a version to go back to; otherwise it alerts, and the decision
  says why it did not roll back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from promotion.engine.decision import ABS_TOL, REL_TOL
from promotion.policy.model import Watch, WatchRule

Status = Literal["pass", "breach", "insufficient"]
Outcome = Literal["healthy", "insufficient_data", "breach"]
Action = Literal["none", "rollback", "alert"]


@dataclass(frozen=True)
class LiveFacts:
    """What one version did in one window of live traffic."""

    version: str
    requests: int = 0
    rows: int = 0
    error_rate: float | None = None  # model errors (5xx) / requests
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None  # over successful requests
    drift_rows: int = 0  # logged input rows the drift statistics were computed on
    prediction_psi: float | None = None
    prediction_ks: float | None = None
    feature_psi: tuple[tuple[str, float], ...] = ()  # by feature
    feature_ks: tuple[tuple[str, float], ...] = ()
    missing_features: tuple[str, ...] = ()  # in the reference profile, absent live
    profile: str | None = None  # where the reference profile came from; None: no profile
    profile_problem: str | None = None  # why there is none (unreadable), when there is a why
    labels: int = 0  # labelled rows
    quality: tuple[tuple[str, float], ...] = ()  # live metric -> value, over the labelled rows


@dataclass(frozen=True)
class WatchFacts:
    model: str
    alias: str
    now: float  # epoch seconds: the end of the window
    window_seconds: float
    live: LiveFacts
    previous_version: str | None = None  # @<alias>-previous: where a rollback would go
    promoted_at: float | None = None  # when the alias moved to this version (epoch seconds)
    promoted_by_gate: bool = False  # the version's last decision is a gate's `promoted`
    baseline: LiveFacts | None = None  # the displaced version, just before it was displaced
    offline: tuple[tuple[str, float], ...] = ()  # the version's own logged metrics
    baseline_name: str = "the displaced version"  # what `baseline` is, in reasons


@dataclass(frozen=True)
class WatchCheck:
    rule: str  # the rule name: error_rate, feature_psi, rmse, ...
    kind: str  # max | min | max_increase | max_regression
    status: Status
    reason: str
    live: float | None = None
    reference: float | None = None
    bound: float | None = None
    subject: str | None = None  # the feature a feature_* rule is about
    upper: bool = True  # the bound is a ceiling (False: a floor)

    @property
    def label(self) -> str:
        return f"{self.rule} {self.kind}"


@dataclass(frozen=True)
class WatchDecision:
    model: str
    alias: str
    version: str
    outcome: Outcome
    action: Action
    checks: tuple[WatchCheck, ...]
    in_bake: bool
    why_not_rollback: str | None  # on a breach that only alerts: why
    requests: int

    @property
    def breached(self) -> tuple[WatchCheck, ...]:
        return tuple(c for c in self.checks if c.status == "breach")

    @property
    def insufficient(self) -> tuple[WatchCheck, ...]:
        return tuple(c for c in self.checks if c.status == "insufficient")

    @property
    def summary(self) -> str:
        if self.outcome == "breach":
            rules = "; ".join(c.reason for c in self.breached)
            return f"breach of version {self.version}: {rules}"
        if self.outcome == "insufficient_data":
            first = self.insufficient[0].reason if self.insufficient else "no data"
            return f"insufficient data for version {self.version}: {first}"
        return f"version {self.version} healthy over {self.requests} requests"


def judge(watch: Watch, facts: WatchFacts) -> WatchDecision:
    """Every rule of `watch` applied to the live facts, and the action the outcome calls for."""
    live = facts.live
    if live.requests < watch.min_requests:
        why = (f"{live.requests} requests in the window, fewer than min_requests "
               f"{watch.min_requests}")
        checks = tuple(WatchCheck(r.name, _kind(r), "insufficient", why) for r in watch.rules)
    else:
        checks = tuple(c for rule in watch.rules for c in _checks(watch, rule, facts))
    in_bake = facts.promoted_at is not None and \
        facts.now - facts.promoted_at < watch.bake_seconds
    outcome: Outcome = "breach" if any(c.status == "breach" for c in checks) else \
        "insufficient_data" if any(c.status == "insufficient" for c in checks) else "healthy"
    action: Action = "none"
    why_not = None
    if outcome == "breach":
        why_not = _why_not_rollback(watch, facts, in_bake)
        action = "alert" if why_not else "rollback"
    return WatchDecision(facts.model, facts.alias, live.version, outcome, action, checks,
                         in_bake, why_not, live.requests)


def _why_not_rollback(watch: Watch, facts: WatchFacts, in_bake: bool) -> str | None:
    if watch.on_breach == "alert":
        return "on_breach: alert"
    if facts.promoted_at is None:
        return "when this version took the alias is not recorded (moved outside Promote)"
    if not in_bake:
        return f"the bake period ({_duration(watch.bake_seconds)}) after its promotion is over"
    if not facts.promoted_by_gate:
        return "this version was not promoted by a gate (a rollback restored it)"
    if facts.previous_version is None or facts.previous_version == facts.live.version:
        return f"@{facts.alias}-previous holds no other version to go back to"
    return None


def _kind(rule: WatchRule) -> str:
    for kind in ("max", "min", "max_increase", "max_regression"):
        if getattr(rule, kind) is not None:
            return kind
    return "max"


def _checks(watch: Watch, rule: WatchRule, facts: WatchFacts) -> list[WatchCheck]:
    if rule.name in ("error_rate", "latency_p95_ms"):
        return _signal_checks(watch, rule, facts)
    if rule.name.startswith(("prediction_", "feature_")):
        return [_drift_check(watch, rule, facts.live)]
    return _quality_checks(watch, rule, facts)


def _signal_checks(watch: Watch, rule: WatchRule, facts: WatchFacts) -> list[WatchCheck]:
    value: float | None = getattr(facts.live, rule.name)
    unit = "" if rule.name == "error_rate" else " ms"
    if value is None:  # no successful request to time: nothing to judge, not a breach
        return [WatchCheck(rule.name, _kind(rule), "insufficient",
                           f"{rule.name}: no successful request in the window to measure")]
    checks = []
    if rule.max is not None:
        checks.append(bound_check(rule.name, "max", value, rule.max, None, unit))
    if rule.max_increase is not None:
        base = facts.baseline
        reference = getattr(base, rule.name) if base is not None else None
        if base is None or base.requests < watch.min_requests or reference is None:
            seen = 0 if base is None else base.requests
            checks.append(WatchCheck(rule.name, "max_increase", "insufficient",
                                     f"{rule.name}: {facts.baseline_name} has {seen} requests to "
                                     f"compare with (needs {watch.min_requests})", value))
        else:
            allowed = rule.max_increase.amount(reference)
            if rule.name == "error_rate":
                # A rate over a zero baseline would allow nothing: one failed request is the
                # least increase a window can show.
                allowed = max(allowed, 1.0 / facts.live.requests)
            checks.append(bound_check(rule.name, "max_increase", value, reference + allowed,
                                 reference, unit, margin=f"+{rule.max_increase}"))
    return checks


def _drift_check(watch: Watch, rule: WatchRule, live: LiveFacts) -> WatchCheck:
    assert rule.max is not None
    if live.profile is None:
        why = live.profile_problem or f"version {live.version} has no reference profile"
        return WatchCheck(rule.name, "max", "insufficient", f"{rule.name}: {why}")
    if live.drift_rows < watch.min_requests:
        return WatchCheck(rule.name, "max", "insufficient",
                          f"{rule.name}: {live.drift_rows} logged rows, fewer than "
                          f"min_requests {watch.min_requests}")
    subject = None
    value: float | None
    if rule.name.startswith("feature_"):
        if live.missing_features:
            names = ", ".join(live.missing_features)
            return WatchCheck(rule.name, "max", "breach", f"{rule.name}: input column(s) "
                              f"{names} of the reference absent from live traffic",
                              bound=rule.max, subject=live.missing_features[0])
        values = live.feature_psi if rule.name == "feature_psi" else live.feature_ks
        if not values:
            return WatchCheck(rule.name, "max", "insufficient",
                              f"{rule.name}: no feature could be compared")
        subject, value = max(values, key=lambda item: item[1])
    else:
        value = live.prediction_psi if rule.name == "prediction_psi" else live.prediction_ks
        if value is None:  # KS of class labels, or no prediction could be compared
            return WatchCheck(rule.name, "max", "insufficient",
                              f"{rule.name}: not computed for the predictions of version "
                              f"{live.version} (class labels have no KS statistic)")
    check = bound_check(rule.name, "max", value, rule.max, None, "")
    if subject is None:
        return check
    return replace(check, reason=check.reason.replace(rule.name, f"{rule.name} (worst: "
                                                                 f"{subject})", 1),
                   subject=subject)


def _quality_checks(watch: Watch, rule: WatchRule, facts: WatchFacts) -> list[WatchCheck]:
    live = facts.live
    if live.labels < watch.min_labels:
        return [WatchCheck(rule.name, _kind(rule), "insufficient",
                           f"{rule.name}: {live.labels} labelled rows, fewer than min_labels "
                           f"{watch.min_labels}")]
    value = dict(live.quality).get(rule.name)
    if value is None:
        return [WatchCheck(rule.name, _kind(rule), "insufficient",
                           f"{rule.name}: cannot be computed from the logged predictions")]
    checks = []
    lower = rule.goal == "maximize"
    if rule.min is not None:
        checks.append(bound_check(rule.name, "min", value, rule.min, None, "", lower=True))
    if rule.max is not None:
        checks.append(bound_check(rule.name, "max", value, rule.max, None, ""))
    if rule.max_regression is not None:
        reference, what = _quality_reference(watch, rule, facts)
        if reference is None:
            checks.append(WatchCheck(rule.name, "max_regression", "insufficient",
                                     f"{rule.name}: {what}", value))
        else:
            amount = rule.max_regression.amount(reference)
            bound = reference - amount if lower else reference + amount
            checks.append(bound_check(rule.name, "max_regression", value, bound, reference, "",
                                 lower=lower, margin=f"{rule.max_regression} worse than {what}"))
    return checks


def _quality_reference(watch: Watch, rule: WatchRule,
                       facts: WatchFacts) -> tuple[float | None, str]:
    if rule.against == "offline":
        value = dict(facts.offline).get(rule.name)
        if value is None:
            return None, (f"version {facts.live.version}'s run has no logged metric "
                          f"'{rule.name}' to compare with (against: offline)")
        return value, "its offline value"
    base = facts.baseline
    if base is None or base.labels < watch.min_labels:
        labels = 0 if base is None else base.labels
        return None, (f"{facts.baseline_name} has {labels} labelled rows to compare with "
                      f"(needs {watch.min_labels})")
    value = dict(base.quality).get(rule.name)
    if value is None:
        return None, f"the live value of {facts.baseline_name} cannot be computed"
    return value, f"version {base.version} live"


def bound_check(rule: str, kind: str, value: float | None, bound: float, reference: float | None,
           unit: str, *, lower: bool = False, margin: str = "") -> WatchCheck:
    """`value` must be <= bound (>= bound with `lower`); a value that was computed and is not
    a finite number fails closed (a missing one is the callers' insufficient data)."""
    if value is None or not math.isfinite(value):
        return WatchCheck(rule, kind, "breach", f"{rule}: the measured value is not a finite "
                          f"number ({value})", value, reference, bound, upper=not lower)
    tolerance = max(REL_TOL * abs(bound), ABS_TOL)
    ok = value >= bound - tolerance if lower else value <= bound + tolerance
    sign = ">=" if lower else "<="
    against = f" ({margin} of {_num(reference)}{unit})" if reference is not None else ""
    verdict = "within" if ok else "breaches"
    reason = (f"{rule} {_num(value)}{unit} {verdict} {kind} {sign} {_num(bound)}{unit}{against}")
    return WatchCheck(rule, kind, "pass" if ok else "breach", reason, value, reference, bound,
                      upper=not lower)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
