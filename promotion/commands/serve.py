"""`promote serve MODEL`: serve models:/MODEL@ALIAS over HTTP and follow the alias as it moves.

Start-up fails fast with the documented exit codes: the listening address is taken first (a port
in use is invalid input, exit 2), then the alias is resolved once (unknown model or alias: exit 2;
registry unreachable: exit 3). From then on the endpoint never exits because of the registry: a
version that cannot be loaded, or a registry that stops answering, is reported on /version and in
the log while the last good version keeps serving. SIGTERM / Ctrl-C stop it gracefully (requests
in flight finish), exit 0.
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

import click

from promotion.commands import tracking_uri
from promotion.errors import ExitCode, InvalidInput, RedactingFormatter
from promotion.policy import DEFAULT_ALIAS

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
    max_body_bytes: int = 10 * 1024 * 1024
    request_timeout: float = 60.0
    scoring_threads: int = 1
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

    @property
    def return_code(self) -> int:
        return int(ExitCode.OK)


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
    """Run the endpoint until it is stopped."""
    import uvicorn

    from promotion.clientlib import connect
    from promotion.serve_app import create_app
    from promotion.serving import (
        AliasFollower,
        alias_resolver,
        check_alias,
        scratch_dir,
        version_loader,
    )

    sock = listen(options.host, options.port)
    scratch = scratch_dir()
    try:
        client = connect(tracking_uri)
        version = check_alias(client, options.model, options.alias)
        log = logging.getLogger("promotion.serving")
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


@click.command("serve")
@click.argument("model")
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True,
              help="The registered-model alias to serve and follow.")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Interface to listen on (0.0.0.0: every interface, e.g. in a container).")
@click.option("--port", default=DEFAULT_PORT, show_default=True,
              type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--poll-interval", default=DEFAULT_POLL_INTERVAL, show_default=True,
              type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="How often to check where the alias points.")
@click.option("--max-body-bytes", default=ServeOptions.max_body_bytes, show_default=True,
              type=click.IntRange(min=1), metavar="BYTES",
              help="Larger scoring requests are refused with 413.")
@click.option("--request-timeout", default=ServeOptions.request_timeout, show_default=True,
              type=click.FloatRange(min=0.001, min_open=False), metavar="SECONDS",
              help="Scoring that takes longer is answered with 504.")
@click.option("--scoring-threads", default=ServeOptions.scoring_threads, show_default=True,
              type=click.IntRange(min=1), metavar="N",
              help="Scoring requests run at the same time (raise it for models that wait on I/O).")
@click.option("--keep-alive", default=ServeOptions.keep_alive, show_default=True,
              type=click.IntRange(min=1), metavar="SECONDS",
              help="Close idle client connections after this long.")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request (the /metrics endpoint already counts them).")
def command(model: str, alias: str, host: str, port: int, poll_interval: float,
            max_body_bytes: int, request_timeout: float, scoring_threads: int,
            keep_alive: int, access_log: bool) -> ServeResult:
    """Serve models:/MODEL@ALIAS over HTTP, following the alias as it moves.

    \b
    POST /invocations  MLflow's scoring protocol; X-Model-Version names the version used
    GET  /health       200 once a version is loaded
    GET  /version      served version, alias target, last error
    GET  /metrics      Prometheus metrics

    When the alias moves (a promotion or a rollback), the new version is loaded in the
    background and swapped in atomically; a version that cannot be loaded never replaces
    a working one.

    \b
    Exit codes: 0 stopped by SIGTERM, 2 unknown model or alias / port in use /
    bad option, 3 registry unreachable at start-up, 130 interrupted (Ctrl-C).
    """
    if not model.strip():
        raise InvalidInput("MODEL must not be empty")
    if not alias.strip():
        raise InvalidInput("--alias must not be empty")
    _configure_logging()
    options = ServeOptions(model=model, alias=alias, host=host, port=port,
                           poll_interval=poll_interval, max_body_bytes=max_body_bytes,
                           request_timeout=request_timeout, scoring_threads=scoring_threads,
                           keep_alive=keep_alive,
                           access_log=access_log)
    return serve(options, tracking_uri())
