"""Fair comparison speed: Promote's re-scoring vs MLflow's evaluate-and-validate path.

One run, the same data and the same two loaded models for both paths:
  - Promote: predict 10,000 rows with both versions, then rmse, mae and r2 for each with a
    2,000-resample paired bootstrap interval of every difference (promotion.evaluation.rescore,
    exactly what the gate runs after loading the models);
  - MLflow: `mlflow.models.evaluate` on both models (default regressor metrics, no intervals)
    + `mlflow.validate_evaluation_results`.
Model loading is left out of both: it is the same for both paths (and shown separately).

Goals: <= 1 s for Promote's part, >= 5x faster than MLflow's path. Runs against a throwaway local
SQLite store in a temporary directory; nothing is sent anywhere.

    .venv/bin/python bench/evaluation.py [--rows 10000] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROWS = 10_000
RESAMPLES = 2_000
GOAL_SECONDS = 1.0
GOAL_RATIO = 5.0
REPEATS = 3  # warm calls per path; the fastest counts (shared machines are noisy)
T = TypeVar("T")


def best_of(repeats: int, work: Callable[[], T]) -> tuple[float, T]:
    """The fastest of `repeats` timed calls (the least disturbed by other load) and its result."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        runs.append((time.perf_counter() - started, result))
    return min(runs, key=lambda run: run[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    with tempfile.TemporaryDirectory(prefix="promote-bench-") as tmp:
        return run(Path(tmp), args.rows, args.resamples)


def run(tmp: Path, rows: int, resamples: int) -> int:
    import mlflow
    import pandas as pd
    from mlflow.models.evaluation.validation import ModelValidationFailedException
    from sklearn.datasets import make_friedman1
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge

    from promotion.engine.facts import VersionFacts
    from promotion.evaluation import EvaluationSet, LoadedVersion, rescore
    from promotion.evaluation.bootstrap import METRICS
    from promotion.policy.model import Evaluation, Margin, MetricRule, Policy

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    mlflow.set_experiment("bench-evaluation")

    # Friedman #1: a non-linear target, where the forest (challenger) beats the linear champion.
    x, y = make_friedman1(n_samples=2 * rows, n_features=10, noise=1.0, random_state=0)
    columns = [f"x{i}" for i in range(x.shape[1])]
    train = pd.DataFrame(x[:rows], columns=columns)
    features = pd.DataFrame(x[rows:], columns=columns)
    target = y[rows:]
    champion = Ridge(alpha=1.0).fit(train, y[:rows])
    challenger = RandomForestRegressor(n_estimators=30, max_depth=8, random_state=0,
                                       n_jobs=1).fit(train, y[:rows])

    uris = []
    for model in (challenger, champion):
        trusted = ["sklearn.tree._tree.Tree"] if hasattr(model, "estimators_") else None
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", input_example=train.iloc[:2],
                                            skops_trusted_types=trusted,
                                            pip_requirements=["scikit-learn"])
        uris.append(info.model_uri)
    started = time.perf_counter()
    loaded = [mlflow.pyfunc.load_model(uri) for uri in uris]
    load_seconds = time.perf_counter() - started

    # --- Promote: what the gate runs once both versions are loaded.
    rules = tuple(MetricRule(name, METRICS[name].goal, min_improvement=Margin(0.0),
                             source="evaluation", significant=True)
                  for name in ("rmse", "mae", "r2"))
    policy = Policy(path="bench", sha256="", model="bench", metrics=rules,
                    evaluation=Evaluation(data="bench.csv", target="target", resamples=resamples))
    data = EvaluationSet(features, target, sha256="", source="bench")
    cand = LoadedVersion(VersionFacts("bench", "2", None), loaded[0], 0)
    prod = LoadedVersion(VersionFacts("bench", "1", None), loaded[1], 0)
    started = time.perf_counter()
    rescore(policy, data, cand, prod)  # the first call also pays for lazy imports
    promote_cold = time.perf_counter() - started
    promote_seconds, scored = best_of(REPEATS, lambda: rescore(policy, data, cand, prod))

    # --- MLflow: evaluate both models, then validate the candidate against the baseline.
    frame = features.assign(target=target)
    thresholds = {"root_mean_squared_error": mlflow.models.MetricThreshold(
        min_absolute_change=1e-9, greater_is_better=False)}

    def mlflow_path() -> None:
        results = []
        for model in loaded:
            with mlflow.start_run():
                results.append(mlflow.models.evaluate(model, frame, targets="target",
                                                      model_type="regressor",
                                                      evaluators=["default"]))
        with contextlib.suppress(ModelValidationFailedException):  # a rejection is as much
            mlflow.validate_evaluation_results(thresholds, results[0], results[1])  # work

    started = time.perf_counter()
    mlflow_path()  # the same courtesy: the first call pays for imports
    mlflow_cold = time.perf_counter() - started
    mlflow_seconds, _ = best_of(REPEATS, mlflow_path)

    ratio = mlflow_seconds / promote_seconds
    rmse = scored["rmse"]
    assert rmse.difference is not None and rmse.production is not None
    print(f"evaluation rows           {rows:,}")
    print(f"paired resamples          {resamples:,} (rmse, mae, r2; both versions)")
    print(f"model load (both, excl.)  {load_seconds:.3f} s")
    met = "met" if promote_seconds <= GOAL_SECONDS else "NOT met"
    print(f"promote rescore (best/{REPEATS}) {promote_seconds:.3f} s   "
          f"(goal <= {GOAL_SECONDS:g} s: {met})")
    print(f"mlflow path (best/{REPEATS})     {mlflow_seconds:.3f} s   (no intervals)")
    print(f"ratio                     {ratio:.1f}x faster   (goal >= {GOAL_RATIO:g}x: "
          f"{'met' if ratio >= GOAL_RATIO else 'NOT met'})")
    print(f"first calls (imports)     promote {promote_cold:.3f} s, mlflow {mlflow_cold:.3f} s "
          f"(ratio {mlflow_cold / promote_cold:.1f}x)")
    print(f"rmse difference           {rmse.candidate - rmse.production:+.3f} "
          f"[{rmse.difference.low:+.3f}, {rmse.difference.high:+.3f}] at "
          f"{rmse.difference.confidence:.0%}")
    print(f"cpu count                 {os.cpu_count()}; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    # Figures, not a pass/fail test: speed is machine-dependent; the goals are printed above.
    return 0


if __name__ == "__main__":
    sys.exit(main())
