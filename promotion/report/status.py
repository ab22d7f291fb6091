"""`promote status` and `promote history`: terminal tables and `--json` documents."""

from __future__ import annotations

from typing import Any

from promotion.engine.results import History, ModelStatus
from promotion.errors import redact
from promotion.report.rollout import state_json
from promotion.report.text import DASH, document, grid, shown, version_or_none


def status_table(status: ModelStatus) -> str:
    lines = [f"model      {status.model}",
             f"latest     {version_or_none(status.latest_version)}",
             f"server     {redact(status.tracking_uri)}", ""]
    if status.aliases:
        lines += grid(["ALIAS", "VERSION"], [[f"@{a}", v] for a, v in status.aliases])
    else:
        lines.append("no aliases")
    if status.versions:
        lines.append("")
        lines += grid(["VERSION", "ALIASES", "DECISION", "DECIDED AT", "COMPARED TO", "REASON"],
                       [[v.version, " ".join(f"@{a}" for a in v.aliases) or DASH,
                         v.decision or "(none)", v.decided_at or DASH,
                         shown(v.compared_to), v.reason or DASH] for v in status.versions])
    for r in status.rollouts:
        lines.append(f"ROLLOUT of @{r.alias}: {r.describe()}")
    for v in status.pending:
        lines.append(f"PENDING version {v.version}: {v.note}")
    if status.interrupted is not None:
        lines.append(f"INTERRUPTED {status.interrupted.summary}")
    if status.lease is not None:
        lines.append(f"LEASE held by {status.lease}: a Promote command is writing this model")
    return "\n".join(lines)


def status_json(status: ModelStatus) -> dict[str, Any]:
    return document("status", status.model, {
        "latest_version": status.latest_version,
        "aliases": {a: v for a, v in status.aliases},
        "versions": [{"version": v.version, "aliases": list(v.aliases), "decision": v.decision,
                      "decided_at": v.decided_at, "compared_to": v.compared_to,
                      "reason": v.reason, "note": v.note} for v in status.versions],
        "interrupted": _interrupted(status),
        "lease": status.lease,
        "rollouts": {r.alias: state_json(r) for r in status.rollouts},
    }, status.tracking_uri)


def _interrupted(status: ModelStatus) -> dict[str, Any] | None:
    found = status.interrupted
    if found is None:
        return None
    i = found.intent
    return {"kind": i.kind, "alias": i.alias, "from_version": i.source, "to_version": i.target,
            "state": found.state, "started_at": i.started_at, "holder": i.holder,
            "operation": i.operation, "finish": i.finish_hint(), "summary": found.summary}


def history_table(history: History) -> str:
    if not history.entries:
        return f"no decisions recorded for model {history.model}"
    return "\n".join(grid(
        ["WHEN", "KIND", "CANDIDATE", "COMPARED TO", "OUTCOME", "TRIGGERED BY", "REASON"],
        [[e.decided_at, e.kind, e.candidate_version, shown(e.compared_to), e.outcome,
          e.triggered_by, e.reason] for e in history.entries]))


def history_json(history: History) -> dict[str, Any]:
    return document("history", history.model, {
        "limit": history.limit,
        "decisions": [{"decided_at": e.decided_at, "kind": e.kind, "alias": e.alias,
                       "candidate_version": e.candidate_version, "compared_to": e.compared_to,
                       "outcome": e.outcome, "reason": e.reason,
                       "triggered_by": e.triggered_by, "policy": e.policy,
                       "policy_sha256": e.policy_sha256, "record_run_id": e.run_id}
                      for e in history.entries],
    }, history.tracking_uri)
