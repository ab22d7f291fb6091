"""Fair comparison: both versions re-scored on the policy's pinned evaluation set.

Logged metrics only compare fairly when both versions were scored on the same rows. For metrics
with `source: evaluation` the gate loads the candidate and the Production version
(`models:/<name>/<version>`), predicts the same rows with both, and computes each metric for
each, with a paired bootstrap interval of the difference (promotion.bootstrap). Budgets are
measured here too: prediction latency (p95 of repeated calls on a fixed batch, both versions
interleaved so they share the machine's conditions) and model size (artifact bytes).

The evaluation set is fingerprinted (sha256 of the file's bytes, parsed from those very bytes;
for `sklearn:<loader>` sources of a canonical CSV of the holdout) and the fingerprint travels
with every decision. Any problem with the set or with a model's ability to score it is an
InvalidInput naming the policy file, the line and the key; nothing is moved.

mlflow, pandas and scikit-learn are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promotion import bootstrap
from promotion.bootstrap import METRICS, Outputs, Task
from promotion.clientlib import registry_errors
from promotion.errors import InvalidInput, redact
from promotion.facts import BudgetMeasure, EvaluationFacts, Interval, ScoredMetric, VersionFacts
from promotion.policy import Evaluation, Policy

if TYPE_CHECKING:
    import pandas as pd

# Latency: p95 over LATENCY_REPEATS calls per version on the first LATENCY_BATCH_ROWS rows,
# after LATENCY_WARMUP untimed calls (first calls pay for lazy imports and caches).
LATENCY_BATCH_ROWS = 100
LATENCY_WARMUP = 3
LATENCY_REPEATS = 50
MIN_ROWS = 2
BYTES_PER_MB = 1_000_000
SKLEARN_PREFIX = "sklearn:"
_SHOWN_ROWS = 5  # rows with missing values listed in an error


@dataclass(frozen=True)
class EvaluationSet:
    """The pinned rows: model inputs, the true values, and the fingerprint of what was read."""

    features: pd.DataFrame
    target: np.ndarray
    sha256: str
    source: str  # the file path or sklearn:<loader>, as the policy names it

    @property
    def rows(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class LoadedVersion:
    """A model version loaded for scoring, with the size of its artifacts."""

    facts: VersionFacts
    model: Any  # mlflow.pyfunc.PyFuncModel
    size_bytes: int

    @property
    def label(self) -> str:
        return f"version {self.facts.version} of {self.facts.model!r}"


# --------------------------------------------------------------------------------------------
# Errors that point into the policy file


def policy_error(policy: Policy, key: tuple[str, ...], message: str) -> InvalidInput:
    """An InvalidInput at `key` of the policy file: `file:line:col: key: message`.

    The line comes from re-reading the policy file; if it cannot be read any more the message
    still names the file and the key.
    """
    from promotion.policyfile import Issue, PolicyError, format_key, read_document

    text = redact(message)
    try:
        with open(policy.path, "rb") as f:
            issue = read_document(f.read(), policy.path).issue(key, text, at_value=True)
    except (OSError, InvalidInput):
        issue = Issue(policy.path, 0, 0, format_key(key), text)
    return PolicyError([issue])


# --------------------------------------------------------------------------------------------
# The evaluation set


def load_evaluation_set(policy: Policy) -> EvaluationSet:
    """Read, fingerprint and check the policy's evaluation set."""
    evaluation = _section(policy)
    if evaluation.data.startswith(SKLEARN_PREFIX):
        frame, sha256 = _load_sklearn(policy, evaluation)
        lines = False
    else:
        frame, sha256 = _load_file(policy, evaluation)
        lines = evaluation.data.lower().endswith(".csv")
    return _split(policy, evaluation, frame, sha256, lines)


def _section(policy: Policy) -> Evaluation:
    if policy.evaluation is None:
        raise policy_error(policy, ("evaluation",),
                           "missing: source: evaluation metrics and budgets need an evaluation "
                           "section naming the data both versions are scored on")
    return policy.evaluation


def data_path(policy: Policy, evaluation: Evaluation) -> Path:
    """The data file: absolute as the policy loader resolves it; else relative to the policy."""
    path = Path(evaluation.data)
    return path if path.is_absolute() else Path(policy.path).resolve().parent / path


