"""Renderers: terminal tables, the `--json` document, Markdown, and GitHub Actions outputs.

The JSON document (schema_version 1) is the stable interface for scripts; its fields are listed in
docs/gate.md. Add fields freely; renaming or removing one means schema_version 2. Non-finite
numbers, which JSON cannot hold, are written as the strings "nan", "inf" and "-inf".

Everything printed here went through `redact` or was built from values that hold no credentials
(tracking URIs arrive already redacted).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from promotion.errors import redact
from promotion.record import EXPERIMENT

if TYPE_CHECKING:
    from promotion.chart import ChartRow
    from promotion.decision import RuleResult
    from promotion.gate import GateResult, History, ModelStatus, RollbackResult

SCHEMA_VERSION = 1
DASH = "-"

_HEADLINE = {
    "promoted": "PROMOTED",
    "rejected": "REJECTED",
    "inconclusive": "INCONCLUSIVE",
    "already": "ALREADY IN PLACE",
    "conflict": "CONFLICT",
}
_ICON = {"promoted": "✅", "rejected": "❌", "inconclusive": "⚠️", "already": "✅",
         "conflict": "⛔", "rollback": "↩️"}


# ---------------------------------------------------------------------------------------------
# Values


def number(value: Any) -> Any:
    """A value as JSON can hold it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def shown(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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


def _document(kind: str, model: str, fields: Mapping[str, Any],
              tracking_uri: str) -> dict[str, Any]:
    """A JSON document: what every kind starts with, its own fields, then the server."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "model": model, **fields,
            "tracking_uri": redact(tracking_uri)}


def _decision_document(result: GateResult | RollbackResult, kind: str, *, model: str,
                       alias: str, previous_alias: str, outcome: str,
                       details: Mapping[str, Any]) -> dict[str, Any]:
    """What gate and rollback reports share around their own `details`."""
    return {**_document(kind, model, {
        "alias": alias, "previous_alias": previous_alias, "outcome": outcome,
        "return_code": result.return_code, "dry_run": result.dry_run, "applied": result.applied,
        **details,
        "decided_at": result.decided_at, "trigger": result.trigger.as_dict(),
    }, result.tracking_uri), "record_run_id": result.record_run_id}


def to_json(result: GateResult | RollbackResult) -> dict[str, Any]:
    from promotion.gate import RollbackResult

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
    }
    return {**_decision_document(result, "gate", model=d.model, alias=d.alias,
                                 previous_alias=result.policy.previous_alias,
                                 outcome=result.outcome, details=details),
            "resolved": result.resolved}


def to_json_text(result: GateResult | RollbackResult) -> str:
    return json.dumps(to_json(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _headline(result: GateResult) -> str:
    d, alias = result.decision, result.decision.alias
    v, p = result.candidate_version, result.production_version
    word = _HEADLINE[result.outcome]
    if result.dry_run:
        would = {"promoted": f"WOULD PROMOTE version {v} to @{alias}",
                 "already": f"version {v} already holds @{alias}"}
        return f"DRY RUN: {would.get(d.outcome, f'{word}: version {v} would stay out')}" \
               " (nothing was written)"
    if result.outcome == "promoted":
        kept = f"; @{result.policy.previous_alias} -> version {p}" if p else ""
        return f"{word}: @{alias} -> version {v}{kept}"
    if result.outcome == "already":
        return f"{word}: version {v} already holds @{alias}; nothing moved"
    if result.outcome == "conflict":
        return f"{word}: @{alias} moved to {_ver(result.conflict_version)} while deciding; " \
               "nothing moved"
    return f"{word}: @{alias} stays on {_ver(p)}"


def _ver(version: str | None) -> str:
    return f"version {version}" if version else "no version"


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
        f"compared   {_ver(prod.version) if prod else 'no version holds @' + d.alias}"
        + (f"   run {prod.run_id}" if prod and prod.run_id else ""),
        f"server     {redact(result.tracking_uri)}",
    ]
    if result.evaluation is not None:
        lines.append(f"evaluated  {result.evaluation.rows} rows   data sha256 "
                     f"{result.evaluation.data_sha256[:12]}")
    if result.resolved:
        lines.append(f"note       {result.resolved}")
    lines.append("")
    if d.rules:
        ci, rows = _rule_rows(d.rules)
        header = ["CHECK", "CANDIDATE", "PRODUCTION", *(["DIFF [CI]"] if ci else []), "BOUND",
                  "RESULT", "REASON"]
        lines.extend(_grid(header, rows))
        lines.append("")
    lines.append(_headline(result))
    if result.outcome not in ("promoted", "already"):
        lines.extend(f"  - {reason}" for reason in d.reasons)
    if result.record_run_id:
        lines.append(_record_line(result.record_run_id))
    return "\n".join(lines)


def _rule_rows(rules: Sequence[RuleResult]) -> tuple[bool, list[list[str]]]:
    """The cells of the checks table, and whether it has the interval column.

    The interval column appears only when some rule was re-scored on the evaluation set.
    """
    ci = _has_intervals(rules)
    return ci, [[r.label, shown(r.candidate), shown(r.production),
                 *([_difference(r)] if ci else []), shown(r.bound), _verdict(r), r.reason]
                for r in rules]


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the last column is never padded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        out.append("  ".join([*cells, str(row[-1])]).rstrip())
    return out


def _md(text: Any) -> str:
    """A Markdown table cell."""
    return shown(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: GateResult | RollbackResult, chart: str | None = None) -> str:
    """The report kept with the record and appended to $GITHUB_STEP_SUMMARY."""
    from promotion.gate import RollbackResult

    if isinstance(result, RollbackResult):
        return _rollback_markdown(result)
    d, policy = result.decision, result.policy
    icon = _ICON.get(result.outcome, "")
    lines = [
        f"### {icon} Promote `{_md(d.model)}`: {_headline(result)}",
        "",
        f"- candidate: version {d.candidate_version}"
        + (f" (run `{result.candidate.run_id}`)" if result.candidate.run_id else ""),
        f"- compared to: {_ver(d.production_version)} at @{_md(d.alias)}",
        f"- policy: `{_md(policy.path)}` (sha256 `{policy.sha256[:12]}`)",
        f"- decided at {result.decided_at} by {_md(result.trigger.describe())}",
    ]
    if result.evaluation is not None:
        lines.append(f"- evaluation data: {result.evaluation.rows} rows, sha256 "
                     f"`{result.evaluation.data_sha256[:12]}`")
    if result.record_run_id:
        lines.append(f"- record: run `{result.record_run_id}` in experiment `{EXPERIMENT}`")
    if result.resolved:
        lines.append(f"- note: {_md(result.resolved)}")
    if d.rules:
        ci, rows = _rule_rows(d.rules)
        lines += ["", "| check | candidate | Production | "
                  + ("candidate − Production [CI] | " if ci else "") + "bound | result | reason |",
                  "|---|---:|---:|" + ("---:|" if ci else "") + "---:|---|---|"]
        lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    if result.outcome not in ("promoted", "already"):
        lines += ["", "**Why:**", *[f"- {_md(reason)}" for reason in d.reasons]]
    if chart:
        lines += ["", f"![candidate - Production, with confidence intervals]({chart})"]
    return "\n".join(lines) + "\n"


def github_outputs(result: GateResult) -> dict[str, str]:
    return {"decision": result.outcome, "candidate_version": result.candidate_version,
            "production_version": result.production_version or "",
            "dry_run": "true" if result.dry_run else "false"}


def write_github(result: GateResult, env: Mapping[str, str] | None = None) -> None:
    """Inside GitHub Actions: append the Markdown report to the step summary, write outputs."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown(result) + "\n")
    outputs = env.get("GITHUB_OUTPUT")
    if outputs:
        with open(outputs, "a", encoding="utf-8") as f:
            f.write(output_lines(github_outputs(result)))


def output_lines(values: Mapping[str, str]) -> str:
    """`name<<DELIMITER` blocks: safe for any value, even one holding newlines."""
    text = []
    for name, value in values.items():
        delimiter = f"promote_{uuid.uuid4().hex}"
        text.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(text)


def chart_rows(result: GateResult) -> list[ChartRow]:
    """One row per re-scored metric with an interval; the line is the strictest relative rule."""
    from promotion.chart import ChartRow

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


# ---------------------------------------------------------------------------------------------
# Rollback


def _rollback_json(result: RollbackResult) -> dict[str, Any]:
    return _decision_document(result, "rollback", model=result.model, alias=result.alias,
                              previous_alias=result.previous_alias, outcome="rollback",
                              details={"restored_version": result.restored_version,
                                       "displaced_version": result.displaced_version})


def rollback_text(result: RollbackResult) -> str:
    moved = (f"@{result.alias} -> version {result.restored_version}; "
             f"@{result.previous_alias} -> {_ver(result.displaced_version)}")
    if result.dry_run:
        return f"DRY RUN: would move {moved} (nothing was written)"
    text = f"ROLLED BACK model {result.model}: {moved}"
    if result.record_run_id:
        text += "\n" + _record_line(result.record_run_id)
    return text


def _rollback_markdown(result: RollbackResult) -> str:
    return (f"### ↩️ Promote `{_md(result.model)}`: rollback of @{_md(result.alias)}\n\n"
            f"- @{_md(result.alias)}: {_ver(result.displaced_version)} -> version "
            f"{result.restored_version}\n"
            f"- @{_md(result.previous_alias)}: -> {_ver(result.displaced_version)}\n"
            f"- decided at {result.decided_at} by {_md(result.trigger.describe())}\n")


# ---------------------------------------------------------------------------------------------
# Status and history


def status_table(status: ModelStatus) -> str:
    lines = [f"model      {status.model}",
             f"latest     {_ver(status.latest_version)}",
             f"server     {redact(status.tracking_uri)}", ""]
    if status.aliases:
        lines += _grid(["ALIAS", "VERSION"], [[f"@{a}", v] for a, v in status.aliases])
    else:
        lines.append("no aliases")
    if status.versions:
        lines.append("")
        lines += _grid(["VERSION", "ALIASES", "DECISION", "DECIDED AT", "COMPARED TO", "REASON"],
                       [[v.version, " ".join(f"@{a}" for a in v.aliases) or DASH,
                         v.decision or "(none)", v.decided_at or DASH,
                         shown(v.compared_to), v.reason or DASH] for v in status.versions])
    for v in status.pending:
        lines.append(f"PENDING version {v.version}: {v.note}")
    return "\n".join(lines)


def status_json(status: ModelStatus) -> dict[str, Any]:
    return _document("status", status.model, {
        "latest_version": status.latest_version,
        "aliases": {a: v for a, v in status.aliases},
        "versions": [{"version": v.version, "aliases": list(v.aliases), "decision": v.decision,
                      "decided_at": v.decided_at, "compared_to": v.compared_to,
                      "reason": v.reason, "note": v.note} for v in status.versions],
    }, status.tracking_uri)


def history_table(history: History) -> str:
    if not history.entries:
        return f"no decisions recorded for model {history.model}"
    return "\n".join(_grid(
        ["WHEN", "KIND", "CANDIDATE", "COMPARED TO", "OUTCOME", "TRIGGERED BY", "REASON"],
        [[e.decided_at, e.kind, e.candidate_version, shown(e.compared_to), e.outcome,
          e.triggered_by, e.reason] for e in history.entries]))


def history_json(history: History) -> dict[str, Any]:
    return _document("history", history.model, {
        "limit": history.limit,
        "decisions": [{"decided_at": e.decided_at, "kind": e.kind, "alias": e.alias,
                       "candidate_version": e.candidate_version, "compared_to": e.compared_to,
                       "outcome": e.outcome, "reason": e.reason,
                       "triggered_by": e.triggered_by, "policy": e.policy,
                       "policy_sha256": e.policy_sha256, "record_run_id": e.run_id}
                      for e in history.entries],
    }, history.tracking_uri)


def dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
