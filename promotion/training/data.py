"""Training data: the known sources, a small real validation, the shared holdout, the metrics.

Every candidate with the same (source, test_size, seed) is scored on exactly the same holdout
rows, so their logged metrics compare fairly. pandas, numpy and scikit-learn are imported inside
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from promotion.training import lineage

if TYPE_CHECKING:
    import pandas as pd

    from promotion.training.config import TrainConfig

METRICS = ("rmse", "mae", "r2")  # the keys the shipped policy gates on
DEFAULT_SOURCE = "sklearn:load_diabetes"


@dataclass(frozen=True)
class DatasetSpec:
    """A data source and what it must look like to count as validated."""

    source: str  # as written in configs: "sklearn:load_diabetes"
    loader: str  # function in sklearn.datasets
    columns: tuple[str, ...]
    rows: int


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "sklearn:load_diabetes": DatasetSpec(
        "sklearn:load_diabetes", "load_diabetes",
        ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"), 442),
})


@dataclass(frozen=True)
class Holdout:
    """A dataset split once by a seed; every candidate with the same seed sees the same rows."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass(frozen=True)
class DataCheck:
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)[:1000]


def load_dataset(source: str) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target of a known data source (see DATASETS)."""
    from sklearn import datasets

    loader: Callable[..., Any] = getattr(datasets, DATASETS[source].loader)
    features, target = loader(return_X_y=True, as_frame=True)
    return features, target


def validate_data(features: pd.DataFrame, target: pd.Series, spec: DatasetSpec) -> DataCheck:
    """A small, real check of the data a model is trained on: shape, columns, finite values."""
    import numpy as np
    import pandas as pd

    problems = []
    if tuple(str(c) for c in features.columns) != spec.columns:
        problems.append(f"columns {list(features.columns)} are not the expected "
                        f"{list(spec.columns)}")
    if len(features) != spec.rows:
        problems.append(f"{len(features)} rows, expected {spec.rows}")
    if len(target) != len(features):
        problems.append(f"{len(target)} target values for {len(features)} rows")
    numeric = features.select_dtypes(include="number")
    if numeric.shape[1] != features.shape[1]:
        other = [str(c) for c in features.columns if c not in numeric.columns]
        problems.append(f"non-numeric columns: {other}")
    bad = ~np.isfinite(numeric.to_numpy(dtype=float))
    if bad.any():
        cols = sorted({str(numeric.columns[j]) for j in np.nonzero(bad)[1]})
        problems.append(f"{int(bad.sum())} missing or infinite feature values (in {cols})")
    if not pd.api.types.is_numeric_dtype(target) or not np.isfinite(
            target.to_numpy(dtype=float, na_value=np.nan)).all():
        problems.append("target has missing, infinite or non-numeric values")
    return DataCheck(tuple(problems))


def split_holdout(features: pd.DataFrame, target: pd.Series, *, test_size: float, seed: int
                  ) -> Holdout:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_size, random_state=seed)
    return Holdout(x_train, x_test, y_train, y_test)


def holdout_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """rmse, mae and r2 of predictions on the holdout: the keys the policy gates on."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    return {"rmse": float(root_mean_squared_error(y_true, y_pred)),
            "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred))}


@dataclass(frozen=True)
class PreparedData:
    """A data source loaded, fingerprinted, validated and split for one (test_size, seed)."""

    source: str
    digest: str
    check: DataCheck
    holdout: Holdout


def prepare_data(config: TrainConfig) -> PreparedData:
    features, target = load_dataset(config.data)
    return PreparedData(
        source=config.data,
        digest=lineage.data_sha256(features, target),
        check=validate_data(features, target, DATASETS[config.data]),
        holdout=split_holdout(features, target, test_size=config.test_size, seed=config.seed))
