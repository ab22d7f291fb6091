"""Fair comparison: both versions re-scored on the policy's pinned evaluation set.

Logged metrics only compare fairly when both versions were scored on the same rows. For metrics
with `source: evaluation` the gate loads the candidate and the Production version
(`models:/<name>/<version>`), predicts the same rows with both, and computes each metric for
each, with a paired bootstrap interval of the difference (promotion.evaluation.bootstrap).
Budgets are measured here too: prediction latency (p95 of repeated calls on a fixed batch, both
versions interleaved so they share the machine's conditions) and model size (artifact bytes).

The evaluation set is fingerprinted (sha256 of the file's bytes, parsed from those very bytes;
for `sklearn:<loader>` sources of a canonical CSV of the holdout) and the fingerprint travels
with every decision. Any problem with the set or with a model's ability to score it is an
InvalidInput naming the policy file, the line and the key; nothing is moved.

The work is split by concern: promotion.evaluation.data (the set), .versions (loading versions,
predicting), .errors (errors at a policy key); this module scores and measures budgets.
mlflow, pandas and scikit-learn are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from promotion.engine.facts import (
    BudgetMeasure,
    EvaluationFacts,
    Interval,
    ScoredMetric,
    VersionFacts,
)
from promotion.evaluation import bootstrap
from promotion.evaluation.bootstrap import METRICS, Outputs, Task
from promotion.evaluation.data import EvaluationSet, load_evaluation_set, section
from promotion.evaluation.errors import policy_error
from promotion.evaluation.versions import LoadedVersion, call_predict, load_version, predict
from promotion.policy.model import Policy

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Latency: p95 over LATENCY_REPEATS calls per version on the first LATENCY_BATCH_ROWS rows,
# after LATENCY_WARMUP untimed calls (first calls pay for lazy imports and caches).
LATENCY_BATCH_ROWS = 100
LATENCY_WARMUP = 3
LATENCY_REPEATS = 50
BYTES_PER_MB = 1_000_000


# --------------------------------------------------------------------------------------------
# Which metrics, for which task


def evaluation_metrics(policy: Policy) -> list[str]:
    """The metric names the policy re-scores, in policy order."""
    return [rule.name for rule in policy.metrics if rule.source == "evaluation"]


def check_task(policy: Policy, metrics: Sequence[str], data: EvaluationSet) -> Task | None:
    """The one task the metrics belong to; the target must suit it."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype
    from sklearn.utils.multiclass import type_of_target

    task: Task | None = None
    for name in metrics:
        spec = METRICS.get(name)
        if spec is None:
            raise policy_error(policy, ("metrics", name, "source"),
                               f"{name} cannot be computed on evaluation data "
                               f"(known: {', '.join(METRICS)})")
        if task is not None and spec.task != task:
            first = next(m for m in metrics if METRICS[m].task == task)
            raise policy_error(policy, ("metrics", name, "source"),
                               f"{name} is a {spec.task} metric but {first} is a {task} metric; "
                               "one evaluation set serves one kind of model")
        task = spec.task
    if task is None:
        return None
    target = data.target
    where = ("metrics", metrics[0], "source")
    column = f"evaluation.target {policy.evaluation.target!r}" if policy.evaluation else "target"
    if task == "regression" and (not is_numeric_dtype(target) or is_bool_dtype(target)):
        raise policy_error(policy, where, f"{metrics[0]} is a regression metric but {column} "
                                          f"holds labels ({target.dtype})")
    if task == "classification" and type_of_target(target) not in ("binary", "multiclass"):
        raise policy_error(policy, where, f"{metrics[0]} is a classification metric but {column} "
                                          "holds continuous values")
    return task


# --------------------------------------------------------------------------------------------
# Scoring and budgets


def rescore(policy: Policy, data: EvaluationSet, candidate: LoadedVersion,
            production: LoadedVersion | None) -> dict[str, ScoredMetric]:
    """Every `source: evaluation` metric for both versions, with the paired interval.

    This is the whole work after the models are loaded (what bench/evaluation.py times).
    """
    metrics = evaluation_metrics(policy)
    task = check_task(policy, metrics, data)
    if task is None:
        return {}
    evaluation = section(policy)
    cand = predict(policy, candidate, data, metrics, task)
    if production is None:
        values = _scores(policy, metrics, data, cand, candidate)
        return {m: ScoredMetric(m, values[m], None, None) for m in metrics}
    prod = cand if production is candidate else predict(policy, production, data, metrics, task)
    try:
        compared = bootstrap.compare(metrics, data.target, cand, prod,
                                     resamples=evaluation.resamples, seed=evaluation.seed,
                                     confidence=evaluation.confidence)
    except ValueError as exc:
        raise policy_error(policy, ("evaluation", "target"), str(exc)) from None
    return {m: ScoredMetric(m, c.candidate, c.production,
                            Interval(c.low, c.high, evaluation.confidence))
            for m, c in compared.items()}


