"""A per-model lease held in the MLflow registry itself: Promote's writers never interleave.

GitHub's concurrency groups serialise workflow jobs only; a watch daemon, a manual gate and a
rollback from a laptop can still run at once. Every command that may move an alias therefore holds
the model's lease while it writes. The lease is a registered model named
`promotion.lease.<model_key>`: MLflow's stores create a registered model atomically and refuse a
second one of the same name (RESOURCE_ALREADY_EXISTS; in the SQL store a primary key), so at most
one holder exists at a time. Its tags say who holds it and until when.

- Acquire: create it; if it exists and is alive, wait (bounded, `PROMOTE_LEASE_WAIT_S`), then fail
  with exit 3 having written nothing, naming the holder.
- Expiry: a lease is held for `PROMOTE_LEASE_TTL_S` and renewed by nothing (Promote's writes take
  seconds). An expired lease, or one whose holder is a process on this host that no longer runs,
  is taken over safely: the taker first creates `<lease>.takeover.<stamp>` (atomic again, so one
  taker wins per stale lease), re-reads the lease to check it is the same one, deletes it, and
  retries the create like anyone else.
- Release: delete it if it is still ours (a lease taken over after expiry is left alone).

It cannot stop a writer outside Promote (the MLflow UI, a script) from moving an alias: the
re-read before every alias write, and the write-ahead intent, handle those.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from promotion.engine.records import local_user, model_key, utc_now
from promotion.errors import RegistryError
from promotion.registry.client import registry_errors, unless_missing

if TYPE_CHECKING:
    from mlflow import MlflowClient

PREFIX = "promotion.lease."
DEFAULT_TTL_S = 120.0
DEFAULT_WAIT_S = 30.0
TAG_MODEL = "promotion.lease.model"
TAG_HOLDER = "promotion.lease.holder"
TAG_TOKEN = "promotion.lease.token"
TAG_EXPIRES = "promotion.lease.expires_ms"
TAG_ACQUIRED = "promotion.lease.acquired_at"
TAG_PROCESS = "promotion.lease.process"  # host identity and pid, to see a dead local holder
TAG_PURPOSE = "promotion.lease.purpose"
ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def lease_name(model: str) -> str:
    return PREFIX + model_key(model)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as read from the registry."""

    model: str
    holder: str
    token: str
    expires_ms: int
    acquired_at: str
    process: str
    purpose: str

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> LeaseInfo:
        try:
            expires = int(tags.get(TAG_EXPIRES, "0"))
        except ValueError:
            expires = 0
        return cls(model=tags.get(TAG_MODEL, ""), holder=tags.get(TAG_HOLDER, "unknown"),
                   token=tags.get(TAG_TOKEN, ""), expires_ms=expires,
                   acquired_at=tags.get(TAG_ACQUIRED, ""), process=tags.get(TAG_PROCESS, ""),
                   purpose=tags.get(TAG_PURPOSE, ""))

    @property
    def stamp(self) -> str:
        return f"{self.expires_ms}.{self.token[:12]}"

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms

    def describe(self) -> str:
        until = time.strftime("%H:%M:%SZ", time.gmtime(self.expires_ms / 1000))
        what = f" ({self.purpose})" if self.purpose else ""
        return f"{self.holder}{what}, since {self.acquired_at}, until {until}"


@dataclass(frozen=True)
class Lease:
    model: str
    name: str
    token: str


def _ms() -> int:
    return int(time.time() * 1000)


def _setting(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def this_process() -> str:
    """Where a holder runs: enough to tell that a holder on this host is no longer running."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}|{boot}|{namespace}|{os.getpid()}"


# The tokens of the leases this process holds right now: a lease that names this very process
# but none of these was left by one of its own commands that could not release it.
_held_here: set[str] = set()


def _holder_is_gone(info: LeaseInfo) -> bool:
    """True only when the holder provably ran on this host (same boot, same pid namespace) and its
    process no longer exists, or is this process and no longer holds it."""
    me = this_process()
    if info.process == me:
        return info.token not in _held_here
    mine, theirs = me.rsplit("|", 1), info.process.rsplit("|", 1)
    if len(theirs) != 2 or mine[0] != theirs[0] or "?" in mine[0]:
        return False
    try:
        os.kill(int(theirs[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _holder() -> str:
    return f"{local_user()} pid {os.getpid()}"


def _create(client: MlflowClient, name: str, tags: Mapping[str, str], description: str) -> bool:
    """Create the registered model `name`; False when it already exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags=dict(tags), description=description)
    except MlflowException as exc:
        if exc.error_code in ALREADY_EXISTS:
            return False
        raise
    return True


