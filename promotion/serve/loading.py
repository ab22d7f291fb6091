"""The follower's real inputs, on the registry layer: resolve a spec, load a version.

  alias_resolver   where `model@alias` points and the canary in force (`read_route`)
  route_resolver   the same in one request bounded by the endpoint's registry timeout
  pinned_resolver  the check of a pinned version (that it exists), bounded the same way
  RegistryCheck    the bound of each check: the registry timeout while the registry answers,
                   a short probe once it has not (so its return is seen within about two poll
                   intervals, even when the check in flight hangs until its timeout)
  version_loader   download a version by number into the scratch directory, measure it on disk,
                   make room for it (the memory budget), load it, warm it up

Every registry request and download is made by `promotion.registry`; loading a downloaded
version into memory (`mlflow.pyfunc`, imported inside `load`) is done here.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion.errors import RegistryError
from promotion.registry import get_version
from promotion.registry.bounded import route_within, version_within
from promotion.registry.models import artifact_bytes, download_version
from promotion.registry.rollouts import read_route
from promotion.serve.state import Load, Resolve, Served

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Make room for `bytes` more of `model` before it is loaded (evicting other models), and give the
# room back if the load fails: promotion.serve.budget.MemoryBudget.admit.
Admit = Callable[[str, int], AbstractContextManager[Any]]


def alias_resolver(client: MlflowClient, model: str, alias: str) -> Resolve:
    """Resolve `model@alias` and the canary in force on each poll, from one read of the
    registered model (raising as `read_route` does: the follower records it)."""
    return functools.partial(read_route, client, model, alias)


PROBES = 4  # short checks in a row after a failure, before one at the full timeout again


class RegistryCheck:
    """One registry read per poll (`read(timeout)`), not retried: a check that fails is tried
    again at the next poll. While the registry answers, a check may wait `timeout` seconds;
    once one has failed, the next ones wait at most `probe` seconds, except every
    (PROBES + 1)-th, which waits the full `timeout` again, so a registry that answers, but only
    slowly, is still read."""

    def __init__(self, read: Callable[[float], Any], timeout: float, probe: float, *,
                 failed: bool = False) -> None:
        self.read, self.timeout, self.probe = read, timeout, min(probe, timeout)
        self.failures = int(failed)  # `failed`: the registry could not be read at start-up

    def bound(self) -> float:
        """The timeout of the next check."""
        return self.timeout if self.failures % (PROBES + 1) == 0 else self.probe

    def __call__(self) -> Any:
        try:
            found = self.read(self.bound())
        except RegistryError:
            self.failures += 1
            raise
        except Exception:  # the registry answered (an unknown alias): it can be read
            self.failures = 0
            raise
        self.failures = 0
        return found


def probe_timeout(poll_interval: float) -> float:
    """How long a check waits once the registry has stopped answering: two poll intervals,
    at least one second."""
    return max(2 * poll_interval, 1.0)


def route_resolver(client: MlflowClient, model: str, alias: str, timeout: float,
                   probe: float, failed: bool = False) -> Resolve:
    """As `alias_resolver`, in one request bounded as `RegistryCheck` says."""
    return RegistryCheck(lambda bound: route_within(client, model, alias, timeout=bound),
                         timeout, probe, failed=failed)


def pinned_resolver(client: MlflowClient, model: str, version: str, timeout: float,
                    probe: float, failed: bool = False) -> Resolve:
    """A pinned version: the registry still says it exists (one request, bounded the same)."""

    def read(bound: float) -> str:
        version_within(client, model, version, timeout=bound)
        return version

    return RegistryCheck(read, timeout, probe, failed=failed)


def version_loader(client: MlflowClient, model: str, scratch: str,
                   admit: Admit | None = None) -> Load:
    """Load `models:/<model>/<version>` into a directory of its own under `scratch`.

    The version is loaded by number, not through the alias, so the model served is exactly the
    version that was resolved even if the alias moves again while it loads. Its footprint is
    estimated by its size on disk, once downloaded; `admit` makes room for it before it is
    loaded into memory.
    """

    def load(version: str) -> Served:
        import mlflow.pyfunc

        started = time.monotonic()
        path = tempfile.mkdtemp(prefix=f"v{version}-", dir=scratch)
        try:
            run_id = get_version(client, model, version).run_id
            local = str(download_version(client, model, version, path))
            footprint = artifact_bytes(Path(local))
            with admit(model, footprint) if admit is not None else nullcontext():
                pyfunc = mlflow.pyfunc.load_model(local)
                warm_up(pyfunc, local)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return Served(version=version, model=pyfunc, loaded_at=time.time(),
                      load_seconds=time.monotonic() - started, run_id=run_id or None,
                      input_schema=pyfunc.metadata.get_input_schema(), path=path,
                      model_dir=local, footprint=footprint)

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
