"""Training candidates: a YAML config in, a registered model version tagged `challenger` out.

Everything that can be wrong with the input (the file, its YAML, its keys, the estimator, its
hyperparameters, the data source) is checked for *every* config before the first write to MLflow,
so a bad config leaves the registry exactly as it was. Then each candidate is fitted under
`mlflow.autolog()`, scored on a seeded holdout that every candidate shares, logged with its
signature and an input example, registered as a new version with lineage tags, and given the
alias `challenger`.

mlflow, scikit-learn and pandas are imported inside functions: `promote --help` must stay fast.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promotion import lineage
from promotion.clientlib import apply_retry_defaults, connect, registry_errors
from promotion.errors import ExitCode, InvalidInput, redact
from promotion.policyfile import Document, Issue, PolicyError, read_document

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

CHALLENGER = "challenger"
METRICS = ("rmse", "mae", "r2")  # the keys the shipped policy gates on
DATA_VALIDATED = "data_validated"
DATA_VALIDATION = "data_validation"  # "ok" or what was wrong, next to data_validated
MAX_CONFIG_BYTES = 64 * 1024
_KEYS = "a mapping of keys (model, estimator, params, split, ...)"

# Config name -> scikit-learn class. Only regressors: every candidate answers the same question.
ESTIMATORS: Mapping[str, str] = MappingProxyType({
    "linear": "sklearn.linear_model.LinearRegression",
    "ridge": "sklearn.linear_model.Ridge",
    "lasso": "sklearn.linear_model.Lasso",
    "elastic_net": "sklearn.linear_model.ElasticNet",
    "random_forest": "sklearn.ensemble.RandomForestRegressor",
    "extra_trees": "sklearn.ensemble.ExtraTreesRegressor",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingRegressor",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingRegressor",
})


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


# --------------------------------------------------------------------------------------------
# Config: the file format and its validation


class ConfigError(InvalidInput):
    """A training config is invalid; the message names the file, line, column and key."""

    def __init__(self, issue: Issue) -> None:
        self.issue = issue
        super().__init__(str(issue))


class _Split(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    test_size: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0, le=2**32 - 1)


class _ConfigFile(BaseModel):
    """The schema of train/candidates/*.yaml."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    experiment: str | None = Field(default=None, min_length=1)
    description: str = ""
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    data: str = "sklearn:load_diabetes"
    split: _Split


@dataclass(frozen=True)
class TrainConfig:
    """One validated candidate config."""

    path: str  # as given; printed and recorded
    sha256: str  # of the file's bytes
    model: str  # the registered model the new version belongs to
    experiment: str
    estimator: str  # a key of ESTIMATORS
    params: Mapping[str, Any]  # effective hyperparameters (random_state filled in, see below)
    data: str  # a key of DATASETS
    test_size: float
    seed: int
    description: str = ""
    declared_model: str = ""  # the model the file names (differs from `model` when overridden)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def holdout_key(self) -> tuple[str, float, int]:
        """Configs with equal keys are scored on exactly the same holdout rows."""
        return (self.data, self.test_size, self.seed)

    @property
    def name(self) -> str:
        return Path(self.path).stem


def load_config(path: str | Path, *, model_name: str | None = None) -> TrainConfig:
    """Read and fully validate one config (estimator and hyperparameters included).

    `model_name` overrides the registered model the config names (and the experiment, when the
    config leaves it to default), so one set of configs can feed an isolated model.
    Raises ConfigError (exit 2) naming file, line and key.
    """
    shown = str(path)
    data = _read(shown)
    try:
        # The policy language's reader: duplicate keys, unsafe tags and runaway aliases are
        # refused, and every key keeps its position.
        document = read_document(data, shown, noun="training config",
                                 shape=f"a training config is {_KEYS}")
    except PolicyError as exc:
        raise ConfigError(exc.issues[0]) from None  # the first, as for any other config error
    if not isinstance(document.data, dict):
        raise _file_error(shown, f"expected {_KEYS}")
    try:
        spec = _ConfigFile.model_validate(document.data)
    except ValidationError as exc:
        # The first problem in pydantic's words, at its key. (promotion.schema's translation is
        # tied to the policy model: its "allowed keys" hints walk PolicyModel's fields.)
        first = exc.errors()[0]
        raise ConfigError(document.issue(first["loc"], first["msg"])) from None
    if spec.data not in DATASETS:
        raise ConfigError(document.issue(("data",), f"unknown data source {spec.data!r}; expected "
                                                    f"one of: {', '.join(sorted(DATASETS))}"))
    model = model_name or spec.model
    config = TrainConfig(
        path=shown, sha256=hashlib.sha256(data).hexdigest(), model=model,
        experiment=spec.experiment or model, estimator=spec.estimator, params=spec.params,
        data=spec.data, test_size=spec.split.test_size, seed=spec.split.seed,
        description=spec.description, declared_model=spec.model)
    params = _checked_params(config, document)
    return replace(config, params=params)


def _read(shown: str) -> bytes:
    try:
        data = Path(shown).read_bytes()
    except FileNotFoundError:
        raise _file_error(shown, "no such config file") from None
    except IsADirectoryError:
        raise _file_error(shown, "is a directory, expected a YAML config file") from None
    except OSError as exc:
        raise _file_error(shown, f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _file_error(shown, f"{len(data)} bytes, larger than a config can be "
                                 f"({MAX_CONFIG_BYTES} bytes)")
    return data


def _file_error(shown: str, message: str) -> ConfigError:
    """A problem of the file as a whole: `file: message`, no position."""
    return ConfigError(Issue(shown, 0, 0, "", message))


def load_configs(paths: Iterable[str | Path], *, model_name: str | None = None
                 ) -> tuple[TrainConfig, ...]:
    """Validate every config before anything is trained: all of them are fine, or none runs."""
    configs = tuple(load_config(p, model_name=model_name) for p in paths)
    if not configs:
        raise InvalidInput("no training config given")
    return configs


def _estimator_class(name: str) -> type:
    module, _, cls = ESTIMATORS[name].rpartition(".")
    found: type = getattr(importlib.import_module(module), cls)
    return found


def _checked_params(config: TrainConfig, document: Document) -> dict[str, Any]:
    """The effective hyperparameters, validated by scikit-learn itself.

    A `random_state` the config leaves out is set to the split seed: an unseeded forest would
    make "same config, same data -> same metrics" false.
    """
    if config.estimator not in ESTIMATORS:
        raise ConfigError(document.issue(("estimator",), f"unknown estimator {config.estimator!r}; "
                                         f"expected one of: {', '.join(sorted(ESTIMATORS))}"))
    cls = _estimator_class(config.estimator)
    accepted = cls().get_params(deep=False)
    for key in config.params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(document.issue(
                ("params", key), f"{cls.__name__} has no hyperparameter {key!r}{hint}"))
    params = dict(config.params)
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = config.seed
    estimator = cls(**params)
    # scikit-learn's own constraint check (types and ranges), the one `fit` runs first.
    validate = getattr(estimator, "_validate_params", None)
    if validate is not None:
        try:
            validate()
        except (ValueError, TypeError) as exc:
            named = re.search(r"The '(\w+)' parameter", str(exc))
            where = ("params", named.group(1)) if named else ("params",)
            raise ConfigError(document.issue(where, str(exc))) from None
    return params


def build_estimator(config: TrainConfig) -> Any:
    """A fresh, unfitted estimator for a validated config."""
    return _estimator_class(config.estimator)(**config.params)


# --------------------------------------------------------------------------------------------
# Data: loading, the shared holdout, validation, metrics


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


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load `model` back: those it is made of.

    We trust exactly what we ourselves just produced (e.g. sklearn.tree._tree.Tree for forests),
    derived from the model rather than from a hand-kept list that drifts with scikit-learn.
    """
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


# --------------------------------------------------------------------------------------------
# Training runs


@dataclass(frozen=True)
class TrainResult:
    """One trained, registered candidate."""

    config: str  # the config path as given
    model: str
    version: str
    run_id: str
    experiment_id: str
    metrics: Mapping[str, float]
    data_validated: bool
    data_validation: str  # "ok" or what was wrong
    tags: Mapping[str, str] = field(default_factory=dict)  # lineage tags of run and version
    alias: str = CHALLENGER
    run_url: str | None = None  # the run in the MLflow UI, for a tracking server (redacted)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.model, "version": self.version,
                "alias": self.alias, "run_id": self.run_id, "experiment_id": self.experiment_id,
                "metrics": dict(self.metrics), "data_validated": self.data_validated,
                "data_validation": self.data_validation, "tags": dict(self.tags),
                "run_url": self.run_url}

    def lines(self) -> list[str]:
        metrics = "  ".join(f"{k} {self.metrics[k]:.4f}" for k in METRICS if k in self.metrics)
        data = "validated" if self.data_validated else f"NOT validated ({self.data_validation})"
        lines = [f"{self.model} version {self.version} (@{self.alias})  from {self.config}",
                 f"  run      {self.run_id}",
                 f"  metrics  {metrics}  (holdout)",
                 f"  data     {data}, sha256 {self.tags.get(lineage.DATA_SHA256, '?')[:12]}"]
        if self.run_url:
            lines.append(f"  view     {self.run_url}")
        return lines


@dataclass(frozen=True)
class TrainReport:
    results: tuple[TrainResult, ...]

    @property
    def return_code(self) -> int:
        return int(ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        return {"trained": [r.to_dict() for r in self.results]}


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


def _requirements() -> list[str]:
    """The model's pip requirements: scikit-learn and skops pinned to the versions that saved it.

    Left to itself, MLflow infers them by re-importing the model in a subprocess (~8 s here per
    model) only to find what the sklearn flavor already knows; MLflow adds itself to the list.
    """
    import mlflow.sklearn

    return list(mlflow.sklearn.get_default_pip_requirements(include_skops=True))


def _enable_autolog() -> None:
    """The seed's `mlflow.autolog()`, minus what would duplicate or blur what we log ourselves.

    Autolog records the estimator's parameters, training-set metrics and the training dataset.
    The model is logged (and registered) explicitly below, with a signature, an input example and
    the skops trusted types, so autolog's own model logging is off; sklearn's post-training metric
    capture is off because the holdout metrics are logged under the policy's exact keys.
    """
    import mlflow

    mlflow.autolog(log_models=False, silent=True)
    mlflow.sklearn.autolog(log_models=False, log_post_training_metrics=False, silent=True)


def _disable_autolog() -> None:
    import mlflow

    # Autolog patches scikit-learn process-wide; leave nothing behind for the caller.
    mlflow.autolog(disable=True, silent=True)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model unless it exists (another trainer may create it concurrently)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _run_url(experiment_id: str, run_id: str) -> str | None:
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return redact(f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")


def train_one(config: TrainConfig, data: PreparedData, client: MlflowClient) -> TrainResult:
    """Fit, score, log, register and alias one candidate. The config must be validated."""
    import mlflow
    from mlflow.models import infer_signature

    tags = lineage.lineage_tags(config_path=config.path, config_sha256=config.sha256,
                                data_digest=data.digest)
    run_tags = {**tags, "estimator": config.estimator, "config": config.path}
    version_tags = {**tags, DATA_VALIDATED: "true" if data.check.ok else "false",
                    DATA_VALIDATION: data.check.summary, "estimator": config.estimator}
    h = data.holdout
    with registry_errors(f"training {config.path} into {config.model!r}"):
        experiment = mlflow.set_experiment(config.experiment)
        _enable_autolog()
        try:
            with mlflow.start_run(run_name=config.name, tags=run_tags,
                                  description=config.description or None) as run:
                estimator = build_estimator(config)
                estimator.fit(h.x_train, h.y_train)
                metrics = holdout_metrics(h.y_test, estimator.predict(h.x_test))
                mlflow.log_metrics(metrics)
                mlflow.log_params({"split_seed": config.seed, "test_size": config.test_size,
                                   "holdout_rows": len(h.y_test), "data": config.data})
                mlflow.log_artifact(config.path, artifact_path="config")
                info = mlflow.sklearn.log_model(
                    estimator, name="model",
                    signature=infer_signature(h.x_train, estimator.predict(h.x_train)),
                    input_example=h.x_train.head(5),
                    skops_trusted_types=trusted_types(estimator),
                    pip_requirements=_requirements())
                # Registered with its tags in one call, so no reader sees an untagged version.
                _ensure_registered_model(client, config.model)
                version = client.create_model_version(
                    config.model, source=info.model_uri, run_id=run.info.run_id,
                    tags=version_tags, description=config.description or None,
                    model_id=info.model_id)
        finally:
            _disable_autolog()
        client.set_registered_model_alias(config.model, CHALLENGER, version.version)
    return TrainResult(config=config.path, model=config.model, version=str(version.version),
                       run_id=run.info.run_id, experiment_id=experiment.experiment_id,
                       metrics=metrics, data_validated=data.check.ok,
                       data_validation=data.check.summary, tags=tags,
                       run_url=_run_url(experiment.experiment_id, run.info.run_id))


def train_candidates(paths: Iterable[str | Path], *, tracking_uri: str | None = None,
                     model_name: str | None = None,
                     progress: Callable[[TrainResult], None] | None = None) -> TrainReport:
    """Validate every config, then train and register each, in order.

    Nothing is written to MLflow unless every config is valid. `progress` is called after each
    candidate (the CLI prints as it goes).
    """
    apply_retry_defaults()  # before anything imports mlflow: telemetry off, no run links printed
    configs = load_configs(paths, model_name=model_name)
    prepared: dict[tuple[str, float, int], PreparedData] = {}
    for c in configs:
        if c.holdout_key not in prepared:
            prepared[c.holdout_key] = prepare_data(c)
    client = connect(tracking_uri)
    results = []
    for c in configs:
        result = train_one(c, prepared[c.holdout_key], client)
        results.append(result)
        if progress is not None:
            progress(result)
    return TrainReport(tuple(results))

