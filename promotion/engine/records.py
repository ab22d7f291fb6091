"""What a decision record says: its tag names, the trigger, and the entry `history` reads back.

Pure values: the registry layer (promotion.registry.records) writes and reads them in MLflow, the
renderers print them, tests build them by hand. The version tags answer "what was last decided
about this version" (`promote status`); the record run carries the same fields as run tags, so
`promote history` is one query.

Runs are matched to a model by `promotion.model_key` (a digest of the model name) rather than by
the name itself: MLflow filter strings have no escape character, and a name may hold both quote
characters.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from promotion.errors import redact

EXPERIMENT = "promotion-decisions"
PREFIX = "promotion."

# Version tags
DECISION = "promotion.decision"  # promoted | rejected | inconclusive | conflict | pending | ...
POLICY = "promotion.policy"
POLICY_SHA256 = "promotion.policy_sha256"
COMPARED_TO = "promotion.compared_to"
DECIDED_AT = "promotion.decided_at"
REASON = "promotion.reason"
ALIAS = "promotion.alias"
RECORD_RUN = "promotion.record_run"
EVAL_SHA256 = "promotion.eval_sha256"
RESOLVED = "promotion.resolved"
GITHUB_SHA = "promotion.github.sha"
GITHUB_RUN_URL = "promotion.github.run_url"
GITHUB_ACTOR = "promotion.github.actor"
GITHUB_EVENT = "promotion.github.event"

# Run tags (in addition to the ones above that apply)
MODEL = "promotion.model"
MODEL_KEY = "promotion.model_key"
CANDIDATE = "promotion.candidate_version"
OUTCOME = "promotion.outcome"
KIND = "promotion.kind"  # gate | rollback
TRIGGERED_BY = "promotion.triggered_by"
OPERATION = "promotion.operation"  # the id of the operation (intent) a record run belongs to

NONE = "none"  # compared_to when no version held the alias
TAG_VALUE_LIMIT = 5000  # MLflow's limit for model version tag values


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_key(model: str) -> str:
    return hashlib.sha256(model.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Trigger:
    """Who or what asked for the decision."""

    actor: str
    event: str
    github: bool = False
    sha: str | None = None
    run_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Trigger:
        env = os.environ if env is None else env
        if env.get("GITHUB_ACTIONS") == "true":
            return cls(actor=env.get("GITHUB_ACTOR", "unknown"),
                       event=env.get("GITHUB_EVENT_NAME", "unknown"), github=True,
                       sha=env.get("GITHUB_SHA") or None, run_url=github_run_url(env))
        return cls(actor=local_user(), event="command line")

    def describe(self) -> str:
        if self.github:
            return f"{self.actor} via GitHub Actions ({self.event})"
        return f"{self.actor} ({self.event})"

    def tags(self) -> dict[str, str]:
        if not self.github:
            return {}
        found = {GITHUB_SHA: self.sha, GITHUB_RUN_URL: self.run_url, GITHUB_ACTOR: self.actor,
                 GITHUB_EVENT: self.event}
        return {k: v for k, v in found.items() if v}

    def as_dict(self) -> dict[str, Any]:
        return {"actor": self.actor, "event": self.event, "github_actions": self.github,
                "sha": self.sha, "run_url": self.run_url, "description": self.describe()}


def local_user() -> str:
    """Who runs this process, where: `user@host`."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers: any failure means "unknown"
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Entry:
    """What a decision record says, as the gate writes it and `history` reads it back."""

    kind: str  # gate | rollback
    model: str
    alias: str
    outcome: str
    candidate_version: str
    compared_to: str | None
    decided_at: str
    reason: str
    triggered_by: str
    policy: str | None = None
    policy_sha256: str | None = None
    eval_sha256: str | None = None
    run_id: str | None = None
    operation: str | None = None  # the write-ahead intent this record belongs to

    def version_tags(self, trigger: Trigger, record_run: str | None) -> dict[str, str]:
        """The tags that go on the candidate version (the decision tag is written separately)."""
        tags = {
            ALIAS: self.alias,
            COMPARED_TO: self.compared_to or NONE,
            DECIDED_AT: self.decided_at,
            REASON: clip(self.reason),
            **trigger.tags(),
        }
        if self.policy is not None:
            tags[POLICY] = self.policy
        if self.policy_sha256 is not None:
            tags[POLICY_SHA256] = self.policy_sha256
        if self.eval_sha256 is not None:
            tags[EVAL_SHA256] = self.eval_sha256
        if record_run is not None:
            tags[RECORD_RUN] = record_run
        return tags

    def run_tags(self, trigger: Trigger) -> dict[str, str]:
        tags = self.version_tags(trigger, None)
        tags.update({
            KIND: self.kind,
            MODEL: self.model,
            MODEL_KEY: model_key(self.model),
            CANDIDATE: self.candidate_version,
            OUTCOME: self.outcome,
            TRIGGERED_BY: trigger.describe(),
            "mlflow.user": trigger.actor,
            "mlflow.runName": f"{self.kind} {self.model} v{self.candidate_version}",
        })
        if self.operation is not None:
            tags[OPERATION] = self.operation
        return tags

    @classmethod
    def from_run(cls, run: Any) -> Entry:
        t = run.data.tags
        compared = t.get(COMPARED_TO)
        return cls(kind=t.get(KIND, "gate"), model=t.get(MODEL, ""), alias=t.get(ALIAS, ""),
                   outcome=t.get(OUTCOME, "?"), candidate_version=t.get(CANDIDATE, "?"),
                   compared_to=None if compared in (None, NONE) else compared,
                   decided_at=t.get(DECIDED_AT) or iso(run.info.start_time),
                   reason=t.get(REASON, ""), triggered_by=t.get(TRIGGERED_BY, ""),
                   policy=t.get(POLICY), policy_sha256=t.get(POLICY_SHA256),
                   eval_sha256=t.get(EVAL_SHA256), run_id=run.info.run_id,
                   operation=t.get(OPERATION))


def one_per_operation(entries: Sequence[Entry]) -> list[Entry]:
    """The entries with a duplicate of one operation left out (a record create retried after its
    answer was lost leaves a second run, still `pending`): of an operation's entries, the one
    that says how it ended is kept. Order is kept."""
    final: dict[str, str] = {}
    for e in entries:
        if e.operation and e.outcome != "pending":
            final.setdefault(e.operation, e.run_id or "")
    kept, seen = [], set()
    for e in entries:
        if e.operation and e.operation in final:
            if e.run_id != final[e.operation]:
                continue
        elif e.operation:
            if e.operation in seen:
                continue
            seen.add(e.operation)
        kept.append(e)
    return kept


def clip(text: str) -> str:
    text = redact(text)
    return text if len(text) <= TAG_VALUE_LIMIT else text[: TAG_VALUE_LIMIT - 1] + "…"


def iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def github_run_url(env: Mapping[str, str] | None = None) -> str | None:
    """The URL of the GitHub Actions run this process belongs to, or None outside Actions.

    The one reader of GitHub's run context: decision records and training lineage both use it.
    The attempt is part of the URL (a re-run is another page); credentials never are.
    """
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return None
    repository, run_id = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
    if not repository or not run_id:
        return None
    server = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
    url = f"{server}/{repository}/actions/runs/{run_id}"
    if env.get("GITHUB_RUN_ATTEMPT"):
        url += f"/attempts/{env['GITHUB_RUN_ATTEMPT']}"
    return redact(url)