def _load_file(policy: Policy, evaluation: Evaluation) -> tuple[pd.DataFrame, str]:
    import pandas as pd

    key = ("evaluation", "data")
    path = data_path(policy, evaluation)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise policy_error(policy, key, f"expected a .csv or .parquet file, got {path.name!r}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise policy_error(policy, key, f"file not found: {path}") from None
    except OSError as exc:
        raise policy_error(policy, key, f"cannot read {path}: {exc.strerror or exc}") from None
    # Parse the bytes that were hashed: the fingerprint is of exactly what is scored.
    try:
        if suffix == ".csv":
            frame = pd.read_csv(io.BytesIO(data), float_precision="round_trip")
        else:
            frame = pd.read_parquet(io.BytesIO(data))
    except ImportError as exc:
        raise policy_error(policy, key, f"reading {path.name} needs a Parquet engine: "
                                        f"{_first_line(str(exc))}") from None
    except Exception as exc:  # pandas and pyarrow raise many types for a malformed file
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise policy_error(policy, key, f"cannot read {path} as {kind}: "
                                        f"{_first_line(str(exc)) or type(exc).__name__}") from None
    return frame, hashlib.sha256(data).hexdigest()


def _load_sklearn(policy: Policy, evaluation: Evaluation) -> tuple[pd.DataFrame, str]:
    """The same holdout the trainer scores on: train_test_split(test_size, random_state=seed)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    name = evaluation.data.removeprefix(SKLEARN_PREFIX)
    loader = getattr(datasets, name, None) if name.startswith("load_") else None
    if loader is None:
        raise policy_error(policy, ("evaluation", "data"),
                           f"unknown scikit-learn dataset {name!r}")
    test_size = evaluation.test_size if evaluation.test_size is not None else 0.25
    frame = loader(as_frame=True).frame
    _, holdout = train_test_split(frame, test_size=test_size, random_state=evaluation.seed)
    return holdout, frame_sha256(holdout)


def frame_sha256(frame: pd.DataFrame) -> str:
    """The fingerprint of a frame: sha256 of its canonical CSV.

    The canonical CSV (no index, `\\n` line ends, floats in round-trip precision) is also how a
    pinned file is written from such a frame, so a file and the source it was cut from share
    one fingerprint.
    """
    return hashlib.sha256(canonical_csv(frame)).hexdigest()


def canonical_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _split(policy: Policy, evaluation: Evaluation, frame: pd.DataFrame, sha256: str,
           lines: bool) -> EvaluationSet:
    source = evaluation.data
    if evaluation.target not in frame.columns:
        columns = ", ".join(map(str, list(frame.columns)[:20]))
        more = f", ... ({frame.shape[1]} in all)" if frame.shape[1] > 20 else ""
        raise policy_error(policy, ("evaluation", "target"),
                           f"no column {evaluation.target!r} in {source} "
                           f"(columns: {columns}{more})")
    if frame.shape[1] < 2:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{source} has no input columns besides the target")
    if len(frame) < MIN_ROWS:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{source} has {len(frame)} rows; a bootstrap needs at least {MIN_ROWS}")
    missing = frame.isna().any(axis=1).to_numpy()
    if missing.any():
        where = np.flatnonzero(missing)
        # CSV: the header is line 1, so data row i (0-based) is on line i + 2.
        unit, numbers = ("line", where + 2) if lines else ("row", where + 1)
        unit += "s" if len(where) > 1 else ""
        shown = ", ".join(str(int(i)) for i in numbers[:_SHOWN_ROWS])
        more = ", ..." if len(where) > _SHOWN_ROWS else ""
        raise policy_error(policy, ("evaluation", "data"),
                           f"{len(where)} of {len(frame)} rows of {source} have missing values "
                           f"({unit} {shown}{more}); a pinned evaluation set must be complete")
    features = frame.drop(columns=[evaluation.target]).reset_index(drop=True)
    target = frame[evaluation.target].to_numpy()
    return EvaluationSet(features, target, sha256, source)


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
# Model versions


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No artifact progress bars in the gate's output (unless the user asked for them)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ.setdefault(name, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def load_version(facts: VersionFacts, directory: Path) -> LoadedVersion:
    """Download `models:/<name>/<version>` into `directory`, measure it and load it."""
    import mlflow

    what = f"downloading version {facts.version} of model {facts.model!r}"
    directory.mkdir(parents=True, exist_ok=True)
    with _quiet_downloads(), registry_errors(what):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{facts.model}/{facts.version}", dst_path=str(directory))
    size = _artifact_bytes(Path(local))
    try:
        model = mlflow.pyfunc.load_model(local)
    except Exception as exc:  # any flavor can fail to load in its own way: all mean "unusable"
        raise InvalidInput(f"version {facts.version} of model {facts.model!r} cannot be loaded "
                           f"for evaluation: {_reason(exc)}") from None
    return LoadedVersion(facts, model, size)


def _artifact_bytes(root: Path) -> int:
    """The bytes of a downloaded model's artifacts, without the file MLflow adds on download."""
    from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME

    added = root / REGISTERED_MODEL_META_FILE_NAME
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p != added)


def _estimator(version: LoadedVersion) -> Any:
    """The object behind the pyfunc wrapper (a scikit-learn estimator), if it exposes one."""
    for unwrap in ("get_raw_model", "unwrap_python_model"):
        try:
            return getattr(version.model, unwrap)()
        except Exception:  # "not this kind of wrapper": try the next way
            continue
    return None


