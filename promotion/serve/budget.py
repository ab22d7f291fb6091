"""The memory budget of an endpoint that serves several models: footprints, recency, evictions.

A model's footprint is estimated by the size on disk of its model directory, known once it is
downloaded and before it is loaded (promotion.serve.loading): the decision to make room has to be
taken before the load, and the growth of the process's resident set cannot be told apart from
everything else the process allocates meanwhile (other loads, requests, the allocator keeping
freed memory). `plan_evictions` (pure) decides; `MemoryBudget` keeps the recency of each model,
the room taken by loads in progress, the counts, and carries the plan out through the fleet.

Only lazy models are evicted, least recently used first; required models (pinned or not) never
are. A load that does not fit even once every other lazy model is unloaded goes ahead, and the
log says the budget is exceeded: the budget is a limit on what is kept, never a reason to refuse
a model that was asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from promotion.serve.specs import format_size

log = logging.getLogger("promotion.serving")


@dataclass(frozen=True)
class Resident:
    """A model as the budget sees it: what it holds in memory, and whether it may be evicted."""

    name: str
    footprint: int
    evictable: bool
    last_used: float = 0.0  # epoch seconds of its last request (0: never asked)


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[str, ...]  # the models to unload first, least recently used first
    fits: bool  # whether the load then fits in the budget
    used: int  # the bytes held once the plan is carried out and the load is done


def plan_evictions(residents: Sequence[Resident], loading: str, need: int,
                   limit: int | None) -> EvictionPlan:
    """What to unload so that `need` more bytes of `loading` fit in `limit` (None: no budget).

    `loading`'s own footprint is not counted: the version it loads replaces the one it holds.
    Evictable models go least recently used first (ties: by name), and only as many as needed;
    when even all of them are not enough, all go and the plan says it does not fit.
    """
    others = [r for r in residents if r.name != loading]
    used = sum(r.footprint for r in others) + need
    if limit is None or used <= limit:
        return EvictionPlan((), True, used)
    victims: list[str] = []
    for resident in sorted((r for r in others if r.evictable and r.footprint > 0),
                           key=lambda r: (r.last_used, r.name)):
        victims.append(resident.name)
        used -= resident.footprint
        if used <= limit:
            break
    return EvictionPlan(tuple(victims), used <= limit, used)


class MemoryBudget:
    """The budget of one endpoint (`limit` bytes, or None for none: footprints are still
    measured and reported). Thread-safe; `attach` connects it to the models it governs."""

    def __init__(self, limit: int | None, evictable: Sequence[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.evictable = frozenset(evictable)
        self._clock = clock
        self._lock = threading.Lock()  # one admission at a time; the counters
        self._reserved: dict[str, int] = {}  # loads in progress
        self._last_used: dict[str, float] = {}
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self._residents: Callable[[], list[Resident]] = list
        self._evict: Callable[[str], None] = lambda name: None
        self._warned_fixed = False

    def attach(self, residents: Callable[[], list[Resident]],
               evict: Callable[[str], None]) -> None:
        """`residents()` lists what each model holds now; `evict(name)` unloads one."""
        self._residents, self._evict = residents, evict

    def touch(self, name: str) -> None:
        """A request for `name` arrived (its recency, for the least-recently-used order)."""
        self._last_used[name] = self._clock()

    def last_used(self, name: str) -> float | None:
        return self._last_used.get(name)

    def used(self) -> int:
        """Bytes held by the loaded models (their estimated footprints)."""
        return sum(r.footprint for r in self._residents())

    @contextmanager
    def admit(self, name: str, footprint: int) -> Iterator[None]:
        """Make room for `footprint` bytes of `name` before it is loaded (evicting lazy models,
        least recently used first), hold that room while it loads, and count the load."""
        with self._lock:
            residents = self._residents() + [
                Resident(other, size, False) for other, size in self._reserved.items()
                if other != name]
            plan = plan_evictions(residents, name, footprint, self.limit)
            for victim in plan.evict:
                self._evict(victim)
                self.evictions[victim] += 1
                log.info("evicted %s to make room for %s (%s; memory budget %s)", victim, name,
                         format_size(footprint), format_size(self.limit or 0))
            self._warn(residents, name, footprint, plan)
            self._reserved[name] = footprint
        try:
            yield
        finally:
            with self._lock:
                self._reserved.pop(name, None)
        with self._lock:
            self.loads[name] += 1

    def _warn(self, residents: list[Resident], name: str, footprint: int,
              plan: EvictionPlan) -> None:
        if self.limit is None or plan.fits:
            return
        fixed = sum(r.footprint for r in residents if r.name != name and not r.evictable) + (
            footprint if name not in self.evictable else 0)
        if fixed > self.limit:
            if not self._warned_fixed:
                self._warned_fixed = True
                log.warning("the models that are never evicted need %s, more than the memory "
                            "budget of %s: serving them anyway", format_size(fixed),
                            format_size(self.limit))
            return
        log.warning("loading %s (%s) exceeds the memory budget of %s even with every other "
                    "lazy model unloaded: loading it anyway", name, format_size(footprint),
                    format_size(self.limit))

    def counts(self) -> dict[str, tuple[int, int]]:
        """(loads, evictions) by model, since the endpoint started."""
        with self._lock:
            names = set(self.loads) | set(self.evictions)
            return {name: (self.loads[name], self.evictions[name]) for name in names}
