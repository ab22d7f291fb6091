"""The decision record: tags on the candidate version, and a run in a decisions experiment.

The version tags answer "what was last decided about this version" (`promote status`); the run
holds the full report (JSON, Markdown, chart) and carries the searchable fields as run tags, so
`promote history` is one `search_runs` query, however many decisions exist.

Runs are matched to a model by `promotion.model_key` (a digest of the model name) rather than by
the name itself: MLflow filter strings have no escape character, and a name may hold both quote
characters.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion.clientlib import registry_errors
from promotion.errors import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.chart import ChartRow

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
            server = env.get("GITHUB_SERVER_URL", "https://github.com")
            repo, run = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
            url = f"{server}/{repo}/actions/runs/{run}" if repo and run else None
            return cls(actor=env.get("GITHUB_ACTOR", "unknown"),
                       event=env.get("GITHUB_EVENT_NAME", "unknown"), github=True,
                       sha=env.get("GITHUB_SHA") or None, run_url=url)
        return cls(actor=_local_user(), event="command line")

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


def _local_user() -> str:
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

    def version_tags(self, trigger: Trigger, record_run: str | None) -> dict[str, str]:
        """The tags that go on the candidate version (the decision tag is written separately)."""
        tags = {
            ALIAS: self.alias,
            COMPARED_TO: self.compared_to or NONE,
            DECIDED_AT: self.decided_at,
            REASON: _clip(self.reason),
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
        return tags

    @classmethod
    def from_run(cls, run: Any) -> Entry:
        t = run.data.tags
        compared = t.get(COMPARED_TO)
        return cls(kind=t.get(KIND, "gate"), model=t.get(MODEL, ""), alias=t.get(ALIAS, ""),
                   outcome=t.get(OUTCOME, "?"), candidate_version=t.get(CANDIDATE, "?"),
                   compared_to=None if compared in (None, NONE) else compared,
                   decided_at=t.get(DECIDED_AT) or _iso(run.info.start_time),
                   reason=t.get(REASON, ""), triggered_by=t.get(TRIGGERED_BY, ""),
                   policy=t.get(POLICY), policy_sha256=t.get(POLICY_SHA256),
                   eval_sha256=t.get(EVAL_SHA256), run_id=run.info.run_id)


def _clip(text: str) -> str:
    text = redact(text)
    return text if len(text) <= TAG_VALUE_LIMIT else text[: TAG_VALUE_LIMIT - 1] + "…"


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# The decisions experiment

_experiment_ids: dict[str, str] = {}  # tracking URI -> experiment id, for this process


def experiment_id(client: MlflowClient, *, create: bool) -> str | None:
    """The decisions experiment's id; created on first use when `create` (safe under races)."""
    from mlflow.exceptions import MlflowException

    key = str(client.tracking_uri)
    if key in _experiment_ids:
        return _experiment_ids[key]
    with registry_errors(f"reading experiment {EXPERIMENT!r}"):
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is None and create:
            try:
                client.create_experiment(EXPERIMENT, tags={"promotion.purpose": "decision records"})
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise  # another gate created it first: fine, read it below
            found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return None
    _experiment_ids[key] = found.experiment_id
    return str(found.experiment_id)


@dataclass(frozen=True)
class RecordRun:
    run_id: str
    artifact_uri: str


def open_run(client: MlflowClient, entry: Entry, trigger: Trigger) -> RecordRun:
    """Create the record's run (status RUNNING) with the searchable tags."""
    exp = experiment_id(client, create=True)
    with registry_errors("creating the decision record run"):
        run = client.create_run(str(exp), tags=entry.run_tags(trigger))
    return RecordRun(str(run.info.run_id), str(run.info.artifact_uri))


def close_run(client: MlflowClient, run: RecordRun, entry: Entry, trigger: Trigger, *,
              report_json: str, report_md: str, retag: bool = True,
              chart: Sequence[ChartRow] = (), chart_title: str = "") -> None:
    """Write the final outcome (when `retag`), the report artifacts and chart; end the run."""
    from mlflow.entities import RunTag
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # MLflow prints a "View run" link to stdout when a run ends (and reads the run again to do
    # so); stdout belongs to the report, the link is in the report already.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with registry_errors("writing the decision record"), \
            tempfile.TemporaryDirectory(prefix="promote-record-") as tmp:
        folder = Path(tmp)
        (folder / "report.json").write_text(report_json, encoding="utf-8")
        (folder / "report.md").write_text(report_md, encoding="utf-8")
        if chart:
            from promotion.chart import render_chart

            render_chart(chart, chart_title, folder / "chart.png")
        if retag:
            client.log_batch(run.run_id,
                             tags=[RunTag(k, v) for k, v in entry.run_tags(trigger).items()])
        # The artifact location is known from create_run: no need to read the run again.
        repo = get_artifact_repository(run.artifact_uri, tracking_uri=client.tracking_uri)
        repo.log_artifacts(str(folder))
        client.set_terminated(run.run_id, "FINISHED" if entry.outcome != "conflict" else "FAILED")


def set_run_outcome(client: MlflowClient, run_id: str, outcome: str, reason: str) -> None:
    """Update a record run's outcome (used when a later gate resolves an interrupted one)."""
    from mlflow.entities import RunTag

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with registry_errors("updating a decision record"):
        client.log_batch(run_id, tags=[RunTag(OUTCOME, outcome), RunTag(REASON, _clip(reason))])
        client.set_terminated(run_id, "FINISHED")


def history(client: MlflowClient, model: str, limit: int) -> list[Entry]:
    """The model's decisions, newest first: one query on the decisions experiment."""
    exp = experiment_id(client, create=False)
    if exp is None:
        return []
    with registry_errors("reading the decision history"):
        runs = client.search_runs(
            [exp], filter_string=f"tags.`{MODEL_KEY}` = '{model_key(model)}'",
            order_by=["attributes.start_time DESC"], max_results=limit)
    return [Entry.from_run(run) for run in runs]