def predict(policy: Policy, version: LoadedVersion, data: EvaluationSet, metrics: Sequence[str],
            task: Task) -> Outputs:
    """One version's outputs on the evaluation set: what `metrics` need, checked."""
    raw = _call_predict(policy, version, data, data.features)
    estimator = _estimator(version)
    classes = getattr(estimator, "classes_", None)
    values = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 2 and task == "classification" and classes is not None \
            and values.shape[1] == len(classes):
        values = np.asarray(classes)[values.argmax(axis=1)]  # a pyfunc that returns probabilities
    where = ("metrics", metrics[0], "source")
    if values.ndim != 1 or len(values) != data.rows:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} returned predictions of shape {values.shape} for "
                           f"{data.rows} rows; expected one value per row")
    if task == "regression":
        if estimator is not None and hasattr(estimator, "predict_proba") and classes is not None:
            raise policy_error(policy, where, f"{metrics[0]} is a regression metric but "
                                              f"{version.label} is a classifier")
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):
            raise policy_error(policy, where, f"{version.label} predicts non-numeric values "
                                              f"({values.dtype}); {metrics[0]} needs numbers") \
                from None
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise policy_error(policy, ("evaluation", "data"),
                               f"{version.label} predicted NaN or infinity for {bad} of "
                               f"{data.rows} rows")
        return Outputs(values)
    from sklearn.utils.multiclass import type_of_target

    if values.dtype.kind == "f" and type_of_target(values) == "continuous":
        raise policy_error(policy, where, f"{version.label} predicts continuous values, not "
                                          f"class labels; {metrics[0]} needs a classifier")
    labels = set(np.unique(data.target).tolist())
    if classes is not None and not labels & set(np.asarray(classes).tolist()):
        # e.g. the file holds 0/1 and the model predicts "no"/"yes": every row would be a miss.
        raise policy_error(policy, ("evaluation", "target"),
                           f"none of the target's labels is a class of {version.label} "
                           f"(target: {_shown(sorted(labels, key=str))}; model: "
                           f"{_shown(list(np.asarray(classes).tolist()))})")
    probability_metrics = [m for m in metrics if METRICS[m].needs == "probabilities"]
    if not probability_metrics:
        return Outputs(values)
    name = probability_metrics[0]
    if estimator is None or not hasattr(estimator, "predict_proba") or classes is None:
        raise policy_error(policy, ("metrics", name, "source"),
                           f"{name} needs class probabilities but {version.label} has no "
                           "predict_proba (a scikit-learn classifier has)")
    try:
        probabilities = np.asarray(estimator.predict_proba(data.features), dtype=np.float64)
    except Exception as exc:  # the model's own code: any failure means it cannot score this set
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} cannot give probabilities for {data.source}: "
                           f"{_reason(exc)}") from None
    if probabilities.shape != (data.rows, len(classes)):
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} returned probabilities of shape "
                           f"{probabilities.shape}; expected ({data.rows}, {len(classes)})")
    return Outputs(values, probabilities, np.asarray(classes))


def _call_predict(policy: Policy, version: LoadedVersion, data: EvaluationSet,
                  batch: pd.DataFrame) -> Any:
    try:
        return version.model.predict(batch)
    except Exception as exc:  # schema enforcement, sklearn's checks, a custom model's code
        expected = _input_names(version)
        hint = ""
        if expected:
            present = {str(c) for c in data.features.columns}
            missing = [c for c in expected if c not in present]
            if missing:
                hint = f" (missing columns: {', '.join(missing[:10])})"
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} cannot predict the columns of {data.source}: "
                           f"{_reason(exc)}{hint}") from None


def _input_names(version: LoadedVersion) -> list[str]:
    try:
        schema = version.model.metadata.get_input_schema()
        return [str(n) for n in schema.input_names()] if schema is not None else []
    except Exception:  # no signature, or a tensor-based one: no column names to compare
        return []


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
    evaluation = _section(policy)
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
            _call_predict(policy, version, data, batch)
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


def evaluate(policy: Policy, candidate: VersionFacts, production: VersionFacts | None
             ) -> EvaluationFacts:
    """Re-score the candidate and Production on the policy's evaluation set; measure budgets.

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
        cand = load_version(candidate, Path(tmp) / "candidate")
        prod: LoadedVersion | None = None
        if production is not None:
            same = (production.model, production.version) == (candidate.model, candidate.version)
            prod = cand if same else load_version(production, Path(tmp) / "production")
        scored = rescore(policy, data, cand, prod) if data is not None and metrics else {}
        budgets = measure_budgets(policy, data, cand, prod)
    return EvaluationFacts(data_sha256=data.sha256 if data else "",
                           rows=data.rows if data else 0, metrics=scored, budgets=budgets)


def _reason(exc: BaseException) -> str:
    """The useful part of a library's error: MLflow's schema errors end in `Error: <why>`."""
    text = str(exc)
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    return _first_line(text)[:300] or type(exc).__name__


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _shown(values: Sequence[Any], limit: int = 6) -> str:
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")
