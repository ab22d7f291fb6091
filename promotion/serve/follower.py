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

The follower's inputs are two plain callables (resolve the alias, load a version), so its logic is
tested without a registry; `alias_resolver` and `version_loader` build the real ones on the
registry layer (`promotion.registry`), which does every registry request and download. Only
loading a downloaded version into memory (`mlflow.pyfunc`, imported inside `load`) is done here.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from promotion.engine.rollout import CanaryRoute, Route
from promotion.errors import redact
from promotion.registry import get_version
from promotion.registry.models import download_version
from promotion.registry.rollouts import read_route

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("promotion.serving")

# A version that failed to load is retried after poll_interval * 2**(failures-1), capped: a broken
# version must not be downloaded again every few seconds, a transient failure must heal on its own.
MAX_RETRY_DELAY = 600.0


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
_WHY = {"start": "at start", "poll": "on a poll", "webhook": "on a webhook"}


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

    @property
    def in_sync(self) -> bool:
        """True when the served version is the one the alias points at."""
        return self.served is not None and self.served.version == self.alias_version


# -> the version the alias points at now, or the route: that version and the canary in force
Resolve = Callable[[], str | Route]
Load = Callable[[str], Served]  # version -> a completely loaded Served


@dataclass(frozen=True)
class _Failure:
    count: int
    retry_at: float


class AliasFollower:
    """Serve what `model@alias` points at; swap atomically when it moves.

    `refresh()` is one poll step; `start()` runs it every `poll_interval` seconds on a daemon
    thread until `stop()`, and at once when `nudge()`d. Only that thread loads and swaps; a
    nudge records the event that caused it; readers just read `state`.
    """

    def __init__(self, model: str, alias: str, poll_interval: float, resolve: Resolve,
                 load: Load, clock: Callable[[], float] = time.time) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.model = model
        self.alias = alias
        self.poll_interval = poll_interval
        self._resolve = resolve
        self._load = load
        self._clock = clock
        self._state = FollowerState()
        self._failures: dict[str, _Failure] = {}
        self._retiring: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The follower thread writes the state; a nudge writes `last_event`. Each field has one
        # writer, and every write replaces the whole state under this lock.
        self._state_lock = threading.Lock()
        # A nudge sets `_wake` (and says why in `_nudged`); the thread clears both, under
        # `_wake_lock`, just before the refresh that answers them.
        self._wake = threading.Event()
        self._wake_lock = threading.Lock()
        self._nudged: Trigger | None = None

    @property
    def state(self) -> FollowerState:
        return self._state

    def _update(self, **changes: Any) -> None:
        with self._state_lock:
            self._state = replace(self._state, **changes)

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

    def refresh(self, trigger: Trigger = "poll") -> bool:
        """Check the alias once; load and swap in the version it points at if that is new, then
        follow the canary the route names (load it, or drop it). `trigger` is what asked for
        this check (counted in `state.swaps_by_trigger` when it swaps).

        Returns True when a new version was swapped in. Never raises for registry or model
        problems: they are recorded in `state.last_error` and logged, and serving goes on.
        """
        now = self._clock()
        try:
            found = self._resolve()
        except Exception as exc:  # unreachable registry, alias deleted: keep serving what we have
            self._record_error(f"cannot resolve {self.model}@{self.alias}: {_describe(exc)}", None)
            return False
        route = found if isinstance(found, Route) else Route(str(found))
        self._update(alias_version=route.version, checked_at=now, note=route.note)
        swapped = self._follow(route.version, now, trigger)
        try:
            self._follow_canary(route.canary)
        except Exception:  # a canary must never stop the primary from being followed
            log.exception("unexpected error while following the canary of %s@%s", self.model,
                          self.alias)
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
        new = self._in_memory(version)
        if new is None:
            log.info("loading %s version %s (%s@%s)", self.model, version, self.model, self.alias)
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
        old = self._state.served
        # The swap: one reference assignment. Requests holding `old` finish on it.
        self._update(served=new, serving_since=self._clock(),
                     swaps=self._state.swaps + (old is not None),
                     swaps_by_trigger=self._state.swaps_by_trigger.add(trigger))
        why = _WHY[trigger]
        if old is None:
            log.info("serving %s version %s (loaded in %.2f s; checked %s)", self.model, version,
                     new.load_seconds, why)
        else:
            log.info("swapped %s version %s -> %s (loaded in %.2f s; checked %s)", self.model,
                     old.version, version, new.load_seconds, why)
        self._retire(old)
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
        self._update(canary=CanaryState(route))
        if held is not None:
            self._retire(held.served)
        if self._state.served is not None:
            self._load_canary(route, held)

    def _load_canary(self, route: CanaryRoute, held: CanaryState | None) -> None:
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
            self._update(canary=CanaryState(route, benched=reason))
            return
        self._update(canary=CanaryState(route, served))
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
                log.exception("unexpected error while following %s@%s", self.model, self.alias)
            trigger = self._next_trigger()

    def _next_trigger(self) -> Trigger:
        """Wait for the poll interval, or less when nudged; what the next refresh is for.

        The event is cleared just before the refresh that answers it, so a nudge that arrives
        during that refresh sets it again and gets one more refresh: nothing is lost, and a
        flood of nudges costs one refresh.
        """
        self._wake.wait(self.poll_interval)
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


# -- the real resolve/load, on the registry layer ----------------------------------------------


def alias_resolver(client: MlflowClient, model: str, alias: str) -> Resolve:
    """Resolve `model@alias` and the canary in force on each poll, from one read of the
    registered model (raising as `read_route` does: the follower records it)."""
    return functools.partial(read_route, client, model, alias)


def version_loader(client: MlflowClient, model: str, scratch: str) -> Load:
    """Load `models:/<model>/<version>` into a directory of its own under `scratch`.

    The version is loaded by number, not through the alias, so the model served is exactly the
    version that was resolved even if the alias moves again while it loads.
    """

    def load(version: str) -> Served:
        import mlflow.pyfunc

        started = time.monotonic()
        path = tempfile.mkdtemp(prefix=f"v{version}-", dir=scratch)
        try:
            run_id = get_version(client, model, version).run_id
            local = str(download_version(client, model, version, path))
            pyfunc = mlflow.pyfunc.load_model(local)
            warm_up(pyfunc, local)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return Served(version=version, model=pyfunc, loaded_at=time.time(),
                      load_seconds=time.monotonic() - started, run_id=run_id or None,
                      input_schema=pyfunc.metadata.get_input_schema(), path=path,
                      model_dir=local)

    return load


def warm_up(pyfunc: Any, local_path: str) -> None:
    """Score the model's own input example, when it was logged with one.

    A version that cannot score its own example is not fit to replace a working one, and the
    first real request should not pay for lazy initialisation.
    """
    example = pyfunc.metadata.load_input_example(local_path)
    if example is not None:
        pyfunc.predict(example)


def scratch_dir() -> str:
    """A private directory for downloaded artifacts (removed by the caller on shutdown)."""
    return tempfile.mkdtemp(prefix=f"promote-serve-{os.getpid()}-")
