"""Run `promote serve`: take the address, check the alias, then serve until stopped.

Start-up fails fast with the documented exit codes: the listening address is taken first (a port
in use is invalid input, exit 2), then the alias (and the canary of a rollout in force) is read
once (unknown model or alias: exit 2; registry unreachable: exit 3). From then on the endpoint
never exits because of the registry: a version that cannot be loaded, or a registry that stops
answering, is reported on /version and in the log while the last good version keeps serving.
SIGTERM / Ctrl-C stop it gracefully (requests in flight finish), exit 0.

The inference log (`--log-uri`, promotion.monitoring.logstore) is checked the same way, but only
its URI can stop the start: a scheme that is neither SQLite nor PostgreSQL is exit 2 before
anything else; a database that cannot be reached is a warning, and the endpoint serves anyway
while the log's writer keeps trying (what it cannot write is counted on /metrics and /health).

`promote serve --help` imports this module (for the defaults): uvicorn is imported by `serve`.
"""

from __future__ import annotations

import gc
import logging
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from promotion.errors import ExitCode, InvalidInput, LogUnavailable, RedactingFormatter
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LogStore, LogWriter
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry.client import connect
from promotion.registry.rollouts import read_route
from promotion.serve.app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SCORING_THREADS,
    create_app,
)
from promotion.serve.follower import AliasFollower, alias_resolver, scratch_dir, version_loader
from promotion.serve.hooks import HOOK_PATH, SECRET_ENV, secret_from_env
from promotion.serve.shadow import DEFAULT_SHADOW_QUEUE

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


@dataclass(frozen=True)
class ServeOptions:
    model: str
    alias: str = DEFAULT_ALIAS
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    poll_interval: float | None = None  # None: DEFAULT_POLL_INTERVAL, or with webhooks on
    # WEBHOOK_POLL_INTERVAL (`poll_interval_for`)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    scoring_threads: int = DEFAULT_SCORING_THREADS
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
    import uvicorn

    _configure_logging()
    secret = secret_from_env()  # read once; never logged
    poll_interval = poll_interval_for(options, secret is not None)
    store = LogStore(options.log_uri) if options.log_uri is not None else None  # URI checked
    sock = listen(options.host, options.port)
    scratch = scratch_dir()
    try:
        client = connect(tracking_uri)
        route = read_route(client, options.model, options.alias)
        log.info("%s@%s points at version %s; loading it", options.model, options.alias,
                 route.version)
        if route.canary is not None:
            canary = route.canary
            log.info("rollout in force: version %s on @%s (%s mode), step %d of %d, %g%% of "
                     "requests", canary.version, canary.alias, canary.mode, canary.step + 1,
                     canary.steps, canary.share * 100)
        elif route.note:
            log.warning("%s", route.note)
        _log_webhooks(secret is not None, poll_interval)
        follower = AliasFollower(options.model, options.alias, poll_interval,
                                 resolve=alias_resolver(client, options.model, options.alias),
                                 load=version_loader(client, options.model, scratch))
        app = create_app(follower, max_body_bytes=options.max_body_bytes,
                         request_timeout=options.request_timeout,
                         scoring_threads=options.scoring_threads,
                         log=_open_log(store, options), sample_rate=options.log_sample_rate,
                         max_rows=options.log_max_rows, row_key=options.row_key,
                         shadow_queue=options.shadow_queue, webhook_secret=secret)
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
        served = follower.state.served
        return ServeResult(options.model, options.alias, served.version if served else None)
    finally:
        sock.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if store is not None:
            store.close()


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
