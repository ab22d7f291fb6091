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
from typing import TYPE_CHECKING

from promotion.engine.records import (
    EXPERIMENT,
    MODEL_KEY,
    OUTCOME,
    REASON,
    Entry,
    Trigger,
    clip,
    model_key,
)
from promotion.registry.client import registry_errors
from promotion.registry.internals import artifact_repository

if TYPE_CHECKING:
    from mlflow import MlflowClient

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


def set_run_outcome(client: MlflowClient, run_id: str, outcome: str, reason: str) -> None:
    """Update a record run's outcome (used when a later gate resolves an interrupted one)."""
    from mlflow.entities import RunTag

    with registry_errors("updating a decision record"):
        client.log_batch(run_id, tags=[RunTag(OUTCOME, outcome), RunTag(REASON, clip(reason))])
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
