"""Rollout reports: the terminal table, the `--json` document, Markdown (job summary and the
decision record's report.md).

The JSON document (schema_version 1, kind `rollout`) is listed in docs/rollout.md. A check reads
like the watch's: rule, the candidate's live value, Production's (the reference), bound, status,
reason.
"""

from __future__ import annotations

from typing import Any

from promotion.engine.results import RolloutResult
from promotion.engine.rollout import RolloutState
from promotion.engine.watch import LiveFacts
from promotion.report.text import code, document, dumps, grid, md, number, shown
from promotion.report.watch import checks_json, iso, live_json, watch_rows

_DONE = {"wait": "WAITING", "advance": "ADVANCED", "promote": "PROMOTED", "abort": "ABORTED",
         "none": "NO ROLLOUT"}
_WOULD = {"wait": "WAITING", "advance": "WOULD ADVANCE", "promote": "WOULD PROMOTE",
          "abort": "WOULD ABORT", "none": "NO ROLLOUT"}


def headline(result: RolloutResult) -> str:
    """One line: what was done (or would be), to which rollout, and why."""
    policy, state = result.policy, result.state
    where = f"{policy.model}@{policy.alias}"
    if state is None:
        return f"NO ROLLOUT  {where}: {result.note}"
    word = (_WOULD if result.dry_run else _DONE)[result.action]
    what = f"{word}  {where}: {_rollout(state)}"
    if result.abort_reason is not None:
        tail = "@" + state.canary_alias + " removed" if result.applied else \
            "nothing was written" if result.dry_run else ""
        return f"{what}: {result.abort_reason}" + (f" ({tail})" if tail else "")
    if result.decision is None:
        return f"{what}: {result.note}" if result.note else what
    d = result.decision
    if result.action == "advance" and result.advanced_to is not None:
        now = result.advanced_to
        return f"{what}: {d.why}; now {now.share * 100:g}% (step {now.step + 1} of " \
               f"{len(now.steps)})"
    if result.action == "promote" and result.applied:
        return f"{what}: {d.why}; @{state.alias} -> version {state.version}, " \
               f"@{state.alias}-previous -> version {d.production}, @{state.canary_alias} " \
               f"removed"
    if result.action == "abort" and result.applied:
        return f"{what}: {d.why}; @{state.canary_alias} removed, @{state.alias} stays on " \
               f"version {d.production}"
    suffix = " (dry run: nothing was written)" if result.dry_run and d.action != "wait" else ""
    return f"{what}: {d.why}{suffix}"


def _rollout(state: RolloutState) -> str:
    return (f"version {state.version} on @{state.canary_alias} ({state.mode}, step "
            f"{state.step + 1} of {len(state.steps)}, {state.share * 100:g}%)")


def table(result: RolloutResult) -> str:
    lines = [headline(result)]
    d, facts = result.decision, result.facts
    if result.resolved:
        lines.append(f"note: {result.resolved}")
    if d is not None and d.checks:
        lines += ["", *grid(["rule", "candidate", "Production", "bound", "status", "reason"],
                            watch_rows(d.checks), right=(1, 2, 3))]
    if facts is not None:
        lines += ["", f"window {iso(facts.step_started)} .. {iso(facts.now)}",
                  _live_line("candidate", facts.candidate),
                  _live_line("Production", facts.production)]
        if facts.agreement is not None:
            lines.append(f"agreement: {facts.agreement.agreeing} of {facts.agreement.rows} "
                         "rows scored by both versions agree")
    lines += _missing(result)
    if result.record_run_id:
        lines.append(f"decision record: run {result.record_run_id}")
    if result.log:
        lines.append(f"inference log: {result.log}")
    return "\n".join(lines)


def _live_line(who: str, live: LiveFacts) -> str:
    labelled = f", {live.labels} labelled" if live.labels or live.quality else ""
    return (f"{who} version {live.version}: {live.requests} requests, {live.rows} rows"
            f"{labelled}, error rate {shown(live.error_rate)}, p95 "
            f"{shown(live.latency_p95_ms)} ms")


def _missing(result: RolloutResult) -> list[str]:
    if not result.missing:
        return []
    return ["INCOMPLETE: the record of this move is not complete; the next `promote rollout` "
            "(or `promote status`) completes it. Missing:",
            *[f"  - {what}" for what in result.missing]]


def markdown(result: RolloutResult) -> str:
    """The step as a GitHub job summary, and the decision record's report.md."""
    out = [f"### Rollout: {md(headline(result))}", ""]
    d = result.decision
    if d is not None and d.checks:
        out += ["| rule | candidate | Production | bound | status | reason |",
                "|---|---:|---:|---:|---|---|"]
        out += ["| " + " | ".join(md(cell) for cell in row) + " |"
                for row in watch_rows(d.checks)]
        out.append("")
    if result.facts is not None:
        out += [md(_live_line("candidate", result.facts.candidate)), "",
                md(_live_line("Production", result.facts.production)), ""]
    if result.missing:
        out += ["**Record incomplete** (the next `promote rollout` completes it):",
                *[f"- {md(what)}" for what in result.missing], ""]
    if result.record_run_id:
        out.append(f"Decision record: run {code(result.record_run_id)}")
    return "\n".join(out) + "\n"


def state_json(state: RolloutState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {"version": state.version, "canary_alias": state.canary_alias, "mode": state.mode,
            "steps": list(state.steps), "step": state.step + 1, "share": state.share,
            "started_at": state.started_at, "step_started_at": state.step_started_at,
            "production_at_start": state.production}


def to_dict(result: RolloutResult) -> dict[str, Any]:
    d, facts = result.decision, result.facts
    fields: dict[str, Any] = {
        "alias": result.policy.alias,
        "policy": result.policy.path,
        "action": result.action,
        "standing": d.standing if d else None,
        "dry_run": result.dry_run,
        "applied": result.applied,
        "summary": d.why if d else (result.abort_reason or result.note),
        "rollout": state_json(result.state),
        "advanced_to": state_json(result.advanced_to),
        "production_version": result.production,
        "checks": checks_json(d.checks) if d else [],
        "window": None if facts is None else {"start": iso(facts.step_started),
                                              "end": iso(facts.now)},
        "elapsed_seconds": number(d.elapsed_seconds) if d else None,
        "step_after_seconds": d.step_after_seconds if d else None,
        "candidate": live_json(facts.candidate) if facts else None,
        "production": live_json(facts.production) if facts else None,
        "agreement": None if facts is None or facts.agreement is None else {
            "rows": facts.agreement.rows, "agreeing": facts.agreement.agreeing},
        "abort_reason": result.abort_reason,
        "resolved": result.resolved,
        "record_complete": not result.missing,
        "missing": list(result.missing),
        "record_run_id": result.record_run_id,
        "inference_log": result.log,
        "decided_at": result.decided_at,
        "triggered_by": result.trigger.as_dict(),
        "return_code": result.return_code,
    }
    return document("rollout", result.policy.model, fields, result.tracking_uri)


def to_json_text(result: RolloutResult) -> str:
    return dumps(to_dict(result)) + "\n"


def rollout_files(result: RolloutResult) -> dict[str, bytes]:
    """The files kept with a rollout's decision record."""
    return {"rollout.json": to_json_text(result).encode(),
            "rollout.md": markdown(result).encode()}