def _read(client: MlflowClient, name: str) -> LeaseInfo | None:
    rm = unless_missing(partial(client.get_registered_model, name))
    return None if rm is None else LeaseInfo.from_tags(rm.tags or {})


def _delete(client: MlflowClient, name: str) -> None:
    unless_missing(partial(client.delete_registered_model, name))  # gone already: fine


def is_live(info: LeaseInfo) -> bool:
    """Held by a holder that may still be writing (not expired, not provably gone)."""
    return not info.expired(_ms()) and not _holder_is_gone(info)


def read_lease(client: MlflowClient, model: str) -> LeaseInfo | None:
    """The model's lease as it stands (None: nobody holds it)."""
    with registry_errors(f"reading the lease of model {model!r}"):
        return _read(client, lease_name(model))


def _take_over(client: MlflowClient, name: str, stale: LeaseInfo) -> None:
    """Remove a stale lease, with one taker at most (see the module docstring)."""
    marker = f"{name}.takeover.{stale.stamp}"
    if not _create(client, marker, {TAG_PURPOSE: "takeover"}, "Promote: taking over a lease"):
        found = unless_missing(partial(client.get_registered_model, marker))
        if found is not None and _ms() - int(found.creation_timestamp or 0) > \
                2 * DEFAULT_TTL_S * 1000:
            _delete(client, marker)  # its taker died mid-takeover long ago
        return
    try:
        now = _read(client, name)
        if now is not None and now.stamp == stale.stamp:
            _delete(client, name)
    finally:
        _delete(client, marker)


def acquire(client: MlflowClient, model: str, *, purpose: str,
            sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Hold the model's lease, waiting at most PROMOTE_LEASE_WAIT_S; RegistryError (exit 3,
    nothing written) naming the holder when it stays taken."""
    ttl = _setting("PROMOTE_LEASE_TTL_S", DEFAULT_TTL_S)
    deadline = time.monotonic() + _setting("PROMOTE_LEASE_WAIT_S", DEFAULT_WAIT_S)
    name, token = lease_name(model), uuid.uuid4().hex
    delay = 0.05
    with registry_errors(f"taking the lease of model {model!r}"):
        while True:
            tags = {TAG_MODEL: model, TAG_HOLDER: _holder(), TAG_TOKEN: token,
                    TAG_EXPIRES: str(_ms() + int(ttl * 1000)), TAG_ACQUIRED: utc_now(),
                    TAG_PROCESS: this_process(), TAG_PURPOSE: purpose}
            description = f"Promote: the lease of model {model!r} ({purpose}); deleted on release"
            if _create(client, name, tags, description):
                _held_here.add(token)
                return Lease(model, name, token)
            held = _read(client, name)
            if held is None:
                continue  # released in between: try again at once
            if held.token == token:  # ours: the create's answer was lost and it was retried
                _held_here.add(token)
                return Lease(model, name, token)
            if held.expired(_ms()) or _holder_is_gone(held):
                _take_over(client, name, held)
                continue
            if time.monotonic() >= deadline:
                raise RegistryError(
                    f"model {model!r} is being changed by {held.describe()}; nothing was "
                    f"written (waited {_setting('PROMOTE_LEASE_WAIT_S', DEFAULT_WAIT_S):g} s for "
                    "its lease; retry when it is done)")
            sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def release(client: MlflowClient, lease: Lease) -> None:
    """Give the lease back if it is still ours. Never raises: an unreleased lease expires."""
    _held_here.discard(lease.token)
    try:
        held = _read(client, lease.name)
        if held is not None and held.token == lease.token:
            _delete(client, lease.name)
    except Exception:  # the command's own outcome matters more; the lease expires by itself
        return


@contextmanager
def holding(client: MlflowClient, model: str, *, purpose: str) -> Iterator[Lease]:
    """Hold the model's lease for the block; released however the block ends."""
    lease = acquire(client, model, purpose=purpose)
    try:
        yield lease
    finally:
        release(client, lease)
