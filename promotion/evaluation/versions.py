"""Model versions for re-scoring: download by number, measure, load, and predict (checked).

Downloads go through the registry layer (promotion.registry.models) with the caller's client;
loading (`mlflow.pyfunc.load_model`) happens here. Whatever a model returns is checked against
what the policy's metrics need before anything is scored.

mlflow and scikit-learn are imported inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promotion.engine.facts import VersionFacts
from promotion.errors import InvalidInput
from promotion.evaluation.bootstrap import METRICS, Outputs, Task
from promotion.evaluation.data import EvaluationSet
from promotion.evaluation.errors import policy_error, reason
from promotion.policy.model import Policy
from promotion.registry.models import artifact_bytes, download_version

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient


@dataclass(frozen=True)
class LoadedVersion:
    """A model version loaded for scoring, with the size of its artifacts."""

    facts: VersionFacts
    model: Any  # mlflow.pyfunc.PyFuncModel
    size_bytes: int

    @property
    def label(self) -> str:
        return f"version {self.facts.version} of {self.facts.model!r}"


def load_version(client: MlflowClient, facts: VersionFacts, directory: Path) -> LoadedVersion:
    """Download `models:/<name>/<version>` into `directory`, measure it and load it."""
    import mlflow.pyfunc

    local = download_version(client, facts.model, facts.version, directory)
    size = artifact_bytes(local)
    try:
        model = mlflow.pyfunc.load_model(str(local))
    except Exception as exc:  # any flavor can fail to load in its own way: all mean "unusable"
        raise InvalidInput(f"version {facts.version} of model {facts.model!r} cannot be loaded "
                           f"for evaluation: {reason(exc)}") from None
    return LoadedVersion(facts, model, size)


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
    raw = call_predict(policy, version, data, data.features)
    estimator = _estimator(version)
    classes = getattr(estimator, "classes_", None)
    values = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 2 and task == "classification" and classes is not None \
            and values.shape[1] == len(classes):
        values = np.asarray(classes)[values.argmax(axis=1)]  # a pyfunc that returns probabilities
    if values.ndim != 1 or len(values) != data.rows:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} returned predictions of shape {values.shape} for "
                           f"{data.rows} rows; expected one value per row")
    if task == "regression":
        return _regression_outputs(policy, version, data, metrics, values, estimator, classes)
    return _classification_outputs(policy, version, data, metrics, values, estimator, classes)


def _regression_outputs(policy: Policy, version: LoadedVersion, data: EvaluationSet,
                        metrics: Sequence[str], values: np.ndarray, estimator: Any,
                        classes: Any) -> Outputs:
    """Predictions of a regressor: finite numbers, one per row."""
    where = ("metrics", metrics[0], "source")
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


def _classification_outputs(policy: Policy, version: LoadedVersion, data: EvaluationSet,
                            metrics: Sequence[str], values: np.ndarray, estimator: Any,
                            classes: Any) -> Outputs:
    """Labels of a classifier, of the target's kind; class probabilities when a metric needs
    them."""
    from sklearn.utils.multiclass import type_of_target

    where = ("metrics", metrics[0], "source")
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
                           f"{reason(exc)}") from None
    if probabilities.shape != (data.rows, len(classes)):
        raise policy_error(policy, ("evaluation", "data"),
                           f"{version.label} returned probabilities of shape "
                           f"{probabilities.shape}; expected ({data.rows}, {len(classes)})")
    return Outputs(values, probabilities, np.asarray(classes))


def call_predict(policy: Policy, version: LoadedVersion, data: EvaluationSet,
                 batch: pd.DataFrame) -> Any:
    """`version`'s predictions for `batch` (rows of `data`); a failure is an InvalidInput."""
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
                           f"{reason(exc)}{hint}") from None


def _input_names(version: LoadedVersion) -> list[str]:
    try:
        schema = version.model.metadata.get_input_schema()
        return [str(n) for n in schema.input_names()] if schema is not None else []
    except Exception:  # no signature, or a tensor-based one: no column names to compare
        return []


def _shown(values: Sequence[Any], limit: int = 6) -> str:
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")
