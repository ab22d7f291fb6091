"""The watch's measurements in MLflow: one run per watched version in `promotion-monitoring`.

Each `promote watch` logs its window's figures as metrics of the version's run, the window's end
as the metric timestamp and its Unix time in seconds as the step, so the MLflow UI draws every
signal of a version over time; the latest chart and window table are uploaded as artifacts. A
version's run is found by tags (model key and version), created on the first watch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from promotion.engine.records import MODEL, MODEL_KEY, model_key
from promotion.registry.client import registry_errors, unless_missing

if TYPE_CHECKING:
    from mlflow import MlflowClient

EXPERIMENT = "promotion-monitoring"
VERSION = "promotion.version"
_experiment_ids: dict[str, str] = {}
_KEY_CHARS = re.compile(r"[^\w\-. /]")  # what MLflow accepts in a metric name


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (a feature may be called anything): its characters only,
    and no part that a path would normalise away (MLflow refuses `a//b`, `a/`, `./a`)."""
    parts = [part.strip(" .") or "_" for part in _KEY_CHARS.sub("_", name).split("/")]
    return "/".join(parts)[:250]


def _experiment(client: MlflowClient) -> str:
    from mlflow.exceptions import MlflowException

    key = str(client.tracking_uri)
    if key in _experiment_ids:
        return _experiment_ids[key]
    with registry_errors(f"reading experiment {EXPERIMENT!r}"):
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            try:
                client.create_experiment(EXPERIMENT, tags={"promotion.purpose": "live monitoring"})
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(EXPERIMENT)
    assert found is not None
    _experiment_ids[key] = str(found.experiment_id)
    return _experiment_ids[key]


def find_run(client: MlflowClient, model: str, version: str) -> str | None:
    """The monitoring run of one version, or None before its first watch."""
    exp = _experiment(client)
    condition = (f"tags.`{MODEL_KEY}` = '{model_key(model)}' AND "
                 f"tags.`{VERSION}` = '{version}'")
    with registry_errors("reading the monitoring run"):
        runs = client.search_runs([exp], filter_string=condition,
                                  order_by=["attributes.start_time ASC"], max_results=1)
    return str(runs[0].info.run_id) if runs else None


def version_run(client: MlflowClient, model: str, version: str) -> str:
    """The version's monitoring run, created on first use."""
    found = find_run(client, model, version)
    if found is not None:
        return found
    with registry_errors("creating the monitoring run"):
        run = client.create_run(_experiment(client), run_name=f"watch {model} v{version}",
                                tags={MODEL: model, MODEL_KEY: model_key(model),
                                      VERSION: version})
    return str(run.info.run_id)


def log_window(client: MlflowClient, run_id: str, metrics: Mapping[str, float], *,
               at_seconds: float) -> None:
    """One window's figures, at the window's end (timestamp) and its Unix second (step)."""
    from mlflow.entities import Metric

    millis, step = int(at_seconds * 1000), int(at_seconds)
    batch = [Metric(metric_key(k), float(v), millis, step) for k, v in metrics.items()]
    with registry_errors("logging the watch's metrics"):
        for start in range(0, len(batch), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=batch[start:start + 1000])


def history(client: MlflowClient, run_id: str, keys: tuple[str, ...]
            ) -> dict[str, list[tuple[float, float]]]:
    """(Unix seconds, value) of each metric over time, oldest first."""
    out: dict[str, list[tuple[float, float]]] = {}
    with registry_errors("reading the monitoring history"):
        for key in keys:
            points = client.get_metric_history(run_id, metric_key(key))
            out[key] = sorted((p.timestamp / 1000, p.value) for p in points)
    return out


def upload(client: MlflowClient, run_id: str, files: Mapping[str, bytes],
           directory: str = "watch") -> None:
    """Files (name -> bytes) as artifacts of the run, under `directory`."""
    import tempfile
    from pathlib import Path

    with registry_errors("uploading the watch's report"), \
            tempfile.TemporaryDirectory(prefix="promote-watch-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, artifact_path=directory)


def run_exists(client: MlflowClient, run_id: str) -> bool:
    with registry_errors(f"reading run {run_id}"):
        return unless_missing(lambda: client.get_run(run_id)) is not None
