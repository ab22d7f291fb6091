"""Which writes of a command a fault sweep fails: one point per distinct crash point.

A sweep (tests/test_faults.py, tests/test_rollout_faults.py) fails the registry at the n-th write
of a command. Every write is its own crash point, but for one kind: a batch of version tags.
Promote writes a version's tags with one request per tag, all sent at once (up to 4 in flight;
promotion.registry.writes.set_tags). Its requests reach the server in no fixed order, so a fault
at the batch's 2nd, 3rd, ... request is one and the same crash point (part of the batch written,
and a race decides which part): the same code path, the same state to recover from. A sweep
fails the batch's first request (none of it written) and its last (all of it but one); every
write outside a batch is a point of its own, as before.

A batch is a run of consecutive `model-versions/set-tag` writes to one version of one model; a
tag key seen again starts a new batch (one call never writes a key twice), so two calls in a
row are two batches, with a point at the end of the first and the start of the second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from faultproxy import RequestRecord

T = TypeVar("T")


def _tag_of_version(record: RequestRecord) -> tuple[str, str, str] | None:
    """(model, version, key) of a version-tag write, else None."""
    if not record.path.split("?", 1)[0].endswith("/model-versions/set-tag"):
        return None
    body = json.loads(record.body)
    return str(body["name"]), str(body["version"]), str(body["key"])


def batches(requests: Sequence[RequestRecord]) -> list[int]:
    """For each write (in order), the number of its version-tag batch; 0 outside any batch."""
    numbers: list[int] = []
    current, keys, target = 0, set(), None
    for record in (r for r in requests if r.write):
        tag = _tag_of_version(record)
        if tag is None:
            numbers.append(0)
            target = None
            continue
        if tag[:2] != target or tag[2] in keys:
            current, keys, target = current + 1, set(), tag[:2]
        keys.add(tag[2])
        numbers.append(current)
    return numbers


def sweep_points(requests: Sequence[RequestRecord]) -> list[int]:
    """The 1-based write indexes to fail, given every request of a healthy run of the command."""
    numbers = batches(requests)
    points = []
    for i, batch in enumerate(numbers):
        inside = (batch and 0 < i < len(numbers) - 1
                  and numbers[i - 1] == batch == numbers[i + 1])
        if not inside:
            points.append(i + 1)
    return points


def prepared(make: Callable[[], T], count: int) -> Iterator[T]:
    """`count` results of `make()`, in order, each made while the previous one is in use.

    A sweep sets up a fresh model for every point (a model of its own: unique name, its own
    versions, log and records) directly on the test server, not through the proxy; so the next
    point's set-up, in a thread, cannot touch what the current point counts or checks."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(make)
        for i in range(count):
            result = future.result()
            if i + 1 < count:
                future = pool.submit(make)
            yield result
