"""Watch reports: the terminal table, the `--json` document, Markdown for a job summary, and the
figures logged as metrics of the version's monitoring run.

The JSON document (schema_version 1, kind `watch`) is listed in docs/monitoring.md. A check reads
like a gate's: rule, live value, reference, bound, status, reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from promotion.engine.results import WatchResult
from promotion.engine.watch import LiveFacts, WatchCheck
from promotion.report.text import code, document, dumps, grid, md, number, shown

_HEADLINE = {"healthy": "HEALTHY", "insufficient_data": "INSUFFICIENT DATA", "breach": "BREACH"}
_STATUS = {"pass": "pass", "breach": "BREACH", "insufficient": "insufficient"}
Bound = tuple[float | None, bool]
_SIGNALS = ("error_rate", "latency_p95_ms", "prediction_psi", "feature_psi", "prediction_ks",
            "feature_ks")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def headline(result: WatchResult) -> str:
    """One line: the outcome, the version, the window, and what was done."""
    policy = result.policy
    where = f"{policy.model}@{policy.alias}"
    if result.decision is None:
        return f"INSUFFICIENT DATA  {where}: {result.note}"
    d = result.decision
    head = f"{_HEADLINE[d.outcome]}  {where} version {d.version}"
    window = f"window {iso(result.window_start)} .. {iso(result.window_end)}, {d.requests} requests"
    if d.outcome != "breach":
        return f"{head} ({window})"
    if result.rollback is not None:
        act = (f"rolled back to version {result.rollback.restored_version} (@{policy.alias} "
               f"moved; decision kind watch)")
    elif result.dry_run:
        act = ("would roll back (dry run: nothing moved)" if d.action == "rollback" else
               f"would alert: {d.why_not_rollback} (dry run: nothing recorded)")
    elif d.action == "rollback":
        act = "a rollback is called for and it moved nothing (the error below says why)"
    else:
        act = f"alert only, nothing moved: {d.why_not_rollback}"
    return f"{head} ({window}): {act}"


def watch_rows(checks: tuple[WatchCheck, ...]) -> list[list[str]]:
    """The cells of a table of checks: rule, live, reference, bound, status, reason."""
    return [[c.label, shown(c.live), shown(c.reference), shown(c.bound), _STATUS[c.status],
             c.reason] for c in checks]


def table(result: WatchResult) -> str:
    lines = [headline(result)]
    if result.decision is not None and result.decision.checks:
        lines += ["", *grid(["rule", "live", "reference", "bound", "status", "reason"],
                            watch_rows(result.decision.checks), right=(1, 2, 3))]
    facts = result.facts
    if facts is not None:
        lines += ["", _live_line(facts.live)]
    if result.record_run_id:
        lines.append(f"decision record: run {result.record_run_id}")
    if result.monitoring_run_id:
        lines.append(f"metrics: run {result.monitoring_run_id} in experiment "
                     "promotion-monitoring")
    lines.append(f"inference log: {result.log}")
    return "\n".join(lines)


def _live_line(live: LiveFacts) -> str:
    profile = live.profile or "none"
    return (f"version {live.version}: {live.requests} requests, {live.rows} rows, "
            f"{live.drift_rows} rows profiled, {live.labels} labelled; reference profile: "
            f"{profile}")


def markdown(result: WatchResult) -> str:
    """The watch as a GitHub job summary."""
    out = [f"### Watch: {md(headline(result))}", ""]
    if result.decision is not None and result.decision.checks:
        out += ["| rule | live | reference | bound | status | reason |",
                "|---|---:|---:|---:|---|---|"]
        out += ["| " + " | ".join(md(cell) for cell in row) + " |"
                for row in watch_rows(result.decision.checks)]
        out.append("")
    if result.facts is not None:
        out += [md(_live_line(result.facts.live)), ""]
    if result.history:
        out += ["Signals of this version over its watches, oldest first (the chart is "
                "`chart.png` in the report and on the version's run in `promotion-monitoring`):",
                "", "```", *sparklines(result.history), "```", ""]
    if result.record_run_id:
        out.append(f"Decision record: run {code(result.record_run_id)}")
    return "\n".join(out) + "\n"


_TICKS = "▁▂▃▄▅▆▇█"
SPARK_POINTS = 48  # the last this many windows


def sparklines(history: tuple[tuple[str, tuple[tuple[float, float], ...]], ...]) -> list[str]:
    """One line per signal: its last values as a sparkline, then the last value."""
    named = [(name, [v for _, v in points][-SPARK_POINTS:]) for name, points in history
             if points]
    width = max((len(name) for name, _ in named), default=0)
    lines = []
    for name, values in named:
        low, high = min(values), max(values)
        span = high - low
        ticks = "".join(_TICKS[0 if span == 0 else min(len(_TICKS) - 1, int(
            (v - low) / span * len(_TICKS)))] for v in values)
        lines.append(f"{name.ljust(width)}  {ticks}  last {values[-1]:.4g} "
                     f"(min {low:.4g}, max {high:.4g}, {len(values)} windows)")
    return lines


def to_dict(result: WatchResult) -> dict[str, Any]:
    d, facts = result.decision, result.facts
    fields: dict[str, Any] = {
        "alias": result.policy.alias,
        "policy": result.policy.path,
        "outcome": result.outcome,
        "action": result.action,
        "dry_run": result.dry_run,
        "version": d.version if d else None,
        "window": {"start": iso(result.window_start), "end": iso(result.window_end)},
        "in_bake": d.in_bake if d else False,
        "why_not_rollback": d.why_not_rollback if d else None,
        "summary": d.summary if d else result.note,
        "checks": checks_json(d.checks if d else ()),
        "live": live_json(facts.live) if facts else None,
        "baseline": live_json(facts.baseline) if facts and facts.baseline else None,
        "previous_version": facts.previous_version if facts else None,
        "rolled_back_to": result.rollback.restored_version if result.rollback else None,
        "record_run_id": result.record_run_id,
        "monitoring_run_id": result.monitoring_run_id,
        "inference_log": result.log,
        "triggered_by": result.trigger.as_dict(),
    }
    return document("watch", result.policy.model, fields, result.tracking_uri)


def checks_json(checks: tuple[WatchCheck, ...]) -> list[dict[str, Any]]:
    return [{"rule": c.rule, "kind": c.kind, "status": c.status, "live": number(c.live),
             "reference": number(c.reference), "bound": number(c.bound), "subject": c.subject,
             "reason": c.reason} for c in checks]


def live_json(live: LiveFacts) -> dict[str, Any]:
    return {
        "version": live.version, "requests": live.requests, "rows": live.rows,
        "error_rate": number(live.error_rate), "latency_p50_ms": number(live.latency_p50_ms),
        "latency_p95_ms": number(live.latency_p95_ms), "drift_rows": live.drift_rows,
        "prediction_psi": number(live.prediction_psi),
        "prediction_ks": number(live.prediction_ks),
        "feature_psi": {k: number(v) for k, v in live.feature_psi},
        "feature_ks": {k: number(v) for k, v in live.feature_ks},
        "missing_features": list(live.missing_features), "profile": live.profile,
        "labels": live.labels, "quality": {k: number(v) for k, v in live.quality},
    }


def to_json_text(result: WatchResult) -> str:
    return dumps(to_dict(result))


def metrics_of(result: WatchResult) -> dict[str, float]:
    """The window's figures as MLflow metrics of the version's monitoring run (no None, no NaN)."""
    assert result.facts is not None
    live = result.facts.live
    figures: dict[str, float | None] = {
        "requests": live.requests, "rows": live.rows, "error_rate": live.error_rate,
        "latency_p50_ms": live.latency_p50_ms, "latency_p95_ms": live.latency_p95_ms,
        "prediction_psi": live.prediction_psi, "prediction_ks": live.prediction_ks,
        "labels": live.labels,
        "feature_psi": max((v for _, v in live.feature_psi), default=None),
        "feature_ks": max((v for _, v in live.feature_ks), default=None),
        "breaches": len(result.decision.breached) if result.decision else 0,
    }
    figures.update({f"feature_psi/{k.replace('/', '_')}": v for k, v in live.feature_psi})
    figures.update({f"live_{k}": v for k, v in live.quality})
    return {k: float(v) for k, v in figures.items()
            if v is not None and v == v and abs(float(v)) != float("inf")}


def chart_bounds(result: WatchResult) -> dict[str, Bound]:
    """The figures the chart draws (those a rule judges, and the traffic), with their bounds:
    (the bound, whether it is a ceiling); (None, True) for a figure without one."""
    bounds: dict[str, Bound] = {"requests": (None, True)}
    for check in result.decision.checks if result.decision else ():
        key = f"live_{check.rule}" if check.rule not in _SIGNALS else check.rule
        if bounds.get(key, (None, True))[0] is None:  # the first bound a rule sets is drawn
            bounds[key] = (check.bound, check.upper)
    return bounds


def watch_files(result: WatchResult) -> dict[str, bytes]:
    """The report files a watch decision record carries."""
    return {"watch.json": to_json_text(result).encode("utf-8"),
            "watch.md": markdown(result).encode("utf-8")}

