"""Gate and rollback reports: the terminal table, the `--json` document, the Markdown report.

The JSON document (schema_version 1) is the stable interface for scripts; its fields are listed in
docs/gate.md. Add fields freely; renaming or removing one means schema_version 2. Non-finite
numbers, which JSON cannot hold, are written as the strings "nan", "inf" and "-inf".

Everything printed here went through `redact` or was built from values that hold no credentials
(tracking URIs arrive already redacted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from promotion.engine.decision import RuleResult
from promotion.engine.records import EXPERIMENT
from promotion.engine.results import GateResult, RollbackResult
from promotion.errors import redact
from promotion.report.chart import ChartRow, chart_png
from promotion.report.rollout import state_json
from promotion.report.text import (
    DASH,
    document,
    dumps,
    grid,
    md,
    number,
    shown,
    version_or_none,
)

_HEADLINE = {
    "promoted": "PROMOTED",
    "rejected": "REJECTED",
    "inconclusive": "INCONCLUSIVE",
    "already": "ALREADY IN PLACE",
    "conflict": "CONFLICT",
    "canary": "ROLLOUT STARTED",
}
_ICON = {"promoted": "✅", "rejected": "❌", "inconclusive": "⚠️", "already": "✅",
         "conflict": "⛔", "rollback": "↩️", "canary": "🐤"}


def _difference(rule: RuleResult) -> str:
    """candidate - Production with its bootstrap interval, for re-scored rules."""
    if rule.interval is None or rule.difference is None:
        return DASH
    i = rule.interval
    return f"{rule.difference:+.4g} [{i.low:+.4g}, {i.high:+.4g}] @{i.confidence:.0%}"


def _has_intervals(rules: Sequence[RuleResult]) -> bool:
    return any(r.interval is not None for r in rules)


def _verdict(rule: RuleResult) -> str:
    if rule.inconclusive:
        return "inconclusive"
    return "pass" if rule.passed else "FAIL"


def _rule_json(rule: RuleResult) -> dict[str, Any]:
    interval = rule.interval
    return {
        "metric": rule.metric,
        "kind": rule.kind,
        "source": rule.source,
        "passed": rule.passed,
        "inconclusive": rule.inconclusive,
        "candidate": number(rule.candidate),
        "production": number(rule.production),
        "bound": number(rule.bound),
        "reason": rule.reason,
        "difference": number(rule.difference),
        "interval": None if interval is None else {
            "low": number(interval.low), "high": number(interval.high),
            "confidence": interval.confidence},
        "margin": number(rule.margin),
    }


# ---------------------------------------------------------------------------------------------
# The gate


def _decision_document(result: GateResult | RollbackResult, kind: str, *, model: str,
                       alias: str, previous_alias: str, outcome: str,
                       details: Mapping[str, Any]) -> dict[str, Any]:
    """What gate and rollback reports share around their own `details`."""
    return {**document(kind, model, {
        "alias": alias, "previous_alias": previous_alias, "outcome": outcome,
        "return_code": result.return_code, "dry_run": result.dry_run, "applied": result.applied,
        **details,
        "decided_at": result.decided_at, "trigger": result.trigger.as_dict(),
    }, result.tracking_uri), "record_run_id": result.record_run_id}


def to_json(result: GateResult | RollbackResult) -> dict[str, Any]:
    if isinstance(result, RollbackResult):
        return _rollback_json(result)
    d = result.decision
    cand, prod = result.candidate, result.production
    details = {
        "summary": d.summary,
        "reasons": list(d.reasons),
        "candidate": {"version": cand.version, "run_id": cand.run_id},
        "production": None if prod is None else {"version": prod.version, "run_id": prod.run_id},
        "conflict_version": result.conflict_version,
        "policy": {"path": result.policy.path, "sha256": result.policy.sha256,
                   "when_no_production": result.policy.when_no_production},
        "rules": [_rule_json(r) for r in d.rules],
        "evaluation": None if result.evaluation is None else {
            "data_sha256": result.evaluation.data_sha256, "rows": result.evaluation.rows},
        "rollout": None if result.canary is None else state_json(result.canary.state),
        "moved_alias": result.moved_alias,
    }
    return {**_decision_document(result, "gate", model=d.model, alias=d.alias,
                                 previous_alias=result.policy.previous_alias,
                                 outcome=result.outcome, details=details),
            "resolved": result.resolved, **_completeness(result)}


def to_json_text(result: GateResult | RollbackResult) -> str:
    return dumps(to_json(result)) + "\n"


def _headline(result: GateResult) -> str:
    d, alias = result.decision, result.decision.alias
    v, p = result.candidate_version, result.production_version
    word = _HEADLINE[result.outcome]
    canary = result.canary
    if result.dry_run:
        would = {"promoted": f"WOULD PROMOTE version {v} to @{alias}",
                 "already": f"version {v} already holds @{alias}"}
        text = f"WOULD START A ROLLOUT: {_started(result)}" if result.outcome == "canary" else \
            would.get(result.outcome, f"{word}: version {v} would stay out")
        return f"DRY RUN: {text} (nothing was written)"
    if result.missing and not result.applied:
        return (f"UNKNOWN: @{result.moved_alias} may have moved to version {v} (its write got "
                "no answer); the next gate or `promote status` tells")
    if result.outcome == "canary" and canary is not None:
        return f"{word}: {_started(result)}; @{alias} stays on {version_or_none(p)} until " \
               f"`promote rollout {result.policy.path}` promotes it"
    if result.outcome == "promoted":
        kept = f"; @{result.policy.previous_alias} -> version {p}" if p else ""
        return f"{word}: @{alias} -> version {v}{kept}"
    if result.outcome == "already":
        what = d.reasons[0] if d.reasons else f"version {v} already holds @{alias}"
        return f"{word}: {what}; nothing moved"
    if result.outcome == "conflict":
        return (f"{word}: @{result.conflict_alias or alias} moved to "
                f"{version_or_none(result.conflict_version)} while deciding; nothing moved")
    return f"{word}: @{alias} stays on {version_or_none(p)}"


def _started(result: GateResult) -> str:
    """The rollout a pass starts, in words."""
    assert result.canary is not None
    state = result.canary.state
    how = "answered by it" if state.mode == "canary" else "mirrored to it"
    replaced = result.canary.replaces
    ends = f" (it replaces the rollout of version {replaced.version})" \
        if replaced is not None and replaced.version != state.version else ""
    return (f"@{state.canary_alias} -> version {state.version}, step 1 of {len(state.steps)}: "
            f"{state.share * 100:g}% of requests {how} ({state.mode}){ends}")


def _record_line(run_id: str) -> str:
    return f"record     run {run_id} (experiment {EXPERIMENT})"


def table(result: GateResult) -> str:
    """The default terminal output of `promote gate`."""
    d, policy = result.decision, result.policy
    cand, prod = result.candidate, result.production
    lines = [
        f"model      {d.model}   alias @{d.alias}",
        f"policy     {policy.path}   sha256 {policy.sha256[:12]}",
        f"candidate  version {cand.version}" + (f"   run {cand.run_id}" if cand.run_id else ""),
        f"compared   {version_or_none(prod.version) if prod else 'no version holds @' + d.alias}"
        + (f"   run {prod.run_id}" if prod and prod.run_id else ""),
        f"server     {redact(result.tracking_uri)}",
        *_context(result, {"evaluation": "evaluated  {rows} rows   data sha256 {sha}",
                           "resolved": "note       {text}"}),
        "",
    ]
    if d.rules:
        ci, rows = _rule_rows(d.rules)
        header = ["CHECK", "CANDIDATE", "PRODUCTION", *(["DIFF [CI]"] if ci else []), "BOUND",
                  "RESULT", "REASON"]
        lines.extend(grid(header, rows))
        lines.append("")
    lines.append(_headline(result))
    lines.extend(_missing_lines(result))
    if result.outcome not in ("promoted", "already", "canary"):
        lines.extend(f"  - {reason}" for reason in d.reasons)
    if result.record_run_id:
        lines.append(_record_line(result.record_run_id))
    return "\n".join(lines)


def _context(result: GateResult, templates: Mapping[str, str], *,
             escape: Callable[[Any], str] = str) -> list[str]:
    """The optional lines of a gate report, in the order and words of `templates`:
    what was re-scored, the record run, an interrupted promotion this gate completed."""
    ev = result.evaluation
    values = {
        "evaluation": None if ev is None else {"rows": ev.rows, "sha": ev.data_sha256[:12]},
        "record": None if not result.record_run_id else {"run": result.record_run_id,
                                                         "experiment": EXPERIMENT},
        "resolved": None if not result.resolved else {"text": escape(result.resolved)},
    }
    return [template.format(**found) for key, template in templates.items()
            if (found := values[key]) is not None]


def _rule_rows(rules: Sequence[RuleResult]) -> tuple[bool, list[list[str]]]:
    """The cells of the checks table, and whether it has the interval column.

    The interval column appears only when some rule was re-scored on the evaluation set.
    """
    ci = _has_intervals(rules)
    return ci, [[r.label, shown(r.candidate), shown(r.production),
                 *([_difference(r)] if ci else []), shown(r.bound), _verdict(r), r.reason]
                for r in rules]


def markdown(result: GateResult | RollbackResult, chart: str | None = None) -> str:
    """The report kept with the record and appended to $GITHUB_STEP_SUMMARY."""
    if isinstance(result, RollbackResult):
        return _rollback_markdown(result)
    d, policy = result.decision, result.policy
    icon = _ICON.get(result.outcome, "")
    lines = [
        f"### {icon} Promote `{md(d.model)}`: {_headline(result)}",
        "",
        f"- candidate: version {d.candidate_version}"
        + (f" (run `{result.candidate.run_id}`)" if result.candidate.run_id else ""),
        f"- compared to: {version_or_none(d.production_version)} at @{md(d.alias)}",
        f"- policy: `{md(policy.path)}` (sha256 `{policy.sha256[:12]}`)",
        f"- decided at {result.decided_at} by {md(result.trigger.describe())}",
        *_context(result, {"evaluation": "- evaluation data: {rows} rows, sha256 `{sha}`",
                           "record": "- record: run `{run}` in experiment `{experiment}`",
                           "resolved": "- note: {text}"}, escape=md),
    ]
    if d.rules:
        ci, rows = _rule_rows(d.rules)
        lines += ["", "| check | candidate | Production | "
                  + ("candidate − Production [CI] | " if ci else "") + "bound | result | reason |",
                  "|---|---:|---:|" + ("---:|" if ci else "") + "---:|---|---|"]
        lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in rows]
    if result.outcome not in ("promoted", "already", "canary"):
        lines += ["", "**Why:**", *[f"- {md(reason)}" for reason in d.reasons]]
    if result.missing:
        lines += ["", "**Record incomplete** (the model's next gate or rollback completes it):",
                  *[f"- {md(what)}" for what in result.missing]]
    if chart:
        lines += ["", f"![candidate - Production, with confidence intervals]({chart})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Rollback


def _rollback_json(result: RollbackResult) -> dict[str, Any]:
    return _decision_document(result, "rollback", model=result.model, alias=result.alias,
                              previous_alias=result.previous_alias, outcome="rollback",
                              details={"restored_version": result.restored_version,
                                       "displaced_version": result.displaced_version,
                                       "completed": result.completed,
                                       **_completeness(result)})


def _completeness(result: GateResult | RollbackResult) -> dict[str, Any]:
    """Whether everything that follows a move was written, and what is missing."""
    return {"record_complete": not result.missing, "missing": list(result.missing)}


def _missing_lines(result: GateResult | RollbackResult) -> list[str]:
    if not result.missing:
        return []
    return ["INCOMPLETE: the record of this move is not complete; the model's next gate or "
            "rollback (or `promote status`) completes it. Missing:",
            *[f"  - {what}" for what in result.missing]]


def rollback_text(result: RollbackResult) -> str:
    moved = (f"@{result.alias} -> version {result.restored_version}; "
             f"@{result.previous_alias} -> {version_or_none(result.displaced_version)}")
    if result.dry_run:
        return f"DRY RUN: would move {moved} (nothing was written)"
    if result.completed:
        return f"COMPLETED: {result.completed}; @{result.alias} -> version " \
               f"{result.restored_version}; nothing else was rolled back"
    lines = [f"ROLLED BACK model {result.model}: {moved}", *_missing_lines(result)]
    if result.record_run_id:
        lines.append(_record_line(result.record_run_id))
    return "\n".join(lines)


def _rollback_markdown(result: RollbackResult) -> str:
    return (f"### ↩️ Promote `{md(result.model)}`: rollback of @{md(result.alias)}\n\n"
            f"- @{md(result.alias)}: {version_or_none(result.displaced_version)} -> version "
            f"{result.restored_version}\n"
            f"- @{md(result.previous_alias)}: -> {version_or_none(result.displaced_version)}\n"
            f"- decided at {result.decided_at} by {md(result.trigger.describe())}\n")


def record_files(result: GateResult | RollbackResult) -> dict[str, bytes]:
    """The files kept with a decision record: the JSON and Markdown reports, and the chart."""
    if isinstance(result, RollbackResult):
        return {"report.json": to_json_text(result).encode(),
                "report.md": markdown(result).encode()}
    rows = chart_rows(result) if result.evaluation is not None else []
    files = {"report.json": to_json_text(result).encode(),
             "report.md": markdown(result, chart="chart.png" if rows else None).encode()}
    if rows:
        title = (f"{result.policy.model}: version {result.candidate_version} vs "
                 f"{version_or_none(result.production_version, 'nothing')}")
        files["chart.png"] = chart_png(rows, title)
    return files


def chart_rows(result: GateResult) -> list[ChartRow]:
    """One row per re-scored metric with an interval; the line is the strictest relative rule."""
    goals = {r.name: r.goal for r in result.policy.metrics}
    rows: dict[str, ChartRow] = {}
    for rule in result.decision.rules:
        if rule.source != "evaluation" or rule.interval is None or rule.difference is None:
            continue
        goal = goals.get(rule.metric, "maximize")
        toward = 1.0 if goal == "maximize" else -1.0  # the direction of improvement
        margin = None
        if rule.margin is not None:
            margin = toward * rule.margin if rule.kind == "min_improvement" \
                else -toward * rule.margin
        old = rows.get(rule.metric)
        if old is not None and old.margin is not None and margin is not None:
            margin = max(old.margin, margin) if goal == "maximize" else min(old.margin, margin)
        rows[rule.metric] = ChartRow(rule.metric, rule.difference, rule.interval.low,
                                     rule.interval.high, margin, goal)
    return list(rows.values())
