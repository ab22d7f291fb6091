"""Validated policy objects: immutable, fully checked, free of YAML and pydantic details.

These frozen dataclasses are the contract between the policy language (promotion.policy.yamlfile
and promotion.policy.schema, which parse and validate a file) and the engine
(promotion.engine.decision and friends), which never sees raw YAML. Importing this module must
stay cheap (no mlflow, no pydantic, no YAML).

A loaded `Policy` keeps where each key of its file was (`positions`, not part of its value), so a
problem found later, e.g. while reading its evaluation data, is reported at the right line
(`Policy.error`) without reading the file again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from promotion.policy.issues import Issue, Path, PolicyError, Positions, format_key

Goal = Literal["minimize", "maximize"]
Source = Literal["logged", "evaluation"]
WhenNoProduction = Literal["promote", "reject"]

DEFAULT_ALIAS = "Production"


def previous_alias(alias: str) -> str:
    """Where the version displaced from `alias` is kept for rollback."""
    return f"{alias}-previous"


@dataclass(frozen=True)
class Margin:
    """A margin against Production: absolute (`0.02`) or relative (`1%` -> value=0.01, relative)."""

    value: float  # >= 0; for relative margins a fraction (1% -> 0.01)
    relative: bool = False

    def amount(self, production_value: float) -> float:
        """The margin in metric units, given Production's value (relative: of |Production|)."""
        return self.value * abs(production_value) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class MetricRule:
    name: str
    goal: Goal
    min: float | None = None  # absolute bounds on the candidate, inclusive
    max: float | None = None
    min_improvement: Margin | None = None  # better than Production by at least this
    max_regression: Margin | None = None  # worse than Production by at most this
    source: Source = "logged"  # logged: the run's metric; evaluation: re-scored on evaluation.data
    significant: bool = False  # relative rules must hold at the confidence bound (evaluation only)

    @property
    def is_relative(self) -> bool:
        return self.min_improvement is not None or self.max_regression is not None


@dataclass(frozen=True)
class Evaluation:
    """A pinned evaluation set both versions are re-scored on."""

    data: str  # absolute path of a CSV/Parquet file, or "sklearn:<loader>"
    target: str
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    test_size: float | None = None  # only for sklearn:<loader> sources: the seeded holdout share


@dataclass(frozen=True)
class Budget:
    """An operational budget: `latency_p95_ms` or `size_mb`; lower is always better."""

    name: Literal["latency_p95_ms", "size_mb"]
    max: float | None = None  # absolute ceiling on the candidate
    max_increase: Margin | None = None  # vs Production: may grow by at most this


WATCH_SIGNALS = ("error_rate", "latency_p95_ms", "prediction_psi", "feature_psi",
                 "prediction_ks", "feature_ks")
MINIMIZED = ("rmse", "mae", "log_loss")  # the other live metrics are maximised


@dataclass(frozen=True)
class WatchRule:
    """One rule of a `watch:` block, on a live signal or on a live quality metric.

    `max`/`min` are absolute; `max_increase` (signals) and `max_regression` (quality) compare with a
    reference: the displaced version's recent traffic for latency and errors, the version's
    offline value (or, with against: previous, the displaced version live) for quality.
    """

    name: str  # one of WATCH_SIGNALS, or a live metric (rmse, accuracy, ...)
    max: float | None = None
    min: float | None = None
    max_increase: Margin | None = None
    max_regression: Margin | None = None
    against: Literal["offline", "previous"] = "offline"

    @property
    def is_quality(self) -> bool:
        return self.name not in WATCH_SIGNALS

    @property
    def goal(self) -> Goal:
        return "maximize" if self.is_quality and self.name not in MINIMIZED else "minimize"


@dataclass(frozen=True)
class Watch:
    """How a promoted version is watched live (promote watch)."""

    rules: tuple[WatchRule, ...]
    bake_seconds: float = 3600.0  # after a promotion, breaches roll back (on_breach: rollback)
    window_seconds: float = 900.0  # the traffic each watch judges: the last `window`
    min_requests: int = 100  # fewer requests in the window: insufficient data, never a breach
    min_labels: int = 30  # quality rules need this many labelled rows
    on_breach: Literal["rollback", "alert"] = "rollback"


RolloutMode = Literal["canary", "shadow"]


def canary_alias(alias: str) -> str:
    """The default alias a rollout of `alias` puts its candidate on."""
    return f"{alias}-canary"


