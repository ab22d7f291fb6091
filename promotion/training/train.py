"""Training candidates: a YAML config in, a registered model version tagged `challenger` out.

Everything that can be wrong with the input (the file, its YAML, its keys, the estimator, its
hyperparameters, the data source) is checked for *every* config before the first write to MLflow
(promotion.training.config), so a bad config leaves the registry exactly as it was. Then each
candidate is fitted under `mlflow.autolog()`, scored on a seeded holdout that every candidate
shares (promotion.training.data), logged with its signature and an input example and the
reference profile of its holdout inputs and predictions (promotion.training.profiling, for
`promote watch`), registered as a new version with lineage tags, and given the alias
`challenger`.

The run and the model are logged through MLflow's fluent API (mlflow.start_run, log_metrics,
log_model, autolog), which is training's own business; the registry is written through
promotion.registry. mlflow, scikit-learn and pandas are imported inside functions: `promote
--help` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from promotion.errors import ExitCode, redact
from promotion.registry import create_version, ensure_registered_model, set_alias
from promotion.registry.client import (
    apply_retry_defaults,
    connect,
    registry_errors,
    use_for_fluent_logging,
)
from promotion.training import lineage
from promotion.training.config import TrainConfig, build_estimator, load_configs
from promotion.training.data import PreparedData, holdout_metrics, prepare_data
from promotion.training.profiling import log_reference_profile

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHALLENGER = "challenger"
DATA_VALIDATED = "data_validated"
DATA_VALIDATION = "data_validation"  # "ok" or what was wrong, next to data_validated


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load `model` back: those it is made of.

    We trust exactly what we ourselves just produced (e.g. sklearn.tree._tree.Tree for forests),
    derived from the model rather than from a hand-kept list that drifts with scikit-learn.
    """
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


@dataclass(frozen=True)
class TrainResult:
    """One trained, registered candidate (promotion.report.training prints it)."""

    config: str  # the config path as given
    model: str
    version: str
    run_id: str
    experiment_id: str
    metrics: Mapping[str, float]  # the holdout metrics, in METRICS order
    data_validated: bool
    data_validation: str  # "ok" or what was wrong
    tags: Mapping[str, str] = field(default_factory=dict)  # lineage tags of run and version
    alias: str = CHALLENGER
    run_url: str | None = None  # the run in the MLflow UI, for a tracking server (redacted)
    profile: str | None = None  # the reference profile: "ok", or why the run has none

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model}/{self.version}"

    @property
    def data_sha256(self) -> str | None:
        """The fingerprint of the data the candidate was trained and scored on."""
        return self.tags.get(lineage.DATA_SHA256)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "model": self.model, "version": self.version,
                "alias": self.alias, "run_id": self.run_id, "experiment_id": self.experiment_id,
                "metrics": dict(self.metrics), "data_validated": self.data_validated,
                "data_validation": self.data_validation, "tags": dict(self.tags),
                "run_url": self.run_url, "profile": self.profile}


@dataclass(frozen=True)
class TrainReport:
    """Every candidate of one `promote train`, in order; training either succeeds or raises."""

    results: tuple[TrainResult, ...]
    return_code: ClassVar[int] = int(ExitCode.OK)


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


def _run_url(client: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    uri = str(client.tracking_uri)
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
    use_for_fluent_logging(client)  # the run and the model go to the client's server
    with registry_errors(f"training {config.path} into {config.model!r}"):
        experiment = mlflow.set_experiment(config.experiment)
        _enable_autolog()
        try:
            with mlflow.start_run(run_name=config.name, tags=run_tags,
                                  description=config.description or None) as run:
                estimator = build_estimator(config)
                estimator.fit(h.x_train, h.y_train)
                predicted = estimator.predict(h.x_test)
                metrics = holdout_metrics(h.y_test, predicted)
                mlflow.log_metrics(metrics)
                profile = log_reference_profile(h.x_test, predicted, data=config.data)
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
                ensure_registered_model(client, config.model)
                version = create_version(
                    client, config.model, source=info.model_uri, run_id=run.info.run_id,
                    tags=version_tags, description=config.description or None,
                    model_id=info.model_id)
        finally:
            _disable_autolog()
    set_alias(client, config.model, CHALLENGER, str(version.version))
    return TrainResult(config=config.path, model=config.model, version=str(version.version),
                       run_id=run.info.run_id, experiment_id=experiment.experiment_id,
                       metrics=metrics, data_validated=data.check.ok,
                       data_validation=data.check.summary, tags=tags, profile=profile,
                       run_url=_run_url(client, experiment.experiment_id, run.info.run_id))


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
