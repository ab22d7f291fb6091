"""Hold the model version an alias points at, and follow the alias as it moves.

MLflow's own `mlflow models serve -m models:/name@Production` resolves the alias once at start-up;
an endpoint built on it never notices a promotion or a rollback. `AliasFollower` polls the alias
instead. When it moves, the new version is loaded completely in the background and only then
swapped in, as one immutable `FollowerState` replaced by a single reference assignment. A request
reads that reference once and scores on the `Served` it found, so requests in flight finish on the
old model and no request ever sees a half-loaded one. A version that cannot be loaded never
replaces a working one: it is reported (state, log) and retried with a growing delay.

A rollout in progress (promotion.engine.rollout) comes with the alias: the resolver answers a
`Route`, the alias's version and the canary in force. The same thread loads the canary's version
after the alias's own, and holds it in the same state (`CanaryState`), so a request sees the
primary, the canary and its share as one consistent whole. A canary that cannot be loaded is
benched for its step (no traffic, not retried until the step changes) and never touches the
primary; a canary the route no longer names is dropped. A version already in memory (the canary
becoming the primary at promotion) is taken as it is, not loaded again.

Polling is the ground truth. A registry event pushed to the endpoint (an MLflow webhook,
`promotion.serve.hooks`) only brings the next check forward: `nudge()` wakes the thread, and any
number of nudges while a check runs make one more check, never a queue of them. An event that is
lost costs at most one poll interval.

Several models in one process (promotion.serve.fleet) each have a follower, and three more
behaviours serve them:
- lazy: a follower made with `lazy=True` only checks the alias until `activate()` (a model's
  first request); `unload()` drops what it serves to free memory (the memory budget), and it
  loads nothing more until activated again. A load that ends after an unload is discarded.
- pinned: a follower of one version (`pinned=True`) stops polling once that version is served
  and the registry has answered.
- the local cache: `fallback` loads the version kept on disk (promotion.serve.cache); it is used
  when nothing is served and the registry cannot be read, at once when the registry could not
  be read at start-up (`unreachable_since`). `kept` is told of every version swapped in, so the
  cache keeps it. The state says since when the registry has been unreachable, and whether a
  check is in progress (a check that hangs is reported by promotion.serve.documents).

The follower's inputs are plain callables (resolve the alias, load a version, load the cached
one), so its logic is tested without a registry; `promotion.serve.loading` builds the real ones
on the registry layer (`promotion.registry`), which does every registry request and download.
"""


from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from promotion.engine.rollout import CanaryRoute, Route
from promotion.errors import InvalidInput, redact
from promotion.serve.loading import alias_resolver, scratch_dir, version_loader, warm_up
from promotion.serve.state import (
    TRIGGERS,
    CanaryState,
    Fallback,
    FollowError,
    FollowerState,
    FollowEvent,
    Kept,
    Load,
    Resolve,
    Served,
    SwapCounts,
    Trigger,
)

log = logging.getLogger("promotion.serving")

# The names other modules and tests use from here (the states live in promotion.serve.state, the
# real resolve and load in promotion.serve.loading).
__all__ = ["MAX_RETRY_DELAY", "TRIGGERS", "AliasFollower", "CanaryState", "FollowError",
           "FollowEvent", "FollowerState", "Load", "Resolve", "Served", "SwapCounts", "Trigger",
           "alias_resolver", "scratch_dir", "version_loader", "warm_up"]

# A version that failed to load is retried after poll_interval * 2**(failures-1), capped: a broken
# version must not be downloaded again every few seconds, a transient failure must heal on its own.
MAX_RETRY_DELAY = 600.0
_WHY = {"start": "at start", "poll": "on a poll", "webhook": "on a webhook"}


@dataclass(frozen=True)
class _Failure:
    count: int
    retry_at: float


