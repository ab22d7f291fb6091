"""The one way Promote talks to MLflow: a client with bounded retries and mapped errors.

mlflow is imported inside functions so that modules importing this one stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from promotion.errors import InvalidInput, RegistryError, redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

# MLflow's own HTTP retry settings, with bounds suited to a gate (MLflow's defaults retry 7 times
# with a backoff factor of 2 and a 120 s timeout: minutes before an unreachable server is reported).
# A value the user set in the environment always wins.
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


# A gate runs in CI with credentials in its environment: it sends nothing anywhere but the
# tracking server unless the user opts in (MLFLOW_DISABLE_TELEMETRY=false).
# MLflow also prints "View run at <tracking URI>" to stdout when a run ends: that would corrupt
# `--json` output and is one more place a URI could leak.
PRIVACY_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def apply_retry_defaults() -> None:
    for name, value in {**RETRY_DEFAULTS, **PRIVACY_DEFAULTS}.items():
        os.environ.setdefault(name, value)


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client for `tracking_uri` (None: MLFLOW_TRACKING_URI, else MLflow's embedded default).

    Also makes it the process-wide tracking URI, so `models:/` URIs and fluent logging resolve
    against the same server.
    """
    apply_retry_defaults()
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(
        tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri()
    )


def describe_uri(tracking_uri: str | None) -> str:
    """The tracking URI as it may be printed (credentials removed)."""
    import mlflow

    return redact(tracking_uri or mlflow.get_tracking_uri())


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
