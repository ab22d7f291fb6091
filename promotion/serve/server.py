"""Run `promote serve`: take the address, check every model, then serve until stopped.

Start-up fails fast with the documented exit codes: the model specs are read first (an invalid
one is exit 2), then the listening address is taken (a port in use is invalid input, exit 2),
then every model is read once (unknown model, version or alias: exit 2; registry unreachable:
the model starts from the local cache, or exit 3 when the cache holds nothing of it;
promotion.serve.startup). From then on the endpoint never exits because of the registry: a
version that cannot be loaded, or a registry that stops answering, is reported on /health,
/version and in the log while the last good version keeps serving. SIGTERM / Ctrl-C stop it
gracefully (requests in flight finish), exit 0.

The inference log (`--log-uri`, promotion.monitoring.logstore) is checked the same way, but only
its URI can stop the start: a scheme that is neither SQLite nor PostgreSQL is exit 2 before
anything else; a database that cannot be reached is a warning, and the endpoint serves anyway
while the log's writer keeps trying (what it cannot write is counted on /metrics and /health).

Registry checks (each poll, and the start-up read) are single requests bounded by
`--registry-timeout`, whatever MLflow's process-wide HTTP settings (promotion.registry.bounded):
a registry that drops packets is reported within seconds, not minutes. Downloads keep MLflow's
settings (Promote's bounded defaults, or the user's).

`promote serve --help` imports this module (for the defaults): uvicorn is imported by `serve`.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from promotion.errors import ExitCode, InvalidInput, LogUnavailable, RedactingFormatter
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LogStore, LogWriter
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry.client import connect
from promotion.serve.app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SCORING_THREADS,
    fleet_app,
)
from promotion.serve.batching import DEFAULT_MAX_BATCH_ROWS, DEFAULT_MAX_BATCH_WAIT_MS, BatchLimits
from promotion.serve.budget import MemoryBudget
from promotion.serve.cache import ServeCache, default_cache_dir
from promotion.serve.fleet import build_fleet
from promotion.serve.hooks import HOOK_PATH, SECRET_ENV, secret_from_env
from promotion.serve.loading import scratch_dir
from promotion.serve.shadow import DEFAULT_SHADOW_QUEUE
from promotion.serve.specs import ModelSpec, format_size, parse_specs
from promotion.serve.startup import check_start, follower_for
from promotion.serve.workers import ScoringProcesses

log = logging.getLogger("promotion.serving")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_POLL_INTERVAL = 10.0
# With a webhook secret, MLflow's deliveries are the fast path and polling only catches what they
# miss: a delivery is lost when the MLflow server process that would send it dies (it is sent
# from a thread of that process, once), and each server worker caches its list of webhooks for
# MLFLOW_WEBHOOK_CACHE_TTL (60 s by default), so a webhook just created is not called by every
# worker at once. One check a minute bounds both.
WEBHOOK_POLL_INTERVAL = 60.0
DEFAULT_LOG_QUEUE = 10_000


DEFAULT_REGISTRY_TIMEOUT = 10.0  # seconds a registry check may wait for an answer


@dataclass(frozen=True)
class ServeOptions:
    model: str  # the first SPEC (NAME, NAME@ALIAS or NAME/VERSION)
    alias: str = DEFAULT_ALIAS  # the alias a bare NAME follows
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    poll_interval: float | None = None  # None: DEFAULT_POLL_INTERVAL, or with webhooks on
    # WEBHOOK_POLL_INTERVAL (`poll_interval_for`)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    scoring_threads: int = DEFAULT_SCORING_THREADS
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS  # 0: no batching
    max_batch_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS
    scoring_processes: int | None = None  # None: one when 2+ cores are usable (with batching)
    access_log: bool = False
    # Longer than the idle timeout of common load balancers (60 s): the endpoint, not the
    # balancer, must be the last to close an idle connection, or a request sent on a connection
    # the endpoint is closing fails. uvicorn's own default is 5 s.
    keep_alive: int = 75
    log_uri: str | None = DEFAULT_LOG_URI  # None: no inference log
    log_sample_rate: float = DEFAULT_SAMPLE_RATE
    log_max_rows: int = DEFAULT_MAX_ROWS
    log_queue: int = DEFAULT_LOG_QUEUE
    row_key: str | None = None
    shadow_queue: int = DEFAULT_SHADOW_QUEUE
    more: tuple[str, ...] = ()  # the other SPECs
    lazy: tuple[str, ...] = ()  # models loaded on their first request (evictable)
    memory_budget: int | None = None  # bytes; None: no budget
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no local cache
    registry_timeout: float = DEFAULT_REGISTRY_TIMEOUT

    def specs(self) -> tuple[ModelSpec, ...]:
        """Every model to serve (InvalidInput naming a bad SPEC)."""
        return parse_specs((self.model, *self.more), self.alias, self.lazy)


@dataclass(frozen=True)
class ServeResult:
    """How serving ended: only a clean stop gets here (start-up failures raise)."""

    model: str
    alias: str
    last_version: str | None

    return_code: ClassVar[int] = int(ExitCode.OK)  # a clean stop


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or InvalidInput naming the address (before anything slow)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"--host {host}: cannot resolve: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def poll_interval_for(options: ServeOptions, webhooks: bool) -> float:
    """--poll-interval when given; else 60 s with webhooks on (they are the fast path), 10 s
    without."""
    if options.poll_interval is not None:
        return options.poll_interval
    return WEBHOOK_POLL_INTERVAL if webhooks else DEFAULT_POLL_INTERVAL


def serve(options: ServeOptions, tracking_uri: str | None) -> ServeResult:
    """Log through the redacting formatter and run the endpoint until it is stopped."""
    specs = options.specs()
    _configure_logging()
    processes = scoring_processes(options)
    try:
        return _run(options, specs, tracking_uri, processes)
    finally:
        if processes is not None:
            processes.close()


def scoring_processes(options: ServeOptions) -> ScoringProcesses | None:
    """The scoring processes the options ask for, forked now: before any thread, socket or
    connection of the endpoint exists (None: batches are scored on threads)."""
    count = scoring_processes_for(options)
    if not count:
        return None
    import mlflow.pyfunc  # noqa: F401 - imported once, before the fork, for every process

    # Each process holds the served version and the canary of every model, and the version
    # before them while a swap completes.
    return ScoringProcesses(count, keep=2 * (1 + len(options.more)) + 1)


def scoring_processes_for(options: ServeOptions) -> int:
    """--scoring-processes, or by default one when batching is on, the endpoint serves one model
    and may use two cores or more (with batching off, each request is scored on a thread; an
    endpoint of several models keeps one copy of each, unless asked)."""
    if not options.max_batch_rows:
        return 0
    if options.scoring_processes is not None:
        return options.scoring_processes
    return 1 if usable_cores() >= 2 and not options.more else 0


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, bounded by a container's CPU quota
    (cgroup v2 `cpu.max`, e.g. a Kubernetes CPU limit) when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _run(options: ServeOptions, specs: tuple[ModelSpec, ...], tracking_uri: str | None,
         processes: ScoringProcesses | None) -> ServeResult:
    import uvicorn

    secret = secret_from_env()  # read once; never logged
    poll_interval = poll_interval_for(options, secret is not None)
    store = LogStore(options.log_uri) if options.log_uri is not None else None  # URI checked
    sock = listen(options.host, options.port)
    scratch = scratch_dir()
    try:
        client = connect(tracking_uri)
        cache = ServeCache(options.cache_dir, str(client.tracking_uri)) \
            if options.cache_dir is not None else None
        starts = check_start(client, specs, cache, options.registry_timeout)
        _log_webhooks(secret is not None, poll_interval)
        _log_batching(options, processes)
        budget = MemoryBudget(options.memory_budget, [s.name for s in specs if s.lazy])
        _log_memory(budget, cache)
        followers = [follower_for(client, start, poll_interval=poll_interval, scratch=scratch,
                                  cache=cache, budget=budget,
                                  registry_timeout=options.registry_timeout)
                     for start in starts]
        fleet = build_fleet(followers, budget=budget, log=_open_log(store, options),
                            sample_rate=options.log_sample_rate, max_rows=options.log_max_rows,
                            row_key=options.row_key, max_body_bytes=options.max_body_bytes,
                            request_timeout=options.request_timeout,
                            scoring_threads=max(options.scoring_threads,
                                                len(processes.processes) if processes else 0),
                            shadow_queue=options.shadow_queue, webhook_secret=secret,
                            batching=BatchLimits(options.max_batch_rows,
                                                 options.max_batch_wait_ms / 1000),
                            scorer=processes.score if processes is not None else None)
        app = fleet_app(fleet)
        config = uvicorn.Config(app, log_level="info", access_log=options.access_log,
                                timeout_keep_alive=options.keep_alive,
                                timeout_graceful_shutdown=30, lifespan="on")
        server = uvicorn.Server(config)
        # The port actually bound (--port 0 picks a free one).
        log.info("listening on http://%s:%d", options.host, sock.getsockname()[1])
        _freeze_startup_heap()
        with _sigterm_is_a_clean_stop():
            server.run(sockets=[sock])
        if not server.started:
            raise RuntimeError("the HTTP server did not start; see the log above")
        served = followers[0].state.served
        return ServeResult(specs[0].name, specs[0].label, served.version if served else None)
    finally:
        sock.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if store is not None:
            store.close()


def _log_batching(options: ServeOptions, processes: ScoringProcesses | None) -> None:
    if options.max_batch_rows:
        where = (f"{len(processes.processes)} scoring process(es)" if processes is not None
                 else f"{options.scoring_threads} scoring thread(s)")
        log.info("batching: concurrent requests merged into predict calls of at most %d rows, "
                 "waiting at most %g ms; scored in %s", options.max_batch_rows,
                 options.max_batch_wait_ms, where)
    else:
        log.info("batching: off; %d scoring thread(s)", options.scoring_threads)


def _log_memory(budget: MemoryBudget, cache: ServeCache | None) -> None:
    log.info("local cache: %s", cache.base if cache is not None else "off")
    lazy = ", ".join(sorted(budget.evictable)) or "none"
    if budget.limit is not None:
        log.info("memory budget: %s (lazy models, evicted least recently used first: %s)",
                 format_size(budget.limit), lazy)
    elif budget.evictable:
        log.info("lazy models (loaded on their first request): %s; no memory budget", lazy)


def _log_webhooks(on: bool, poll_interval: float) -> None:
    if on:
        log.info("webhooks: on (POST %s, signed with %s); checking the alias every %g s as "
                 "well", HOOK_PATH, SECRET_ENV, poll_interval)
    else:
        log.info("webhooks: off (%s is not set; deliveries are refused); checking the alias "
                 "every %g s", SECRET_ENV, poll_interval)


def _open_log(store: LogStore | None, options: ServeOptions) -> LogWriter | None:
    """The log's writer, its schema created if the database answers; a warning if it does not
    (serving goes on, and the writer keeps trying)."""
    if store is None:
        log.info("inference log: off")
        return None
    try:
        store.migrate()
        log.info("inference log: %s (rows of %g of the requests, at most %d per request)",
                 store.where, options.log_sample_rate, options.log_max_rows)
    except LogUnavailable as exc:
        log.warning("%s; serving anyway, and writing the log once it answers", exc)
    return LogWriter(store, queue_size=options.log_queue)


def _freeze_startup_heap() -> None:
    """Keep what start-up imported (mlflow, pandas, FastAPI, SQLAlchemy: ~250k objects) out of
    the garbage collector's full collections.

    A full collection walks every tracked object while holding the GIL: ~150 ms here, during
    which no request moves. Requests allocate, the log's writer more so, and each full collection
    lands in some request's latency (bench/monitoring.py measured the p99 of 1-row requests three
    times higher with the log on, and back on par with `gc.freeze()`). Those objects live as long
    as the process anyway; what is loaded later (each served version) is collected as usual.
    """
    gc.collect()
    gc.freeze()


@contextmanager
def _sigterm_is_a_clean_stop() -> Iterator[None]:
    """Make a SIGTERM (how orchestrators stop an endpoint) end in exit 0.

    uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler that
    was installed before it started; with the default handler the process would die by the
    signal after a perfectly clean stop. A handler that does nothing lets `serve` return.
    SIGINT keeps its default and ends as an interrupt (130).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _configure_logging() -> None:
    # Every line goes through `redact`: a load failure's traceback can quote a URI.
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # MLflow's own INFO chatter (artifact downloads) drowns the endpoint's log.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
