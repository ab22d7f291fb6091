"""Training configs: the YAML file format, its validation, and the estimator a config names.

A config is read by the policy language's reader (duplicate keys, unsafe tags and runaway aliases
are refused; every key keeps its position), then checked in full: its keys and types, the data
source, the estimator name and every hyperparameter, by scikit-learn's own constraints. Like a
policy, a config reports every problem at once, each at its file, line, column and key: one
ConfigError (exit 2) carries them all, ordered by position.

pydantic and scikit-learn are imported when a config is checked: `promote train --help` stays light.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from promotion.errors import InvalidInput
from promotion.policy.yamlfile import Document, Issue, PolicyError, read_document
from promotion.training.data import DATASETS, DEFAULT_SOURCE

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


class ConfigError(PolicyError):
    """Training configs are invalid: `.issues` holds every problem found, by file and position.

    The same error as for policy files (the same reader finds the same kinds of problems): the
    message is the first issue (and how many more), `.lines()` prints one line per issue.
    """


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


@functools.cache
def _schema() -> type[Any]:
    """The schema of train/candidates/*.yaml: a pydantic model, built (and pydantic imported) on
    first use."""
    from pydantic import BaseModel, ConfigDict, Field

    class Split(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        test_size: float = Field(gt=0, lt=1)
        seed: int = Field(ge=0, le=2**32 - 1)

    class ConfigFile(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        model: str = Field(min_length=1, max_length=256)
        experiment: str | None = Field(default=None, min_length=1)
        description: str = ""
        estimator: str
        params: dict[str, Any] = Field(default_factory=dict)
        data: str = DEFAULT_SOURCE
        split: Split

    return ConfigFile


def load_config(path: str | Path, *, model_name: str | None = None) -> TrainConfig:
    """Read and fully validate one config (estimator and hyperparameters included).

    `model_name` overrides the registered model the config names (and the experiment, when the
    config leaves it to default), so one set of configs can feed an isolated model.
    Raises ConfigError (exit 2) carrying every problem found, each naming file, line and key.
    """
    shown = str(path)
    data = _read(shown)
    try:
        document = read_document(data, shown, noun="training config",
                                 shape=f"a training config is {_KEYS}")
    except PolicyError as exc:
        raise ConfigError(exc.issues) from None
    if not isinstance(document.data, dict):
        raise _file_error(shown, f"expected {_KEYS}")
    spec, issues, accepted = _validate_schema(document)
    raw: dict[str, Any] = document.data
    source = raw.get("data", DEFAULT_SOURCE)
    if "data" in accepted and source not in DATASETS:
        issues.append(document.issue(("data",), f"unknown data source {source!r}; expected "
                                                f"one of: {', '.join(sorted(DATASETS))}"))
    split = raw.get("split")
    seed = split["seed"] if "split" in accepted and isinstance(split, dict) else 0
    params, more = _checked_params(raw.get("estimator") if "estimator" in accepted else None,
                                   raw.get("params", {}) if "params" in accepted else {},
                                   seed, document)
    if issues or more:
        raise ConfigError([*issues, *more])
    model = model_name or spec.model
    return TrainConfig(
        path=shown, sha256=hashlib.sha256(data).hexdigest(), model=model,
        experiment=spec.experiment or model, estimator=spec.estimator, params=params,
        data=spec.data, test_size=spec.split.test_size, seed=spec.split.seed,
        description=spec.description, declared_model=spec.model)


def _validate_schema(document: Document) -> tuple[Any, list[Issue], set[str]]:
    """The config as the schema reads it (None if it does not), every schema problem in
    pydantic's words at its key, and the top-level keys whose values the schema accepted (the
    later checks look only at those, so no problem is reported twice)."""
    from pydantic import ValidationError

    present = {*document.data, "data"}  # `data` has a default: it is there even when left out
    try:
        return _schema().model_validate(document.data), [], present
    except ValidationError as exc:
        # (promotion.policy.schema's translation is tied to the policy model: its "allowed keys"
        # hints walk PolicyModel's fields.)
        errors = exc.errors()
    rejected = {str(error["loc"][0]) for error in errors if error["loc"]}
    return (None, [document.issue(error["loc"], error["msg"]) for error in errors],
            present - rejected)


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
    return ConfigError([Issue(shown, 0, 0, "", message)])


def load_configs(paths: Iterable[str | Path], *, model_name: str | None = None
                 ) -> tuple[TrainConfig, ...]:
    """Validate every config before anything is trained: all of them are fine, or none runs.

    The problems of every config are reported together, config by config in the order given.
    """
    configs, issues = [], []
    for path in paths:
        try:
            configs.append(load_config(path, model_name=model_name))
        except ConfigError as exc:
            issues.extend(exc.issues)
    if issues:
        raise ConfigError(issues)
    if not configs:
        raise InvalidInput("no training config given")
    return tuple(configs)


# --------------------------------------------------------------------------------------------
# The estimator and its hyperparameters


def _estimator_class(name: str) -> type:
    module, _, cls = ESTIMATORS[name].rpartition(".")
    found: type = getattr(importlib.import_module(module), cls)
    return found


def _checked_params(estimator: Any, given: Any, seed: int, document: Document
                    ) -> tuple[dict[str, Any], list[Issue]]:
    """The effective hyperparameters, validated by scikit-learn itself, and every problem.

    `estimator` and `given` are as the schema accepted them (None, {}: nothing to check). A
    `random_state` the config leaves out is set to the split seed: an unseeded forest would make
    "same config, same data -> same metrics" false.
    """
    if estimator is None:
        return {}, []
    if estimator not in ESTIMATORS:
        return {}, [document.issue(("estimator",), f"unknown estimator {estimator!r}; expected "
                                                   f"one of: {', '.join(sorted(ESTIMATORS))}")]
    cls = _estimator_class(estimator)
    accepted = cls().get_params(deep=False)
    issues = []
    for key in given:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            issues.append(document.issue(
                ("params", key), f"{cls.__name__} has no hyperparameter {key!r}{hint}"))
    params = {key: value for key, value in given.items() if key in accepted}
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = seed
    # One hyperparameter at a time, the others at their defaults: scikit-learn stops at the
    # first bad value, and each value's constraint is its own (types and ranges).
    for key, value in params.items():
        try:
            validate_hyperparameters(cls(**{key: value}))
        except (ValueError, TypeError) as exc:
            issues.append(document.issue(("params", key), str(exc)))
    return params, issues


def validate_hyperparameters(estimator: Any) -> None:
    """scikit-learn's own check of an estimator's hyperparameters: the one `fit` runs first.

    Raises ValueError / TypeError (sklearn's InvalidParameterError is both) naming the parameter.

    Why a private method (`BaseEstimator._validate_params`): scikit-learn's public API checks
    hyperparameter values only inside `fit`, i.e. on data, after the training run has been
    opened in MLflow; a config must be refused before anything is written. `get_params` and
    `set_params` accept any value. tests/test_train.py fails loudly if an upgrade removes it;
    without it the values are still checked, by `fit`, only later.
    """
    validate = getattr(estimator, "_validate_params", None)
    if validate is not None:
        validate()


def build_estimator(config: TrainConfig) -> Any:
    """A fresh, unfitted estimator for a validated config."""
    return _estimator_class(config.estimator)(**config.params)