@dataclass(frozen=True)
class Agreement:
    """Shadow mode: the share of mirrored rows on which the candidate agrees with Production.

    Two predictions agree when they are equal (class labels), or, for numbers, when they differ
    by at most `tolerance` (absolute, or relative to |Production's prediction|).
    """

    min: float  # a share in [0, 1]
    tolerance: Margin = field(default_factory=lambda: Margin(0.0))
    min_rows: int = 100  # fewer compared rows: insufficient data, never a breach


@dataclass(frozen=True)
class Rollout:
    """How a candidate that passed the gate earns the alias on live traffic (promote rollout).

    The gate points `alias` (the canary alias) at the candidate instead of the guarded alias;
    each step gives it `steps[i]` of the traffic (canary: answered by it; shadow: mirrored to
    it, answered by Production) for at least `step_after_seconds` and `min_requests` of its
    requests; every rule must pass on the step's window to advance, any breach aborts, and
    passing the last step promotes. `rules` are the watch rule language: `max_increase` and
    `max_regression` compare with Production in the same window (`against` is unused).
    """

    alias: str  # the canary alias (default: <guarded alias>-canary)
    rules: tuple[WatchRule, ...] = ()
    mode: RolloutMode = "canary"
    steps: tuple[float, ...] = (1.0,)  # shares in (0, 1], strictly increasing
    step_after_seconds: float = 1800.0
    min_requests: int = 500  # the candidate's requests in the step (served or mirrored)
    min_labels: int = 30  # quality rules need this many labelled rows of each version
    agreement: Agreement | None = None  # shadow mode only

    @property
    def previous_alias(self) -> str:
        return previous_alias(self.alias)


@dataclass(frozen=True)
class Candidate:
    """Which version to gate: the highest version number, a fixed version, or an alias."""

    kind: Literal["latest", "version", "alias"]
    value: str | None = None  # the version number or alias name

    @classmethod
    def parse(cls, text: str | int) -> Candidate:
        """`latest`, `7`, or `@challenger`. Raises ValueError with a user-facing message."""
        if isinstance(text, bool):
            raise ValueError("expected 'latest', a version number or '@<alias>'")
        if isinstance(text, int):
            if text < 1:
                raise ValueError(f"version numbers start at 1, got {text}")
            return cls("version", str(text))
        s = str(text).strip()
        if s == "latest":
            return cls("latest")
        if s.startswith("@") and len(s) > 1:
            return cls("alias", s[1:])
        if s.isdigit() and int(s) >= 1:
            return cls("version", str(int(s)))
        raise ValueError(f"expected 'latest', a version number or '@<alias>', got {s!r}")

    def __str__(self) -> str:
        return {"latest": "latest", "version": str(self.value), "alias": f"@{self.value}"}[
            self.kind
        ]


@dataclass(frozen=True)
class Policy:
    path: str  # as given (relative paths stay relative: it is printed and recorded)
    sha256: str  # of the file's bytes, recorded with every decision
    model: str
    metrics: tuple[MetricRule, ...]
    alias: str = DEFAULT_ALIAS
    candidate: Candidate = field(default_factory=lambda: Candidate("latest"))
    when_no_production: WhenNoProduction = "promote"
    require_tags: tuple[tuple[str, str], ...] = ()
    evaluation: Evaluation | None = None
    budgets: tuple[Budget, ...] = ()
    watch: Watch | None = None
    rollout: Rollout | None = None  # None: a pass moves the alias at once
    # Where each key and value of the file was; None for a policy built in code. Shared with the
    # document it was read from (not copied), and not part of the policy's value: two policies
    # with the same rules are equal however their files are laid out.
    positions: Positions | None = field(default=None, compare=False, repr=False)

    @property
    def previous_alias(self) -> str:
        """Where the displaced version is kept for rollback."""
        return previous_alias(self.alias)

    def issue(self, key: Path, message: str) -> Issue:
        """An Issue at the value of `key` as the file had it when loaded.

        A missing key falls back to its nearest ancestor; a policy built in code (no positions)
        gets a file-level issue (no line) that still names the key.
        """
        if self.positions is None:
            return Issue(self.path, 0, 0, format_key(key), message)
        line, col = self.positions.value(key)
        return Issue(self.path, line, col, format_key(key), message)

    def error(self, key: Path, message: str) -> PolicyError:
        """The PolicyError (exit code 2) for one problem at `key`, e.g. found while re-scoring."""
        return PolicyError([self.issue(key, message)])
