"""What the engine knows about a model version, gathered once from the registry (or evaluation).

These frozen values are the inputs of the pure decision function (promotion.engine.decision.decide):
the registry layer builds them, the engine reads them, tests build them by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class VersionFacts:
    """One model version as the gate sees it."""

    model: str
    version: str
    run_id: str | None  # None: the version was not produced by a run (rules needing metrics fail)
    metrics: Mapping[str, float] = field(default_factory=dict)  # the run's logged metrics
    tags: Mapping[str, str] = field(default_factory=dict)  # the model version's tags
    source: str | None = None  # the version's artifact source URI

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "tags", _frozen(self.tags))


@dataclass(frozen=True)
class Interval:
    """A confidence interval of (candidate - Production), from a paired bootstrap."""

    low: float
    high: float
    confidence: float


@dataclass(frozen=True)
class ScoredMetric:
    """A metric re-scored on the pinned evaluation set for both versions."""

    name: str
    candidate: float
    production: float | None  # None when there is no Production version
    difference: Interval | None  # of candidate - production; None without Production


@dataclass(frozen=True)
class BudgetMeasure:
    """An operational measure (lower is better) for both versions."""

    name: str  # latency_p95_ms | size_mb
    candidate: float
    production: float | None


@dataclass(frozen=True)
class EvaluationFacts:
    """Everything re-scoring produced: the inputs of `source: evaluation` rules and budgets."""

    data_sha256: str
    rows: int
    metrics: Mapping[str, ScoredMetric] = field(default_factory=dict)
    budgets: Mapping[str, BudgetMeasure] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "budgets", _frozen(self.budgets))
