"""The shadow worker: a process of its own that scores shadow batches and logs them.

Scoring a copy of every request in the serving process would take the interpreter from the
requests it answers: a Python model holds the GIL while it scores, so a shadow batch scored on a
thread delays every request that arrives meanwhile (bench/rollout.py measured Production's p99
+26 % with 100 % of requests mirrored to a thread). So when the canary was loaded from artifacts on
disk, the endpoint starts one child process for it (multiprocessing, `spawn`: nothing of the
serving process's threads is inherited): the child loads the same artifacts, and for each batch
it is sent scores it (promotion.serve.shadow.score_items) and writes its records to the
inference log itself (role `shadow`, through its own connection), answering only each copy's
status. The serving process sends the batch and waits on a pipe, holding no lock.

A child that fails to load, dies, or takes longer than its deadline is killed and its batch
counted as failed (the shadow mirror logs those failures); the next batch starts a new child.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any

from promotion.errors import LogUnavailable, redact
from promotion.monitoring.logstore import LogStore
from promotion.serve.follower import Served
from promotion.serve.requestlog import record
from promotion.serve.shadowscore import Item, score_items

logger = logging.getLogger("promotion.serving")

NICENESS = 10  # added to the worker's scheduling niceness
LOAD_TIMEOUT = 300.0  # seconds a child may take to import MLflow and load the canary
Outcome = tuple[str, int, float]  # (request id, status, seconds)


class WorkerFailed(Exception):
    """The child could not score the batch (it failed to load, died, or timed out): `status`
    is what each copy counts as (500, or 504 for a timeout)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class ShadowProcess:
    """One child process scoring shadow batches of one canary version."""

    def __init__(self, served: Served, *, model: str, alias: str, log_uri: str | None,
                 max_rows: int, row_key: str | None, request_timeout: float) -> None:
        assert served.model_dir is not None
        context = multiprocessing.get_context("spawn")
        self.version, self.path = served.version, served.model_dir
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child, name=f"promote-shadow-{model}-v{served.version}", daemon=True,
            args=(child, served.model_dir, served.version, model, alias, log_uri, max_rows, row_key,
                  request_timeout))
        self._process.start()
        child.close()
        self._ready = False

    def serves(self, served: Served) -> bool:
        return (self.version, self.path) == (served.version, served.model_dir) and \
            self._process.is_alive()

    def score(self, items: Sequence[Item], deadline: float) -> tuple[list[Outcome], int]:
        """(request id, status, seconds) of every item, and the batched calls; WorkerFailed
        when the child cannot answer within `deadline` seconds (it is then killed)."""
        if not self._ready:
            kind, message = self._receive(LOAD_TIMEOUT, "to load the canary")
            if kind != "ready":
                self.close()
                raise WorkerFailed(f"the shadow worker could not load version {self.version}: "
                                   f"{message}")
            self._ready = True
        try:
            self._conn.send(list(items))
        except (OSError, ValueError) as exc:
            self.close()
            raise WorkerFailed(f"the shadow worker is gone ({exc})") from exc
        outcomes, batches = self._receive(deadline, "to score a batch", status=504)
        return outcomes, batches

    def _receive(self, timeout: float, doing: str, status: int = 500) -> Any:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise WorkerFailed(f"the shadow worker died ({type(exc).__name__})") from exc
        self.close()
        raise WorkerFailed(f"the shadow worker took more than {timeout:g} s {doing}",
                           status=status)

    def close(self) -> None:
        """Ask the child to stop, and kill it if it does not within a second."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self._process.join(1.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)
        self._conn.close()


def _child(conn: Any, path: str, version: str, model: str, alias: str, log_uri: str | None,
           max_rows: int, row_key: str | None, request_timeout: float) -> None:
    """The worker's life: load, say ready (or why not), then score what comes until None."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)  # the endpoint's own requests come first when the cores are busy
    try:
        import mlflow.pyfunc

        pyfunc = mlflow.pyfunc.load_model(path)
        served = Served(version=version, model=pyfunc, loaded_at=time.time(), load_seconds=0.0,
                        input_schema=pyfunc.metadata.get_input_schema())
        store = LogStore(log_uri) if log_uri else None
    except BaseException as exc:  # anything: the parent must hear why, not wait
        conn.send(("error", redact(f"{type(exc).__name__}: {exc}")[:500]))
        return
    conn.send(("ready", None))
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return
        if items is None:
            return
        scored, batches = score_items(served, items, request_timeout)
        if store is not None:
            records = [record(item.request_id, item.arrived, model, alias, version, seconds,
                              status, seen, item.sampled and max_rows > 0, max_rows, row_key,
                              role="shadow") for item, seen, status, seconds in scored]
            try:
                store.write(records)
            except LogUnavailable as exc:  # the copies were scored; their records are lost
                logging.getLogger("promotion.serving").warning("shadow worker: %s", exc)
        conn.send(([(item.request_id, status, seconds) for item, _, status, seconds in scored],
                   batches))
