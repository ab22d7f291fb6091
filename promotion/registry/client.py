"""The one way Promote talks to MLflow: a client with bounded retries and mapped errors.

mlflow is imported inside functions so that modules importing this one stay cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from promotion.errors import InvalidInput, RegistryError, redact, requires_extra

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")

# MLflow's own HTTP retry settings, with bounds suited to a gate (MLflow's defaults retry 7 times
# with a backoff factor of 2 and a 120 s timeout: minutes before an unreachable server is reported).
# Worst case for one request to a server that accepts connections and never answers: 3 attempts
# of 10 s plus the backoff between them (0 s, then 2 s, each with up to 0.5 s jitter), about
# 34 s (tests/test_silent_registry.py measures it); a refused connection fails in about 2.5 s.
# The first request that fails so ends the command (README: "How long a failure takes"). A value
# the user set always wins.
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


# A gate runs in CI with credentials in its environment: it sends nothing anywhere but the
# tracking server unless the user opts in (MLFLOW_DISABLE_TELEMETRY=false).
# MLflow also prints "View run at <tracking URI>" to stdout when a run ends: that would corrupt
# `--json` output and is one more place a URI could leak.
PRIVACY_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# A tracking server that proxies an S3 artifact store (`--artifacts-destination s3://...`) tells
# MLflow 3.17 clients to download every file, and upload files of 500 MB or more, through presigned
# URLs, straight from the bucket: an endpoint or a CI job that can reach the tracking server but
# not the bucket (the point of proxying) would never load a version. Promote keeps transfers on
# the server; where every client reaches the bucket, set these to true to spare the server.
PROXY_DEFAULTS = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
}


def apply_retry_defaults() -> None:
    """MLflow's HTTP, privacy and transfer settings for this process: the ONE place Promote
    changes process-wide state.

    MLflow reads its retry, timeout, telemetry and printing settings from environment variables at
    request time and offers no per-client setting, so they are set here, once, as defaults (a
    value the user set always wins). Called by `connect` and, before MLflow is first imported, by
    the commands that log through MLflow's fluent API.
    """
    for name, value in {**RETRY_DEFAULTS, **PRIVACY_DEFAULTS, **PROXY_DEFAULTS}.items():
        os.environ.setdefault(name, value)


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client for `tracking_uri` (None: MLFLOW_TRACKING_URI, else MLflow's embedded default).

    The client carries its own URIs: nothing below depends on MLflow's process-wide tracking URI,
    which this does not change (see `use_for_fluent_logging` for the one caller that must).
    """
    apply_retry_defaults()
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    # MLFLOW_REGISTRY_URI, when set, names a separate registry, as it does for MLflow itself.
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    for store in dict.fromkeys((uri, registry)):
        _check_store(store)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry)


# A database store (MLflow's embedded default is sqlite:///mlflow.db) is read through MLflow's
# SQL layer, which mlflow-skinny leaves out; an HTTP server needs nothing more.
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def _check_store(uri: str) -> None:
    if uri.partition(":")[0].partition("+")[0].lower() in DATABASE_SCHEMES:
        with requires_extra("local", f"the tracking store {redact(uri)}"):
            pass


def use_for_fluent_logging(client: MlflowClient) -> None:
    """Point MLflow's fluent API (mlflow.start_run, mlflow.sklearn.log_model) at `client`'s server.

    Training logs runs and models through the fluent API, which has no per-call server argument:
    this sets MLflow's process-wide tracking URI (MLflow also exports it as MLFLOW_TRACKING_URI),
    and is the only code that does. The registry URI is left alone: training registers through
    the client, and every other read and download uses the client's own URIs.
    """
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)


def unless_missing(call: Callable[[], T]) -> T | None:
    """`call()`, or None when MLflow answers that the thing it names does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


@contextmanager
def quiet_mlflow_logs() -> Iterator[None]:
    """MLflow's INFO chatter (schema migrations, "waiting for model version") hides the story."""
    import mlflow  # noqa: F401 - configures its loggers on import: set the level after that

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def describe_uri(client: MlflowClient) -> str:
    """The client's tracking URI as it may be printed (credentials removed)."""
    return redact(str(client.tracking_uri))


def is_not_found(exc: Exception) -> bool:
    """True when an MlflowException says a model / version / alias does not exist.

    A missing alias is reported as INVALID_PARAMETER_VALUE, a missing model or version as
    RESOURCE_DOES_NOT_EXIST; a connection failure is neither.
    """
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """Map MLflow failures while doing `what` to Promote's errors.

    Not-found -> InvalidInput (exit 2); everything else (connection refused, timeouts, 5xx after
    MLflow's retries) -> RegistryError (exit 3).
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if is_not_found(exc):
            raise InvalidInput(f"{what}: {redact(exc.message)}") from exc
        raise RegistryError(f"{what}: {redact(_first_line(exc.message))}") from exc
    except OSError as exc:  # requests' ConnectionError derives from OSError
        raise RegistryError(f"{what}: {redact(_first_line(str(exc)))}") from exc


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
