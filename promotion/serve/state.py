"""What the alias follower holds and reports, as immutable values.

`Served` is one loaded version; `FollowerState` everything the endpoint reports about a model,
replaced as a whole on every change (promotion.serve.follower swaps it with one reference
assignment). Kept apart from the follower so that the modules that only read states (routing,
the canary, the documents, the loaders) need not import the thread that writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from promotion.engine.rollout import CanaryRoute, Route

# Where a served version's files came from: downloaded from the registry, or the local cache.
Source = Literal["registry", "cache"]


@dataclass(frozen=True)
class Served:
    """One loaded model version. Never mutated: a newer version replaces it as a whole."""

    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel (kept untyped so this module imports no mlflow)
    loaded_at: float  # epoch seconds
    load_seconds: float
    run_id: str | None = None
    input_schema: Any = None  # mlflow.types.Schema, or None when the model has no signature
    path: str | None = None  # local copy of the artifacts, removed once no longer needed
    model_dir: str | None = None  # the model's own directory inside `path` (its MLmodel)
    # Its estimated memory footprint: the bytes of its model directory on disk (None: unknown).
    footprint: int | None = None
    source: Source = "registry"  # where its files came from: downloaded, or the local cache


@dataclass(frozen=True)
class FollowError:
    """The last thing that went wrong while following the alias."""

    message: str
    at: float
    version: str | None = None  # None: the alias itself could not be resolved


@dataclass(frozen=True)
class CanaryState:
    """The canary the route names, as this endpoint holds it."""

    route: CanaryRoute
    served: Served | None = None  # None: loading, or benched because it could not be loaded
    benched: str | None = None  # why it gets no traffic for the rest of its step (a failed load)

    @property
    def status(self) -> str:
        """serving, loading or benched (by its load; the request guard benches on its own)."""
        if self.benched is not None:
            return "benched"
        return "serving" if self.served is not None else "loading"


# What made the follower check the alias: its thread's first check, the poll interval, or a
# registry event pushed to the endpoint (promotion.serve.hooks).
Trigger = Literal["start", "poll", "webhook"]
TRIGGERS: tuple[Trigger, ...] = ("start", "poll", "webhook")


@dataclass(frozen=True)
class SwapCounts:
    """Versions swapped in, by what made the follower look."""

    start: int = 0
    poll: int = 0
    webhook: int = 0

    def add(self, trigger: Trigger) -> SwapCounts:
        return replace(self, **{trigger: getattr(self, trigger) + 1})

    def as_dict(self) -> dict[str, int]:
        return {trigger: getattr(self, trigger) for trigger in TRIGGERS}


@dataclass(frozen=True)
class FollowEvent:
    """A registry event that asked the follower to check at once (an MLflow webhook)."""

    at: float  # when it arrived (epoch seconds)
    delivery_id: str
    alias: str
    action: str  # created, deleted
    version: str | None = None  # the version the alias was set to (None: deleted)


@dataclass(frozen=True)
class FollowerState:
    """Everything the endpoint reports, replaced as a whole on every change."""

    served: Served | None = None
    serving_since: float | None = None  # when `served` was swapped in (epoch seconds)
    alias_version: str | None = None  # what the alias pointed at on the last successful check
    checked_at: float | None = None  # last successful alias check
    last_error: FollowError | None = None
    swaps: int = 0  # versions swapped in after the first one
    load_failures: int = 0
    swaps_by_trigger: SwapCounts = SwapCounts()  # every version swapped in, the first included
    last_event: FollowEvent | None = None  # the last registry event that asked for a check
    canary: CanaryState | None = None  # the canary in force, if a rollout is
    note: str | None = None  # why a rollout state on the model was not followed
    checking_since: float | None = None  # when the check in progress began (None: none is)
    # When the registry stopped answering: the first failed check after the last good one (or
    # the failed read at start-up); None once a check succeeds.
    unreachable_since: float | None = None

    @property
    def in_sync(self) -> bool:
        """True when the served version is the one the alias points at."""
        return self.served is not None and self.served.version == self.alias_version


# -> the version the alias points at now, or the route: that version and the canary in force
Resolve = Callable[[], str | Route]
Load = Callable[[str], Served]  # version -> a completely loaded Served
Fallback = Callable[[], Served]  # -> the version kept in the local cache, loaded
Kept = Callable[[Served], None]  # told of every version swapped in (to keep it in the cache)