def _scores(policy: Policy, metrics: Sequence[str], data: EvaluationSet, outputs: Outputs,
            version: LoadedVersion) -> dict[str, float]:
    try:
        return bootstrap.score(metrics, data.target, outputs)
    except ValueError as exc:
        raise policy_error(policy, ("evaluation", "target"),
                           f"{version.label}: {exc}") from None


def measure_latency(policy: Policy, data: EvaluationSet, versions: Sequence[LoadedVersion],
                    *, warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS
                    ) -> list[float]:
    """p95 prediction latency in ms of each version on the same fixed batch.

    Calls alternate between versions, in turn first and second, so that both see the same
    machine load and neither always runs right after the other; the garbage collector is paused
    while timing so that its pauses land on neither.
    """
    batch = data.features.iloc[:LATENCY_BATCH_ROWS]
    for version in versions:
        for _ in range(warmup):
            call_predict(policy, version, data, batch)
    timings: list[list[float]] = [[] for _ in versions]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            order = range(len(versions)) if repeat % 2 == 0 else reversed(range(len(versions)))
            for i in order:
                start = time.perf_counter_ns()
                versions[i].model.predict(batch)
                timings[i].append((time.perf_counter_ns() - start) / 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return [float(np.percentile(t, 95)) for t in timings]


def measure_budgets(policy: Policy, data: EvaluationSet | None, candidate: LoadedVersion,
                    production: LoadedVersion | None) -> dict[str, BudgetMeasure]:
    names = {budget.name for budget in policy.budgets}
    measures: dict[str, BudgetMeasure] = {}
    if "latency_p95_ms" in names:
        if data is None:
            raise policy_error(policy, ("budgets", "latency_p95_ms"),
                               "latency is measured on the evaluation data: add an evaluation "
                               "section")
        versions = [candidate] if production is None else [candidate, production]
        latency = measure_latency(policy, data, versions)
        measures["latency_p95_ms"] = BudgetMeasure(
            "latency_p95_ms", latency[0], latency[1] if production is not None else None)
    if "size_mb" in names:
        measures["size_mb"] = BudgetMeasure(
            "size_mb", candidate.size_bytes / BYTES_PER_MB,
            production.size_bytes / BYTES_PER_MB if production is not None else None)
    return measures


def evaluate(client: MlflowClient, policy: Policy, candidate: VersionFacts,
             production: VersionFacts | None) -> EvaluationFacts:
    """Re-score the candidate and Production on the policy's evaluation set; measure budgets.

    The versions are downloaded through `client`, by version number.
    The set is read and checked before any model is downloaded, so a bad `evaluation:` section
    fails fast. Raises InvalidInput (exit 2) for a bad set or a version that cannot score it,
    RegistryError (exit 3) when the registry cannot be read.
    """
    metrics = evaluation_metrics(policy)
    needs_data = bool(metrics) or any(b.name == "latency_p95_ms" for b in policy.budgets)
    data = load_evaluation_set(policy) if needs_data else None
    if data is not None:
        check_task(policy, metrics, data)
    if not metrics and not policy.budgets:
        return EvaluationFacts(data.sha256 if data else "", data.rows if data else 0)
    with tempfile.TemporaryDirectory(prefix="promote-evaluation-") as tmp:
        cand = load_version(client, candidate, Path(tmp) / "candidate")
        prod: LoadedVersion | None = None
        if production is not None:
            same = (production.model, production.version) == (candidate.model, candidate.version)
            prod = cand if same else load_version(client, production, Path(tmp) / "production")
        scored = rescore(policy, data, cand, prod) if data is not None and metrics else {}
        budgets = measure_budgets(policy, data, cand, prod)
    return EvaluationFacts(data_sha256=data.sha256 if data else "",
                           rows=data.rows if data else 0, metrics=scored, budgets=budgets)