class AliasFollower:
    """Serve what `model@alias` points at; swap atomically when it moves.

    `refresh()` is one poll step; `start()` runs it every `poll_interval` seconds on a daemon
    thread until `stop()`, and at once when `nudge()`d. Only that thread loads and swaps; a
    nudge records the event that caused it; readers just read `state`. `unload()` (from any
    thread) empties the state in one step too.
    """

    def __init__(self, model: str, alias: str, poll_interval: float, resolve: Resolve,
                 load: Load, clock: Callable[[], float] = time.time, *,
                 fallback: Fallback | None = None, kept: Kept | None = None,
                 lazy: bool = False, pinned: bool = False,
                 unreachable_since: float | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.model = model
        self.alias = alias  # for a pinned version: v<VERSION>, which MLflow reserves
        self.poll_interval = poll_interval
        self.lazy = lazy
        self.pinned = pinned
        self.what = f"{model}/{alias.removeprefix('v')}" if pinned else f"{model}@{alias}"
        self._resolve = resolve
        self._load = load
        self._fallback = fallback
        self._kept = kept
        self._clock = clock
        self._state = FollowerState(unreachable_since=unreachable_since)
        self._failures: dict[str, _Failure] = {}
        self._retiring: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The follower thread writes the state; a nudge writes `last_event`, `unload` empties
        # what is served. Every write replaces the whole state under this lock.
        self._state_lock = threading.Lock()
        # A nudge sets `_wake` (and says why in `_nudged`); the thread clears both, under
        # `_wake_lock`, just before the refresh that answers them.
        self._wake = threading.Event()
        self._wake_lock = threading.Lock()
        self._nudged: Trigger | None = None
        # Lazy loading: whether to load at all, and a generation that every unload bumps (a
        # load that began before an unload is not swapped in after it).
        self._active = not lazy
        self._generation = 0
        self._dropped: list[Served] = []  # unloaded by another thread, retired by this one
        self._cache_first = unreachable_since is not None and fallback is not None
        self._fallback_tried = False

    @property
    def state(self) -> FollowerState:
        return self._state

    @property
    def active(self) -> bool:
        """Whether the follower loads what the alias points at (a lazy one: once activated)."""
        return self._active

    def _update(self, **changes: Any) -> None:
        with self._state_lock:
            self._state = replace(self._state, **changes)

    def _update_if(self, generation: int, **changes: Any) -> bool:
        """Apply `changes` unless the follower was unloaded since `generation` was read."""
        with self._state_lock:
            if generation != self._generation or not self._active:
                return False
            self._state = replace(self._state, **changes)
            return True

    def nudge(self, reason: Trigger = "webhook", event: FollowEvent | None = None) -> None:
        """Check the alias now instead of at the end of the poll interval (a registry event said
        it moved). Never blocks and never calls the registry: it wakes the follower thread.

        Nudges coalesce: any number of them while a refresh runs (or before it starts) lead to
        ONE further refresh, which reads the registry after the last of them arrived.
        """
        if reason not in TRIGGERS or reason == "start":
            raise ValueError(f"a nudge's reason is 'poll' or 'webhook', not {reason!r}")
        if event is not None:
            self._update(last_event=event)
        with self._wake_lock:
            self._nudged = reason
            self._wake.set()

    def activate(self) -> None:
        """Load what the alias points at (a lazy model's first request). Never blocks: it wakes
        the follower thread, whose load counts as a start."""
        with self._state_lock:
            if self._active:
                return
            self._active = True
            self._fallback_tried = False
        with self._wake_lock:
            self._nudged = "start"
            self._wake.set()

    def unload(self) -> Served | None:
        """Stop serving (to free memory) and load nothing until `activate()`; what was served.

        Requests holding the old version finish on it; its files go one retirement later.
        """
        with self._state_lock:
            self._active = False
            self._generation += 1
            old, canary = self._state.served, self._state.canary
            self._state = replace(self._state, served=None, serving_since=None, canary=None)
            self._dropped += [s for s in (old, canary.served if canary else None) if s]
        if old is not None:
            log.info("unloaded %s version %s", self.model, old.version)
        return old

    def refresh(self, trigger: Trigger = "poll") -> bool:
        """Check the alias once; load and swap in the version it points at if that is new, then
        follow the canary the route names (load it, or drop it). `trigger` is what asked for
        this check (counted in `state.swaps_by_trigger` when it swaps). A follower that is not
        active (lazy, not yet asked for) only checks.

        Returns True when a new version was swapped in. Never raises for registry or model
        problems: they are recorded in `state.last_error` and logged, and serving goes on.
        """
        now = self._clock()
        self._retire_dropped()
        swapped = False
        if self._cache_first and self._active and self._state.served is None:
            self._cache_first = False  # the registry could not be read at start: no waiting
            swapped = self._from_cache(trigger)
        self._update(checking_since=now)
        try:
            found = self._resolve()
        except Exception as exc:  # unreachable registry, alias deleted: keep serving what we have
            answered = isinstance(exc, InvalidInput)  # the registry said the alias is gone
            self._update(checking_since=None, unreachable_since=None if answered else
                         self._state.unreachable_since or now)
            if not answered and self._active and self._state.served is None:
                swapped = self._from_cache(trigger) or swapped
            self._record_error(f"cannot resolve {self.what}: {_describe(exc)}", None)
            return swapped
        route = found if isinstance(found, Route) else Route(str(found))
        since = self._state.unreachable_since
        self._update(alias_version=route.version, checked_at=now, note=route.note,
                     checking_since=None, unreachable_since=None)
        if since is not None:
            log.info("the registry answers again for %s (unreachable for %.1f s)", self.what,
                     max(0.0, now - since))
        if not self._active:
            return swapped
        swapped = self._follow(route.version, now, trigger) or swapped
        try:
            self._follow_canary(route.canary)
        except Exception:  # a canary must never stop the primary from being followed
            log.exception("unexpected error while following the canary of %s", self.what)
        return swapped

    def _follow(self, target: str, now: float, trigger: Trigger) -> bool:
        served = self._state.served
        if served is not None and served.version == target:
            return False
        failure = self._failures.get(target)
        if failure is not None and now < failure.retry_at:
            return False
        return self._swap_to(target, trigger)

    def _swap_to(self, version: str, trigger: Trigger) -> bool:
        generation = self._generation
        new = self._in_memory(version)
        if new is None:
            log.info("loading %s version %s (%s)", self.model, version, self.what)
        try:
            new = new if new is not None else self._load(version)
        except Exception as exc:  # any load failure: the working model stays
            count = self._failures[version].count + 1 if version in self._failures else 1
            delay = min(self.poll_interval * 2 ** (count - 1), MAX_RETRY_DELAY)
            self._failures[version] = _Failure(count, self._clock() + delay)
            old = self._state.served
            keeping = f"; still serving version {old.version}" if old else "; nothing to serve yet"
            self._record_error(f"cannot load {self.model} version {version}: {_describe(exc)}"
                               f"{keeping} (retry in {delay:g} s)", version, failed_load=True)
            return False
        self._failures.pop(version, None)
        return self._commit(new, trigger, generation)

    def _from_cache(self, trigger: Trigger) -> bool:
        """Serve the version kept in the local cache (nothing is served, the registry cannot be
        read); tried once per activation."""
        if self._fallback is None or self._fallback_tried:
            return False
        self._fallback_tried = True
        generation = self._generation
        try:
            new = self._fallback()
        except Exception as exc:
            self._record_error(f"cannot load the cached version of {self.what}: "
                               f"{_describe(exc)}", None, failed_load=True)
            return False
        return self._commit(new, trigger, generation)

    def _commit(self, new: Served, trigger: Trigger, generation: int) -> bool:
        """The swap: one reference assignment. Requests holding the old version finish on it."""
        old = self._state.served
        if not self._update_if(generation, served=new, serving_since=self._clock(),
                               swaps=self._state.swaps + (old is not None),
                               swaps_by_trigger=self._state.swaps_by_trigger.add(trigger)):
            log.info("%s version %s was unloaded while it loaded; dropped", self.model,
                     new.version)
            if new.path and not self._holds(new.path):
                shutil.rmtree(new.path, ignore_errors=True)
            return False
        how = (f"from the local cache, loaded in {new.load_seconds:.2f} s"
               if new.source == "cache" else f"loaded in {new.load_seconds:.2f} s")
        why = "on its first request" if trigger == "start" and self.lazy else _WHY[trigger]
        if old is None:
            log.info("serving %s version %s (%s; checked %s)", self.model, new.version, how, why)
        else:
            log.info("swapped %s version %s -> %s (%s; checked %s)", self.model, old.version,
                     new.version, how, why)
        self._retire(old)
        if self._kept is not None and new.source != "cache":
            try:
                self._kept(new)
            except Exception as exc:  # the cache is a convenience: serving goes on without it
                log.warning("could not keep %s version %s in the local cache: %s", self.model,
                            new.version, _describe(exc))
        return True

    def _follow_canary(self, route: CanaryRoute | None) -> None:
        held = self._state.canary
        if route is None:
            if held is not None:  # promoted, aborted, or no longer consistent: no canary
                self._update(canary=None)
                log.info("canary version %s (@%s) dropped: the route no longer names it",
                         held.route.version, held.route.alias)
                self._retire(held.served)
            return
        if held is not None and held.route.version == route.version and (
                held.served is not None
                or (held.benched is not None and held.route.step_key == route.step_key)):
            # Loaded, or benched for this step: follow the route (a new step, a new share).
            if held.route != route:
                self._update(canary=replace(held, route=route))
            return
        # The primary first: a canary is loaded once the endpoint serves something.
        if not self._update_if(self._generation, canary=CanaryState(route)):
            return
        if held is not None:
            self._retire(held.served)
        if self._state.served is not None:
            self._load_canary(route, held)

    def _load_canary(self, route: CanaryRoute, held: CanaryState | None) -> None:
        generation = self._generation
        served = self._in_memory(route.version, held)
        try:
            if served is None:
                log.info("loading canary %s version %s (@%s)", self.model, route.version,
                         route.alias)
                served = self._load(route.version)
        except Exception as exc:  # benched for this step; the primary is untouched
            reason = f"load failed: {_describe(exc)}"
            log.error("cannot load canary %s version %s (@%s): %s; it gets no traffic until "
                      "the next step", self.model, route.version, route.alias, reason)
            self._update_if(generation, canary=CanaryState(route, benched=reason))
            return
        if not self._update_if(generation, canary=CanaryState(route, served)):
            return
        log.info("canary %s version %s (@%s) ready: %s mode, %g%% of requests", self.model,
                 route.version, route.alias, route.mode, route.share * 100)

    def _in_memory(self, version: str, held: CanaryState | None = None) -> Served | None:
        """A loaded Served of `version` this endpoint already holds, if any."""
        canary = held if held is not None else self._state.canary
        for served in (self._state.served, canary.served if canary else None):
            if served is not None and served.version == version:
                return served
        return None

    def _retire(self, old: Served | None) -> None:
        # The artifacts of a model just swapped out or dropped may still be read by requests in
        # flight (some flavors read files lazily), so its directory goes one retirement later;
        # a version still held (the canary became the primary) keeps its files.
        if old is None or self._holds(old.path):
            return
        for path in self._retiring:
            if not self._holds(path):
                shutil.rmtree(path, ignore_errors=True)
        self._retiring = [old.path] if old.path else []

    def _holds(self, path: str | None) -> bool:
        canary = self._state.canary
        return path is not None and any(
            served is not None and served.path == path
            for served in (self._state.served, canary.served if canary else None))

    def _record_error(self, message: str, version: str | None, failed_load: bool = False) -> None:
        message = redact(message)
        log.error("%s", message)
        self._update(last_error=FollowError(message, self._clock(), version),
                     load_failures=self._state.load_failures + failed_load)

    # -- the background thread -----------------------------------------------------------------

    def _retire_dropped(self) -> None:
        with self._state_lock:
            dropped, self._dropped = self._dropped, []
        for served in dropped:
            self._retire(served)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        with self._wake_lock:  # the first refresh answers whatever came before it
            self._nudged = None
            self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.model}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        trigger: Trigger = "start"
        while not self._stop.is_set():
            try:
                self.refresh(trigger)
            except Exception:  # a bug must not silently end following; log it and go on
                log.exception("unexpected error while following %s", self.what)
            trigger = self._next_trigger()

    def _settled(self) -> bool:
        """A pinned version, served, and the registry has answered since: nothing to poll."""
        state = self._state
        return self.pinned and state.served is not None and state.unreachable_since is None

    def _next_trigger(self) -> Trigger:
        """Wait for the poll interval, or less when nudged; what the next refresh is for.

        The event is cleared just before the refresh that answers it, so a nudge that arrives
        during that refresh sets it again and gets one more refresh: nothing is lost, and a
        flood of nudges costs one refresh. A settled pinned version waits for an activation.
        """
        self._wake.wait(None if self._settled() else self.poll_interval)
        with self._wake_lock:
            nudged, self._nudged = self._nudged, None
            self._wake.clear()
        return nudged or "poll"

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_until_serving(self, timeout: float) -> Served | None:
        """Block until a version is served (for callers that want readiness), or time out."""
        deadline = time.monotonic() + timeout
        while self._state.served is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._state.served


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return redact(f"{type(exc).__name__}: {first}"[:500])
