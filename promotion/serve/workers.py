"""Scoring processes: batches scored outside the endpoint's process, off its GIL.

A scikit-learn forest holds the GIL for most of a predict call (its per-tree work is Python), so
a second scoring thread adds nothing and a predict call on a thread slows the event loop that
reads, parses and answers requests (bench/serve.py measures both). A scoring process runs the
predict calls on another core while the endpoint's process does the HTTP work.

`ScoringProcesses` forks its processes when the endpoint starts, before any thread or socket
exists, so each starts at once with the modules already imported and holds nothing of the
endpoint's. Each loads the versions it is asked for from their local directory (the one the
endpoint itself loaded, `Served.model_dir`) and keeps the last LOADED_PER_PROCESS of them.

`score` (a `serve.batching.Scorer`) sends a batch to an idle process that holds its version.
Until every process holds a version (the first batches after a swap or a canary's arrival) its
batches are scored on the calling thread, as with no processes, while the processes load it in
the background: a swap never waits for them. A process that dies is replaced (spawned: by then
the endpoint runs threads, which must not be forked), its batch scored on the thread; a version
a process cannot load is scored on the thread. Both are logged and counted (the `where` label
of promote_serve_batch_calls_total).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from promotion.serve.batchscore import Raw, Result, Scored, score_raw
from promotion.serve.state import Served

logger = logging.getLogger("promotion.serving")

LOADED_PER_PROCESS = 3  # versions a process keeps by default: the served one, a canary, the one
# before
STOP_TIMEOUT = 5.0  # seconds a process may take to exit once its pipe is closed


class ProcessGone(Exception):
    """The scoring process exited (or its pipe broke)."""


class ScoringProcess:
    """One scoring process and the pipe to it; one call at a time (`lock`)."""

    def __init__(self, context: Any, others: Sequence[ScoringProcess] = ()) -> None:
        self.conn, child = context.Pipe()
        # A forked process holds copies of the endpoint's ends of its own pipe and of the
        # processes forked before it: it closes them, or no pipe would ever read as closed.
        inherited = [self.conn, *(p.conn for p in others)] \
            if context.get_start_method() == "fork" else []
        self.process = context.Process(target=_work, args=(child, inherited), daemon=True,
                                       name="promote-scoring")
        self.process.start()
        child.close()
        self.lock = threading.Lock()
        self.ready: set[str] = set()  # model directories it holds
        self.gone = False

    def call(self, op: str, *args: Any) -> Any:
        """Run `op` in the process (the caller holds `lock`); its result, or what it raised."""
        try:
            self.conn.send((op, args))
            status, value = self.conn.recv()
        except (EOFError, OSError, pickle.PicklingError) as exc:
            self.gone = True
            raise ProcessGone(f"scoring process {self.process.pid} is gone: "
                              f"{type(exc).__name__}: {exc}") from exc
        if status == "error":
            raise value
        return value

    def stop(self) -> None:
        self.conn.close()  # the process exits when it reads the end of its pipe
        self.process.join(STOP_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT)


class ScoringProcesses:
    """`count` scoring processes, forked now (call it before the endpoint starts threads)."""

    def __init__(self, count: int, keep: int = LOADED_PER_PROCESS) -> None:
        if count < 1 or keep < 1:
            raise ValueError("count and keep must be >= 1")
        self.keep = keep  # versions each process holds at most
        self._lock = threading.Lock()
        fork = multiprocessing.get_context("fork")
        self.processes: list[ScoringProcess] = []
        for _ in range(count):
            self.processes.append(ScoringProcess(fork, self.processes))
        self._loading: set[str] = set()
        self._unloadable: set[str] = set()
        self.restarts = 0
        self.closed = False

    def score(self, served: Served, raws: Sequence[Raw], max_rows: int) -> Scored:
        """Score a batch in an idle process holding its version, else on this thread."""
        key = served.model_dir
        if key is None:  # nothing a process could load
            return score_raw(served, raws, max_rows)
        for process in list(self.processes):
            if key not in process.ready or not process.lock.acquire(blocking=False):
                continue
            try:
                scored: Scored = process.call("score", key, served.version, list(raws),
                                              max_rows)
                scored.where = "process"
                return scored
            except ProcessGone as exc:
                logger.warning("%s; its batch is scored in the endpoint's process", exc)
                self._replace(process)
                break
            finally:
                process.lock.release()
        self._load_soon(key, served.version)
        return score_raw(served, raws, max_rows)

    def _load_soon(self, key: str, version: str) -> None:
        """Have every process that does not hold `key` load it, in the background, once."""
        with self._lock:
            if key in self._loading or key in self._unloadable:
                return
            missing = [p for p in self.processes if key not in p.ready and not p.gone]
            if not missing:
                return
            self._loading.add(key)
        threading.Thread(target=self._load, args=(key, version, missing), daemon=True,
                         name="promote-scoring-load").start()

    def _load(self, key: str, version: str, processes: list[ScoringProcess]) -> None:
        try:
            for process in processes:
                with process.lock:
                    try:
                        evicted = process.call("load", key, self.keep)
                    except ProcessGone as exc:
                        logger.warning("%s", exc)
                        self._replace(process)
                        continue
                    except Exception as exc:
                        logger.warning("a scoring process could not load version %s (%s: %s); "
                                       "it is scored in the endpoint's process", version,
                                       type(exc).__name__, exc)
                        with self._lock:
                            self._unloadable.add(key)
                        return
                    process.ready.difference_update(evicted)
                    process.ready.add(key)
        finally:
            with self._lock:
                self._loading.discard(key)

    def _replace(self, process: ScoringProcess) -> None:
        """A new process in place of one that is gone (spawned: this process runs threads)."""
        with self._lock:
            if process not in self.processes or self.closed:
                return
            index = self.processes.index(process)
            self.restarts += 1
            # Until the new one is up, the gone one stays in the list: it is never picked (its
            # `ready` is emptied) and a second failure does not replace it twice.
            process.ready.clear()
        process.stop()
        replacement = ScoringProcess(multiprocessing.get_context("spawn"))
        with self._lock:
            self.processes[index] = replacement
        logger.warning("scoring process %s replaced by %s", process.process.pid,
                       replacement.process.pid)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        for process in self.processes:
            process.stop()


# -- in the scoring process ----------------------------------------------------------------------


def _work(conn: Connection, inherited: Sequence[Connection]) -> None:
    """Answer the endpoint's calls until it closes the pipe (or dies)."""
    for other in inherited:
        other.close()
    # Ctrl-C and a SIGTERM sent to the endpoint's process group are the endpoint's: it drains
    # its requests, then closes the pipe, and this process exits (so it does when the endpoint
    # dies: the pipe closes with it).
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # directory -> (model, schema)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "load":
                reply: tuple[str, Any] = ("ok", _load(models, *args))
            elif op == "score":
                key, version, raws, max_rows = args
                if key not in models:  # let go of meanwhile: loaded again, nothing let go
                    _load(models, key, len(models) + 1)
                models.move_to_end(key)
                model, schema = models[key]
                served = Served(version, model, 0.0, 0.0, input_schema=schema)
                scored = score_raw(served, raws, max_rows)
                scored.results = [_portable_result(r) for r in scored.results]
                reply = ("ok", scored)
            else:
                reply = ("error", ValueError(f"unknown call {op!r}"))
        except Exception as exc:
            reply = ("error", _portable(exc))
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send(("error", RuntimeError(f"the answer cannot be sent back: {exc}")))


def _load(models: OrderedDict[str, tuple[Any, Any]], key: str, keep: int) -> list[str]:
    """Load the model in directory `key`, keeping at most `keep` models; the directories dropped
    to make room."""
    import mlflow.pyfunc

    if key not in models:
        model = mlflow.pyfunc.load_model(key)
        example = model.metadata.load_input_example(key)
        if example is not None:
            model.predict(example)  # the first real batch should not pay for lazy set-up
        models[key] = model, model.metadata.get_input_schema()
    models.move_to_end(key)
    evicted = []
    while len(models) > keep:
        evicted.append(models.popitem(last=False)[0])
    return evicted


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives the pipe, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _portable_result(result: Result) -> Result:
    if result.error is None:
        return result
    return replace(result, error=_portable(result.error))
