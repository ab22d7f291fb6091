"""How `promote serve` starts each model: one registry read per model, then its follower.

Every model is read once, all at the same time (an unknown model, version or alias: exit 2 before
anything is served). When the registry cannot be read for a model (exit 3 before the local
cache existed), the model starts from the version the cache kept for it, if any: serving
proceeds, its health says `degraded` with `served_from: cache`, and its follower keeps polling
and swaps as soon as the registry answers. A model with nothing in the cache still ends the
start with exit 3, naming the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promotion.engine.rollout import Route
from promotion.errors import RegistryError
from promotion.registry import PARALLEL_REQUESTS
from promotion.registry.bounded import route_within, version_within
from promotion.serve.budget import MemoryBudget
from promotion.serve.cache import CacheEntry, ServeCache
from promotion.serve.follower import AliasFollower
from promotion.serve.loading import (
    pinned_resolver,
    probe_timeout,
    route_resolver,
    version_loader,
)
from promotion.serve.specs import ModelSpec
from promotion.serve.state import Served

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("promotion.serving")

# The start-up read of a model the cache holds nothing of is retried (with MLflow's backoff); a
# poll is not, nor the start-up read of a model that can start from the cache.
START_RETRIES = 2


@dataclass(frozen=True)
class Start:
    """How one model starts: from the registry, or (`unreachable_since` set) from the cache."""

    spec: ModelSpec
    unreachable_since: float | None = None


def _read(client: MlflowClient, spec: ModelSpec, timeout: float,
          retries: int) -> Route | Exception:
    try:
        if spec.version is not None:
            version_within(client, spec.name, spec.version, timeout=timeout, retries=retries)
            return Route(spec.version)
        assert spec.alias is not None
        return route_within(client, spec.name, spec.alias, timeout=timeout, retries=retries)
    except Exception as exc:  # judged below, in the order the specs were given
        return exc


def check_start(client: MlflowClient, specs: Sequence[ModelSpec], cache: ServeCache | None,
                timeout: float) -> list[Start]:
    """Read every model once (concurrently); how each starts. InvalidInput (2) for the first
    unknown model, version or alias; RegistryError (3) for the first model the registry cannot
    be read for and the cache holds nothing of. A model the cache holds a version of is read
    without retries: it can start at once from the cache."""
    kept = [cache.read(spec.name, spec.label) if cache is not None else None for spec in specs]
    with ThreadPoolExecutor(min(len(specs), PARALLEL_REQUESTS)) as pool:
        found = list(pool.map(
            lambda spec, entry: _read(client, spec, timeout, 0 if entry else START_RETRIES),
            specs, kept))
    for result in found:
        if isinstance(result, Exception) and not isinstance(result, RegistryError):
            raise result
    return [_start(spec, result, entry, cache)
            for spec, result, entry in zip(specs, found, kept, strict=True)]


def _start(spec: ModelSpec, result: Route | Exception, entry: CacheEntry | None,
           cache: ServeCache | None) -> Start:
    when = "on its first request" if spec.lazy else "now"
    if isinstance(result, Route):
        log.info("%s points at version %s; loading it %s", spec, result.version, when)
        _log_route(result)
        return Start(spec)
    if entry is None:
        where = f"under {cache.base}" if cache is not None else "(--cache-dir none)"
        raise RegistryError(f"{spec}: the registry cannot be read and there is no cached "
                            f"version of it {where}: {result}") from result
    log.warning("%s: the registry cannot be read (%s); starting from version %s in the local "
                "cache (cached %s), and following the registry again as soon as it answers",
                spec, result, entry.version, entry.cached_at)
    return Start(spec, unreachable_since=time.time())


def _log_route(route: Route) -> None:
    if route.canary is not None:
        canary = route.canary
        log.info("rollout in force: version %s on @%s (%s mode), step %d of %d, %g%% of "
                 "requests", canary.version, canary.alias, canary.mode, canary.step + 1,
                 canary.steps, canary.share * 100)
    elif route.note:
        log.warning("%s", route.note)


def follower_for(client: MlflowClient, start: Start, *, poll_interval: float, scratch: str,
                 cache: ServeCache | None, budget: MemoryBudget,
                 registry_timeout: float) -> AliasFollower:
    """The follower of one model, on the registry, the cache and the memory budget."""
    spec = start.spec
    probe, failed = probe_timeout(poll_interval), start.unreachable_since is not None
    if spec.version is not None:
        resolve = pinned_resolver(client, spec.name, spec.version, registry_timeout, probe,
                                  failed)
    else:
        assert spec.alias is not None
        resolve = route_resolver(client, spec.name, spec.alias, registry_timeout, probe, failed)

    def keep(served: Served) -> None:
        assert cache is not None
        cache.keep(spec.name, spec.label, served)

    return AliasFollower(
        spec.name, spec.label, poll_interval, resolve,
        version_loader(client, spec.name, scratch, budget.admit),
        fallback=cache.loader(spec.name, spec.label, budget.admit) if cache else None,
        kept=keep if cache is not None else None, lazy=spec.lazy, pinned=spec.pinned,
        unreachable_since=start.unreachable_since)
