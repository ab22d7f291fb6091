"""Building registry states for gate tests, quickly, on the real test server.

A version here is what the gate reads: a registered model version whose run carries the metrics a
trainer would have logged. No model artifact is uploaded (the gate never loads one), which keeps a
version at three REST calls instead of a model log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from promotion.policy.model import Margin, MetricRule, Policy

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "promote-test-candidates"
NO_RUN_SOURCE = "s3://promote-test/no-run-model"  # a version that no run produced


_known: dict[str, str] = {}  # experiment ids, and models this process created, by server


def experiment_id(client) -> str:
    from mlflow.exceptions import MlflowException

    key = f"experiment {client.tracking_uri}"
    if key in _known:
        return _known[key]
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        try:
            return client.create_experiment(EXPERIMENT)
        except MlflowException:  # created concurrently by another test process
            found = client.get_experiment_by_name(EXPERIMENT)
    _known[key] = found.experiment_id
    return found.experiment_id


def ensure_model(client, model: str) -> None:
    from mlflow.exceptions import MlflowException

    key = f"model {client.tracking_uri} {model}"
    if key in _known:
        return
    try:
        client.create_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    _known[key] = model


def add_version(client, model: str, metrics: Mapping[str, float] | None = None,
                tags: Mapping[str, str] | None = None, *, run: bool = True) -> str:
    """Register a new version of `model` (created if needed) whose run logged `metrics`."""
    from mlflow.entities import Metric

    ensure_model(client, model)
    run_id = None
    source = NO_RUN_SOURCE
    if run:
        created = client.create_run(experiment_id(client))
        run_id = created.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0)
                                          for k, v in (metrics or {}).items()])
        client.update_run(run_id, status="FINISHED")  # set_terminated prints a link
        source = f"{created.info.artifact_uri}/model"
    mv = client.create_model_version(model, source, run_id=run_id, tags=dict(tags or {}),
                                     await_creation_for=0)
    return str(mv.version)


def rmse_policy(model: str, **overrides: Any) -> Policy:
    """A typical policy: rmse must improve by 1% and stay under 1.0."""
    values: dict[str, Any] = {
        "path": "policies/test.yaml", "sha256": "a" * 64, "model": model,
        "metrics": (MetricRule("rmse", "minimize", max=1.0,
                               min_improvement=Margin(0.01, relative=True)),),
    }
    values.update(overrides)
    return Policy(**values)


def write_policy(path: Path, model: str, body: Mapping[str, Any] | None = None) -> Path:
    """A policy file as a user writes it; `body` replaces the default rules."""
    document: dict[str, Any] = {
        "model": model,
        "alias": "Production",
        "candidate": "latest",
        "when_no_production": "promote",
        "metrics": {"rmse": {"goal": "minimize", "max": 1.0, "min_improvement": "1%"}},
    }
    document.update(body or {})
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def aliases(client, model: str) -> dict[str, str]:
    return dict(client.get_registered_model(model).aliases)


def decision_tag(client, model: str, version: str) -> str | None:
    return client.get_model_version(model, version).tags.get("promotion.decision")


def snapshot(client, model: str) -> dict[str, Any]:
    """Everything a gate could write for `model`: aliases, version tags, runs, decision runs."""
    from promotion.engine import records as record

    rm = client.get_registered_model(model)
    versions = client.search_model_versions(f"name = '{model}'")
    runs = {}
    for mv in versions:
        if mv.run_id:
            r = client.get_run(mv.run_id)
            runs[mv.run_id] = (r.info.status, r.info.end_time, dict(r.data.tags),
                               dict(r.data.metrics))
    decisions: list[Any] = []
    exp = client.get_experiment_by_name(record.EXPERIMENT)
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{record.MODEL_KEY}` = '{record.model_key(model)}'")
        decisions = sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.tags.items())))
                           for r in found)
    return {
        "aliases": dict(rm.aliases),
        "model_tags": dict(rm.tags),
        "versions": sorted((mv.version, mv.last_updated_timestamp, tuple(sorted(mv.tags.items())))
                           for mv in versions),
        "runs": runs,
        "decisions": decisions,
    }


def promote(args: Sequence[str], env: Mapping[str, str] | None = None,
            timeout: float = 120) -> subprocess.Popen:
    """Start `promote ARGS` as a separate process (the way CI runs it)."""
    return subprocess.Popen([sys.executable, "-m", "promotion", *args], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def decision_runs(client, model: str) -> list[tuple[str, str, str]]:
    """(kind, outcome, run status) of every decision record run of `model`, deleted ones aside."""
    from promotion.engine import records as record

    exp = client.get_experiment_by_name(record.EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{record.MODEL_KEY}` = "
                                            f"'{record.model_key(model)}'")
    return [(r.data.tags.get(record.KIND, ""), r.data.tags.get(record.OUTCOME, ""),
             r.info.status) for r in runs]
