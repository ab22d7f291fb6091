"""Run `promote serve`: take the address, check the alias, then serve until stopped.

Start-up fails fast with the documented exit codes: the listening address is taken first (a port
in use is invalid input, exit 2), then the alias is resolved once (unknown model or alias: exit 2;
registry unreachable: exit 3). From then on the endpoint never exits because of the registry: a
version that cannot be loaded, or a registry that stops answering, is reported on /version and in
the log while the last good version keeps serving. SIGTERM / Ctrl-C stop it gracefully (requests
in flight finish), exit 0.

`promote serve --help` imports this module (for the defaults): uvicorn is imported by `serve`.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from promotion.errors import ExitCode, InvalidInput, RedactingFormatter
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry.client import connect
from promotion.serve.app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SCORING_THREADS,
    create_app,
)
from promotion.serve.follower import (
    AliasFollower,
    alias_resolver,
    check_alias,
    scratch_dir,
    version_loader,
)

log = logging.getLogger("promotion.serving")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_POLL_INTERVAL = 10.0


@dataclass(frozen=True)
class ServeOptions:
    model: str
    alias: str = DEFAULT_ALIAS
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    scoring_threads: int = DEFAULT_SCORING_THREADS
    access_log: bool = False
    # Longer than the idle timeout of common load balancers (60 s): the endpoint, not the
    # balancer, must be the last to close an idle connection, or a request sent on a connection
    # the endpoint is closing fails. uvicorn's own default is 5 s.
    keep_alive: int = 75


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


def serve(options: ServeOptions, tracking_uri: str | None) -> ServeResult:
    """Log through the redacting formatter and run the endpoint until it is stopped."""
    import uvicorn

    _configure_logging()
    sock = listen(options.host, options.port)
    scratch = scratch_dir()
    try:
        client = connect(tracking_uri)
        version = check_alias(client, options.model, options.alias)
        log.info("%s@%s points at version %s; loading it", options.model, options.alias, version)
        follower = AliasFollower(options.model, options.alias, options.poll_interval,
                                 resolve=alias_resolver(client, options.model, options.alias),
                                 load=version_loader(client, options.model, scratch))
        app = create_app(follower, max_body_bytes=options.max_body_bytes,
                         request_timeout=options.request_timeout,
                         scoring_threads=options.scoring_threads)
        config = uvicorn.Config(app, log_level="info", access_log=options.access_log,
                                timeout_keep_alive=options.keep_alive,
                                timeout_graceful_shutdown=30, lifespan="on")
        server = uvicorn.Server(config)
        # The port actually bound (--port 0 picks a free one).
        log.info("listening on http://%s:%d", options.host, sock.getsockname()[1])
        with _sigterm_is_a_clean_stop():
            server.run(sockets=[sock])
        if not server.started:
            raise RuntimeError("the HTTP server did not start; see the log above")
        served = follower.state.served
        return ServeResult(options.model, options.alias, served.version if served else None)
    finally:
        sock.close()
        shutil.rmtree(scratch, ignore_errors=True)


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
