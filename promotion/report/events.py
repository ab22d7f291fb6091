"""Decision events: the versioned JSON payload every decision is delivered as, its rendering for
people (a one-line title and a Markdown body), and the words of a delivery's outcome.

Pure: built from the frozen results (promotion.engine.results), or from the conflict and
incomplete errors that carry one; promotion.notify sends what this module builds. The payload
(schema_version 1, type `promote.decision`) is documented in docs/events.md and its JSON Schema is
docs/events.schema.json: fields may be added; renaming or removing one bumps schema_version.

No decision, no event: a dry run, a rollout step that waits (or finds no rollout), and a watch
window that is healthy or short of data give `None`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from promotion.engine.decision import RuleResult
from promotion.engine.results import (
    GateConflict,
    GateIncomplete,
    GateResult,
    RollbackConflict,
    RollbackIncomplete,
    RollbackResult,
    RolloutConflict,
    RolloutIncomplete,
    RolloutResult,
    WatchNotApplied,
    WatchResult,
)
from promotion.engine.watch import WatchCheck
from promotion.errors import ConflictError, FatalError, redact
from promotion.report.text import md, number, shown, version_or_none

SCHEMA_VERSION = 1
TYPE = "promote.decision"
KINDS = ("gate", "rollback", "watch", "rollout")
OUTCOMES = ("promoted", "canary", "rejected", "inconclusive", "already", "conflict", "rollback",
            "alert", "rollback-not-applied", "advanced", "aborted")
STATUSES = ("pass", "fail", "inconclusive", "breach", "insufficient")

Result = GateResult | RollbackResult | WatchResult | RolloutResult
# What a command hands over: a result, or an error that carries the result it recorded.
Subject = Result | GateConflict | GateIncomplete | RollbackConflict | RollbackIncomplete | \
    RolloutConflict | RolloutIncomplete | WatchNotApplied

_STEP_OUTCOME = {"advance": "advanced", "abort": "aborted", "promote": "promoted"}
_ICON = {"promoted": "✅", "canary": "🐤", "rejected": "❌", "inconclusive": "⚠️",
         "already": "✅", "conflict": "⛔", "rollback": "↩️", "alert": "🔔",
         "rollback-not-applied": "⛔", "advanced": "⏩", "aborted": "🛑"}


def payload(subject: Subject, *, event_id: str, now: str) -> dict[str, Any] | None:
    """The event of one decision, or None when there is no decision to tell (see the module).

    `now` (ISO 8601 UTC) is `occurred_at` when the result carries no decision time (a watch's
    alert); `event_id` is unique per event (a uuid4).
    """
    error = subject if isinstance(subject, FatalError) else None
    result: Result = subject.result if isinstance(subject, FatalError) else subject
    if result.dry_run:
        return None
    fields: dict[str, Any] | None
    if isinstance(result, GateResult):
        fields = _gate(result)
    elif isinstance(result, RollbackResult):
        fields = _rollback(result, conflict=isinstance(error, ConflictError))
    elif isinstance(result, WatchResult):
        fields = _watch(result, error)
    else:
        fields = _rollout(result, conflict=isinstance(error, RolloutConflict))
    if fields is None:
        return None
    reasons = [redact(r) for r in fields.pop("reasons")]
    if error is not None:
        reasons.insert(0, redact(str(error)))  # what the command says it stopped on
    trigger = result.trigger
    event = {
        "schema_version": SCHEMA_VERSION, "type": TYPE, "event_id": event_id,
        "occurred_at": fields.pop("occurred_at", None) or now,
        "model": fields.pop("model"), "alias": fields.pop("alias"),
        "guarded_alias": fields.pop("guarded_alias"), "kind": fields.pop("kind"),
        "outcome": fields.pop("outcome"),
        "summary": reasons[0] if reasons else "",
        "exit_code": int(error.exit_code) if error is not None else result.return_code,
        "applied": fields.pop("applied"),
        "candidate": fields.pop("candidate"),
        "previous_version": fields.pop("previous_version"),
        "policy": fields.pop("policy"),
        "reasons": reasons,
        "rules": fields.pop("rules"),
        "trigger": {"actor": trigger.actor, "event": trigger.event, "commit": trigger.sha,
                    "run_url": redact(trigger.run_url) if trigger.run_url else None,
                    "github_actions": trigger.github, "description": trigger.describe()},
        "record_run_id": result.record_run_id,
        "record_complete": not fields.get("missing"),
        "missing": [redact(m) for m in fields.pop("missing", ())],
        "tracking_uri": redact(result.tracking_uri),
    }
    assert not fields, f"unused event fields: {sorted(fields)}"
    return event


def _policy(result: GateResult | WatchResult | RolloutResult) -> dict[str, str]:
    return {"path": result.policy.path, "sha256": result.policy.sha256}


def _candidate(version: str, run_id: str | None = None,
               source: str | None = None) -> dict[str, Any]:
    return {"version": version, "run_id": run_id,
            "source": redact(source) if source else None}


def _gate(result: GateResult) -> dict[str, Any]:
    d, cand = result.decision, result.candidate
    return {"occurred_at": result.decided_at, "model": d.model,
            "alias": result.conflict_alias or result.moved_alias,
            "guarded_alias": result.policy.alias, "kind": "gate", "outcome": result.outcome,
            "applied": result.applied,
            "candidate": _candidate(cand.version, cand.run_id, cand.source),
            "previous_version": d.production_version, "policy": _policy(result),
            "reasons": list(d.reasons), "rules": [_rule_row(r) for r in d.rules],
            "missing": result.missing}


def _rollback(result: RollbackResult, *, conflict: bool) -> dict[str, Any]:
    moved = (f"@{result.alias} moved back from {version_or_none(result.displaced_version)} to "
             f"version {result.restored_version}")
    return {"occurred_at": result.decided_at, "model": result.model, "alias": result.alias,
            "guarded_alias": result.alias, "kind": result.kind,
            "outcome": "conflict" if conflict else "rollback", "applied": result.applied,
            "candidate": _candidate(result.restored_version),
            "previous_version": result.displaced_version, "policy": None,
            "reasons": [] if conflict else [result.completed or moved], "rules": [],
            "missing": result.missing}


def _watch(result: WatchResult, error: FatalError | None) -> dict[str, Any] | None:
    d = result.decision
    if d is None or d.outcome != "breach":
        return None
    policy = result.policy
    reasons = [f"breach of version {d.version}: {c.reason}" for c in d.breached]
    rolled = result.rollback
    if isinstance(error, WatchNotApplied):
        outcome = "conflict" if isinstance(error.cause, ConflictError) else \
            "rollback-not-applied"
    elif rolled is not None:
        outcome = "rollback"
        reasons.insert(0, f"rolled back from version {d.version} to version "
                          f"{rolled.restored_version}")
    else:
        outcome = "alert"
        reasons.insert(0, f"alert only, nothing moved: {d.why_not_rollback}")
    return {"occurred_at": rolled.decided_at if rolled else None, "model": policy.model,
            "alias": policy.alias, "guarded_alias": policy.alias, "kind": "watch",
            "outcome": outcome, "applied": bool(rolled and rolled.applied),
            "candidate": _candidate(rolled.restored_version if rolled else d.version),
            "previous_version": d.version, "policy": _policy(result), "reasons": reasons,
            "rules": [_check_row(c) for c in d.checks],
            "missing": rolled.missing if rolled else ()}


def _rollout(result: RolloutResult, *, conflict: bool) -> dict[str, Any] | None:
    state, d = result.state, result.decision
    outcome = "conflict" if conflict else _STEP_OUTCOME.get(result.action)
    if state is None or outcome is None:
        return None  # a step that waits, or no rollout in progress: nothing was decided
    why = result.abort_reason or (d.why if d is not None else result.note or "")
    return {"occurred_at": result.decided_at, "model": result.policy.model,
            "alias": result.moved_alias or state.canary_alias, "guarded_alias": state.alias,
            "kind": "rollout", "outcome": outcome, "applied": result.applied,
            "candidate": _candidate(state.version), "previous_version": result.production,
            "policy": _policy(result), "reasons": [why] if why else [],
            "rules": [_check_row(c) for c in d.checks] if d is not None else [],
            "missing": result.missing}


def _rule_row(rule: RuleResult) -> dict[str, Any]:
    status = "inconclusive" if rule.inconclusive else "pass" if rule.passed else "fail"
    return {"check": rule.label, "metric": rule.metric, "kind": rule.kind, "status": status,
            "value": number(rule.candidate), "reference": number(rule.production),
            "bound": number(rule.bound), "reason": rule.reason}


def _check_row(check: WatchCheck) -> dict[str, Any]:
    return {"check": check.label, "metric": check.rule, "kind": check.kind,
            "status": check.status, "value": number(check.live),
            "reference": number(check.reference), "bound": number(check.bound),
            "reason": check.reason}


def encode(event: dict[str, Any]) -> bytes:
    """The body that is signed and sent: compact JSON, UTF-8."""
    return json.dumps(event, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# For people


def _phrase(event: dict[str, Any]) -> str:
    cand = event["candidate"]["version"]
    was = version_or_none(event["previous_version"])
    return {
        "promoted": f"version {cand} promoted (was {was})",
        "canary": f"version {cand} rollout started (@{event['guarded_alias']} stays on {was})",
        "rejected": f"version {cand} rejected (stays on {was})",
        "inconclusive": f"version {cand} inconclusive (stays on {was})",
        "already": f"version {cand} already in place",
        "conflict": f"conflict on version {cand}, nothing moved",
        "rollback": f"rolled back to version {cand} (from {was})",
        "alert": f"breach on version {cand}, alert only",
        "rollback-not-applied": f"breach on version {was}, the rollback moved nothing",
        "advanced": f"rollout of version {cand} advanced",
        "aborted": f"rollout of version {cand} aborted (@{event['guarded_alias']} stays on "
                   f"{was})",
    }.get(event["outcome"], f"{event['outcome']} of version {cand}")


def title(event: dict[str, Any]) -> str:
    """One line: the outcome, what it is about, and where the alias stands."""
    icon = _ICON.get(event["outcome"], "")
    return (f"{icon} Promote {event['kind']}: {event['model']}@{event['alias']} "
            f"{_phrase(event)}").strip()


def markdown(event: dict[str, Any]) -> str:
    """The body of a notification: the why, the context, the rule table, a link to the run."""
    cand, trigger, policy = event["candidate"], event["trigger"], event["policy"]
    lines = [f"**{md(event['summary'] or event['outcome'])}**", ""]
    lines.append(f"- candidate: version {md(cand['version'])}"
                 + (f" (run `{md(cand['run_id'])}`)" if cand["run_id"] else ""))
    lines.append(f"- @{md(event['guarded_alias'])} before: "
                 f"{md(version_or_none(event['previous_version']))}")
    if policy is not None:
        lines.append(f"- policy: `{md(policy['path'])}` (sha256 `{policy['sha256'][:12]}`)")
    commit = f", commit `{trigger['commit'][:12]}`" if trigger["commit"] else ""
    lines.append(f"- triggered by {md(trigger['description'])}{commit}; exit code "
                 f"{event['exit_code']}")
    if event["record_run_id"]:
        lines.append(f"- record: run `{event['record_run_id']}` in experiment "
                     "`promotion-decisions`")
    if event["missing"]:
        lines.append(f"- record incomplete: {md('; '.join(event['missing']))}")
    if trigger["run_url"]:
        lines.append(f"- [the GitHub Actions run]({trigger['run_url']})")
    if len(event["reasons"]) > 1:
        lines += ["", "**Why:**", *[f"- {md(r)}" for r in event["reasons"][1:]]]
    if event["rules"]:
        lines += ["", "| check | value | reference | bound | result | reason |",
                  "|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(md(cell) for cell in (
            r["check"], shown(r["value"]), shown(r["reference"]), shown(r["bound"]),
            r["status"], r["reason"])) + " |" for r in event["rules"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# What a delivery did, in words (the command's stderr line and the record's tags)


@dataclass(frozen=True)
class Sent:
    """One endpoint's (or notification target's) delivery. `why` is already redacted."""

    index: int  # 1-based, in the order the variable lists them
    of: int
    scheme: str  # https, slack, ...: never more of the URL
    ok: bool
    attempts: int = 1
    why: str = ""


def _name(sent: Sent, noun: str) -> str:
    return f"{noun} {sent.index} of {sent.of} ({sent.scheme or 'no scheme'})"


def delivered(sent: Sequence[Sent], *, signed: bool) -> str:
    """`delivered to 2 of 2 endpoints`, with the failures (and retries) named."""
    ok = [s for s in sent if s.ok]
    text = f"delivered to {len(ok)} of {len(sent)} endpoints"
    notes = [f"endpoint {s.index} after {s.attempts} attempts" for s in ok if s.attempts > 1]
    if notes:
        text += f" ({', '.join(notes)})"
    if not signed:
        text += " (unsigned: PROMOTE_EVENTS_SECRET is not set)"
    return text + "".join(f", failed for {_name(s, 'endpoint')}: {s.why}" for s in sent
                          if not s.ok)


def notified(sent: Sequence[Sent]) -> str:
    """`notified 2 of 2 targets`, with the failures named."""
    ok = sum(1 for s in sent if s.ok)
    return f"notified {ok} of {len(sent)} targets" + "".join(
        f", failed for {_name(s, 'target')}: {s.why}" for s in sent if not s.ok)


def line(parts: Sequence[str]) -> str:
    """The one line a command prints (stderr) and the job summary gets."""
    return "events: " + "; ".join(parts)
