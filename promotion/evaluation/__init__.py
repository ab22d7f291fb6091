"""Fair comparison: re-score both versions on one pinned evaluation set, with intervals.

    data       the evaluation set: read, fingerprinted, checked
    versions   model versions: downloaded (through the registry layer), loaded, predictions checked
    rescore    the metrics of both versions with paired intervals, budgets, `evaluate`
    bootstrap  the metrics and the paired bootstrap, vectorised with numpy
    errors     errors at a key of the policy file
"""

from __future__ import annotations

from promotion.evaluation.data import (
    MIN_ROWS,
    SKLEARN_PREFIX,
    EvaluationSet,
    canonical_csv,
    data_path,
    frame_sha256,
    load_evaluation_set,
)
from promotion.evaluation.errors import policy_error
from promotion.evaluation.rescore import (
    BYTES_PER_MB,
    LATENCY_BATCH_ROWS,
    LATENCY_REPEATS,
    LATENCY_WARMUP,
    check_task,
    evaluate,
    evaluation_metrics,
    measure_budgets,
    measure_latency,
    rescore,
)
from promotion.evaluation.versions import LoadedVersion, load_version, predict

__all__ = [
    "BYTES_PER_MB",
    "LATENCY_BATCH_ROWS",
    "LATENCY_REPEATS",
    "LATENCY_WARMUP",
    "MIN_ROWS",
    "SKLEARN_PREFIX",
    "EvaluationSet",
    "LoadedVersion",
    "canonical_csv",
    "check_task",
    "data_path",
    "evaluate",
    "evaluation_metrics",
    "frame_sha256",
    "load_evaluation_set",
    "load_version",
    "measure_budgets",
    "measure_latency",
    "policy_error",
    "predict",
    "rescore",
]
