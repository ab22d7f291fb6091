"""Training candidates: configs, data, lineage, and registering new versions.

    config   the YAML config format and its validation (every problem at once), the estimator
    data     data sources, their validation, the shared holdout, the holdout metrics
    train    the runs: fit under autolog, log, register, alias `challenger`
    lineage  git commit and branch, CI run, fingerprints of data and config
"""

from __future__ import annotations

from promotion.training import lineage
from promotion.training.config import (
    ESTIMATORS,
    MAX_CONFIG_BYTES,
    ConfigError,
    TrainConfig,
    build_estimator,
    load_config,
    load_configs,
    validate_hyperparameters,
)
from promotion.training.data import (
    DATASETS,
    METRICS,
    DataCheck,
    DatasetSpec,
    Holdout,
    PreparedData,
    holdout_metrics,
    load_dataset,
    prepare_data,
    split_holdout,
    validate_data,
)
from promotion.training.train import (
    CHALLENGER,
    DATA_VALIDATED,
    DATA_VALIDATION,
    TrainReport,
    TrainResult,
    train_candidates,
    train_one,
    trusted_types,
)

__all__ = [
    "CHALLENGER",
    "DATASETS",
    "DATA_VALIDATED",
    "DATA_VALIDATION",
    "ESTIMATORS",
    "MAX_CONFIG_BYTES",
    "METRICS",
    "ConfigError",
    "DataCheck",
    "DatasetSpec",
    "Holdout",
    "PreparedData",
    "TrainConfig",
    "TrainReport",
    "TrainResult",
    "build_estimator",
    "holdout_metrics",
    "lineage",
    "load_config",
    "load_configs",
    "load_dataset",
    "prepare_data",
    "split_holdout",
    "train_candidates",
    "train_one",
    "trusted_types",
    "validate_data",
    "validate_hyperparameters",
]
