"""`promote serve MODEL`: serve models:/MODEL@ALIAS over HTTP and follow the alias as it moves.

The click layer only: options -> `ServeOptions` -> `promotion.serve.server.serve`. Start-up and
shutdown (exit codes, SIGTERM, the log) are described in `promotion.serve.server`.
"""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.errors import InvalidInput
from promotion.policy.model import DEFAULT_ALIAS
from promotion.serve.server import (
    DEFAULT_HOST,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PORT,
    ServeOptions,
    ServeResult,
    serve,
)


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
    options = ServeOptions(model=model, alias=alias, host=host, port=port,
                           poll_interval=poll_interval, max_body_bytes=max_body_bytes,
                           request_timeout=request_timeout, scoring_threads=scoring_threads,
                           keep_alive=keep_alive,
                           access_log=access_log)
    return serve(options, tracking_uri())
