"""`promote serve SPEC [SPEC ...]`: serve models over HTTP and follow their aliases as they move.

The click layer only: options -> `ServeOptions` -> `promotion.serve.server.serve`. Start-up and
shutdown (exit codes, SIGTERM, the log) are described in `promotion.serve.server`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from promotion.commands import extras, tracking_uri
from promotion.errors import InvalidInput, requires_extra
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LOG_URI_ENV, engine_url
from promotion.policy.model import DEFAULT_ALIAS
from promotion.serve.cache import default_cache_dir
from promotion.serve.hooks import SECRET_ENV
from promotion.serve.server import (
    DEFAULT_HOST,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_REGISTRY_TIMEOUT,
    WEBHOOK_POLL_INTERVAL,
    ServeOptions,
    ServeResult,
    serve,
)
from promotion.serve.specs import parse_size, parse_specs


@click.command("serve")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC [SPEC ...]")
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True,
              help="The registered-model alias a bare NAME follows.")
@click.option("--lazy", "lazy", multiple=True, metavar="NAME",
              help="Load this model on its first request, not at start (repeatable); only lazy "
                   "models are evicted under --memory-budget.")
@click.option("--memory-budget", default=None, metavar="SIZE",
              help="Keep the models' estimated footprint (their size on disk) under SIZE "
                   "(e.g. 2GiB, 512MiB) by unloading the least recently used lazy models.")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="Where served versions are kept, to start from when the registry cannot be "
                   "read (default $XDG_CACHE_HOME/promote/serve or ~/.cache/promote/serve; "
                   "'none' turns it off).")
@click.option("--registry-timeout", default=DEFAULT_REGISTRY_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="How long one registry check may wait for an answer before the registry is "
                   "reported unreachable.")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Interface to listen on (0.0.0.0: every interface, e.g. in a container).")
@click.option("--port", default=DEFAULT_PORT, show_default=True,
              type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--poll-interval", default=None, type=click.FloatRange(min=0.1),
              metavar="SECONDS",
              help=f"How often to check where the alias points (default "
                   f"{DEFAULT_POLL_INTERVAL:g}; {WEBHOOK_POLL_INTERVAL:g} with {SECRET_ENV} "
                   f"set, as webhooks are then the fast path).")
@click.option("--max-body-bytes", default=ServeOptions.max_body_bytes, show_default=True,
              type=click.IntRange(min=1), metavar="BYTES",
              help="Larger scoring requests are refused with 413.")
@click.option("--request-timeout", default=ServeOptions.request_timeout, show_default=True,
              type=click.FloatRange(min=0.001, min_open=False), metavar="SECONDS",
              help="Scoring that takes longer is answered with 504.")
@click.option("--scoring-threads", default=ServeOptions.scoring_threads, show_default=True,
              type=click.IntRange(min=1), metavar="N",
              help="Scoring requests run at the same time (raise it for models that wait on I/O).")
@click.option("--max-batch-rows", default=ServeOptions.max_batch_rows, show_default=True,
              type=click.IntRange(min=0), metavar="N",
              help="Merge concurrent requests for the same version into one predict call of at "
                   "most N rows (0: score every request alone).")
@click.option("--max-batch-wait-ms", default=ServeOptions.max_batch_wait_ms, show_default=True,
              type=click.FloatRange(min=0.0), metavar="MS",
              help="The longest a batch waits for requests still being read; a lone request "
                   "on an idle endpoint is scored at once.")
@click.option("--scoring-processes", default=None, type=click.IntRange(min=0), metavar="N",
              help="Score batches in N processes of their own, off the endpoint's GIL "
                   "(default: 1 when two or more cores are usable, else 0: on threads).")
@click.option("--keep-alive", default=ServeOptions.keep_alive, show_default=True,
              type=click.IntRange(min=1), metavar="SECONDS",
              help="Close idle client connections after this long.")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request (the /metrics endpoint already counts them).")
@click.option("--log-uri", default=DEFAULT_LOG_URI, show_default=True, envvar=LOG_URI_ENV,
              show_envvar=True, metavar="URI",
              help="The inference log: sqlite:///PATH or postgresql://USER@HOST/DB; "
                   "'none' turns it off.")
@click.option("--log-sample-rate", default=ServeOptions.log_sample_rate, show_default=True,
              type=click.FloatRange(0.0, 1.0), metavar="FRACTION",
              help="Share of requests whose rows are logged (every request itself is).")
@click.option("--log-max-rows", default=ServeOptions.log_max_rows, show_default=True,
              type=click.IntRange(min=0), metavar="N",
              help="Rows of one request logged at most.")
@click.option("--log-queue", default=ServeOptions.log_queue, show_default=True,
              type=click.IntRange(min=1), metavar="N",
              help="Records waiting for the log database at most; beyond, they are dropped "
                   "and counted.")
@click.option("--row-key", default=None, metavar="COLUMN",
              help="An input column whose value identifies a row, for POST /feedback.")
@click.option("--shadow-queue", default=ServeOptions.shadow_queue, show_default=True,
              type=click.IntRange(min=1), metavar="N",
              help="Request copies waiting for a shadow canary at most; beyond, they are "
                   "dropped and counted.")
def command(specs: tuple[str, ...], alias: str, lazy: tuple[str, ...],
            memory_budget: str | None, cache_dir: str | None, log_uri: str,
            row_key: str | None, **plain: Any) -> ServeResult:
    """Serve models over HTTP, following their aliases as they move.

    \b
    SPEC is NAME (follows --alias), NAME@ALIAS, or NAME/VERSION (that version only).

    \b
    POST /invocations  MLflow's scoring protocol; X-Model-Version names the version used
    POST /feedback     ground truth for logged requests (X-Request-Id and row)
    GET  /health       200 once a version is loaded
    GET  /version      served version, alias target, last error
    GET  /metrics      Prometheus metrics
    POST /hooks/mlflow MLflow registry webhooks (signed with $PROMOTE_WEBHOOK_SECRET)
    With several SPECs, each model answers under /models/NAME/ (invocations,
    feedback, health, version), and /health and /version at the root cover all.

    Every request is logged to --log-uri (with the rows of --log-sample-rate of
    them), off the request path: a slow or dead log database never fails a request.

    Concurrent requests for the same version are scored in one predict call
    (--max-batch-rows), in a scoring process of their own (--scoring-processes).

    When the alias moves (a promotion or a rollback), the new version is loaded in the
    background and swapped in atomically; a version that cannot be loaded never replaces
    a working one. With PROMOTE_WEBHOOK_SECRET set, MLflow's webhook for an alias
    event makes the endpoint check at once; polling still catches what is lost.

    During a rollout (`promote gate` with a rollout: block), the canary alias's version
    answers its share of requests (canary mode; X-Routing-Key keeps a client on one
    version) or gets a copy of them (shadow mode); it never affects readiness.

    Each version served is kept in a local cache (--cache-dir): when the registry
    cannot be read at start-up, a model starts from it, reported as degraded.

    \b
    Exit codes: 0 stopped by SIGTERM, 2 unknown model or alias / invalid SPEC /
    port in use / bad option, 3 registry unreachable at start-up and no cached
    version, 130 interrupted (Ctrl-C).
    """
    with requires_extra("serve", "promote serve"):
        extras.for_log(log_uri)
    if not alias.strip():
        raise InvalidInput("--alias must not be empty")
    parse_specs(specs, alias, lazy)  # one line naming a bad SPEC, before anything else
    if row_key is not None and not row_key.strip():
        raise InvalidInput("--row-key must not be empty")
    # The other options are ServeOptions' fields as they are.
    options = ServeOptions(model=specs[0], more=specs[1:], lazy=lazy, alias=alias,
                           memory_budget=_budget(memory_budget), cache_dir=_cache_dir(cache_dir),
                           log_uri=_log_uri(log_uri), row_key=row_key, **plain)
    with requires_extra("serve", "promote serve"):
        return serve(options, tracking_uri())


def _log_uri(value: str) -> str | None:
    """--log-uri: None for 'none', else a URI whose scheme is checked."""
    uri = None if value.strip().lower() == "none" else value.strip()
    if uri is not None:
        try:
            engine_url(uri)
        except InvalidInput as exc:
            raise InvalidInput(f"--log-uri: {exc}") from exc
    return uri


def _budget(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidInput(f"--memory-budget: {exc}") from exc


def _cache_dir(value: str | None) -> Path | None:
    """--cache-dir: the default when not given, None for 'none', else the directory."""
    if value is None:
        return default_cache_dir()
    if not value.strip():
        raise InvalidInput("--cache-dir must not be empty ('none' turns the cache off)")
    return None if value.strip().lower() == "none" else Path(value).expanduser()
