"""Fair comparison: re-score both versions on one pinned evaluation set, with intervals.

    data       the evaluation set: read, fingerprinted, checked
    versions   model versions: downloaded (through the registry layer), loaded, predictions checked
    rescore    the metrics of both versions with paired intervals, budgets, `evaluate`
    bootstrap  the metrics and the paired bootstrap, vectorised with numpy
    errors     errors at a key of the policy file
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promotion.evaluation.bootstrap import Outputs, score
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
    from promotion.evaluation.versions import LoadedVersion, call_predict, load_version, predict

# Where each name lives: loaded on first use (PEP 562), so importing the package imports
# neither numpy nor pandas; the gate imports it always and pays only when a policy re-scores.
_HOME = {
    "Outputs": "bootstrap",
    "score": "bootstrap",
    "MIN_ROWS": "data",
    "SKLEARN_PREFIX": "data",
    "EvaluationSet": "data",
    "canonical_csv": "data",
    "data_path": "data",
    "frame_sha256": "data",
    "load_evaluation_set": "data",
    "policy_error": "errors",
    "BYTES_PER_MB": "rescore",
    "LATENCY_BATCH_ROWS": "rescore",
    "LATENCY_REPEATS": "rescore",
    "LATENCY_WARMUP": "rescore",
    "check_task": "rescore",
    "evaluate": "rescore",
    "evaluation_metrics": "rescore",
    "measure_budgets": "rescore",
    "measure_latency": "rescore",
    "rescore": "rescore",
    "LoadedVersion": "versions",
    "call_predict": "versions",
    "load_version": "versions",
    "predict": "versions",
}

__all__ = [
    "BYTES_PER_MB",
    "LATENCY_BATCH_ROWS",
    "LATENCY_REPEATS",
    "LATENCY_WARMUP",
    "MIN_ROWS",
    "SKLEARN_PREFIX",
    "EvaluationSet",
    "LoadedVersion",
    "Outputs",
    "call_predict",
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
    "score",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_HOME[name]}")
    # Every name of that module at once: `rescore` is then the function, as it was before the
    # submodule of the same name was imported.
    globals().update({n: getattr(module, n) for n, home in _HOME.items() if home == _HOME[name]})
    return globals()[name]
