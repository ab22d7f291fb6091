"""Decision records in MLflow: runs in the `promotion-decisions` experiment.

What a record says (its tags, `Entry`, `Trigger`) is defined in promotion.engine.records; this
module only writes and reads it. It uploads the report files it is given and draws nothing.
`promote history` is one `search_runs` query on the experiment, however many decisions exist.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion.engine.records import (
    EXPERIMENT,
    MODEL_KEY,
    OPERATION,
    OUTCOME,
    REASON,
    Entry,
    Trigger,
    clip,
    model_key,
    one_per_operation,
)
from promotion.registry.client import registry_errors
from promotion.registry.internals import artifact_repository

if TYPE_CHECKING:
    from mlflow import MlflowClient

# What became of a decision's events (promotion.notify), on its record run.
EVENTS_TAG = "promotion.events"  # "delivered to 2 of 2 endpoints", or which failed and why
NOTIFIED_TAG = "promotion.notified"  # "notified 2 of 2 targets", or which failed and why
DUPLICATE_ALLOWANCE = 10  # extra rows read so that hiding duplicates still fills `limit`
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
              files: Mapping[str, bytes], retag: bool = True) -> None:
    """Write the final outcome (when `retag`), upload `files` (name -> bytes), end the run."""
    from mlflow.entities import RunTag

    with registry_errors("writing the decision record"), \
            tempfile.TemporaryDirectory(prefix="promote-record-") as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if retag:
            client.log_batch(run.run_id,
                             tags=[RunTag(k, v) for k, v in entry.run_tags(trigger).items()])
        # The artifact location is known from create_run: no need to read the run again.
        artifact_repository(run.artifact_uri, str(client.tracking_uri)).log_artifacts(str(folder))
        client.set_terminated(run.run_id, "FINISHED" if entry.outcome != "conflict" else "FAILED")


def set_run_outcome(client: MlflowClient, run_id: str, outcome: str, reason: str, *,
                    failed: bool = False) -> None:
    """Update a record run's outcome and end it (used when a later command resolves an
    interrupted operation): FINISHED for a decision that stands, FAILED for an attempt that
    moved nothing."""
    from mlflow.entities import RunTag

    with registry_errors("updating a decision record"):
        client.log_batch(run_id, tags=[RunTag(OUTCOME, outcome), RunTag(REASON, clip(reason))])
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def tag_record(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Add tags to a decision's record run (finished or not): what its events became."""
    from mlflow.entities import RunTag

    with registry_errors("tagging the decision record"):
        client.log_batch(run_id, tags=[RunTag(k, clip(v)) for k, v in tags.items()])


@dataclass(frozen=True)
class RunningRecord:
    run_id: str
    outcome: str
    operation: str | None


def search_records(client: MlflowClient, model: str, clause: str | None, *, what: str,
                   order_by: str, limit: int) -> list[Any]:
    """The model's decision runs matching `clause` (one query; none before the first record)."""
    exp = experiment_id(client, create=False)
    if exp is None:
        return []
    condition = f"tags.`{MODEL_KEY}` = '{model_key(model)}'" + (f" AND {clause}" if clause
                                                               else "")
    with registry_errors(what):
        return list(client.search_runs([exp], filter_string=condition, order_by=[order_by],
                                       max_results=limit))


def running(client: MlflowClient, model: str) -> list[RunningRecord]:
    """The model's decision runs still RUNNING (left by interrupted commands, or duplicates)."""
    runs = search_records(client, model, "attributes.status = 'RUNNING'",
                          what="reading unfinished decision records",
                          order_by="attributes.start_time ASC", limit=100)
    return [RunningRecord(str(r.info.run_id), r.data.tags.get(OUTCOME, ""),
                          r.data.tags.get(OPERATION)) for r in runs]


def history(client: MlflowClient, model: str, limit: int) -> list[Entry]:
    """The model's decisions, newest first: one query on the decisions experiment."""
    runs = search_records(client, model, None, what="reading the decision history",
                          order_by="attributes.start_time DESC",
                          limit=limit + DUPLICATE_ALLOWANCE)
    return one_per_operation([Entry.from_run(run) for run in runs])[:limit]
