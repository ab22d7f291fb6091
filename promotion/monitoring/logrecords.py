"""What the inference log holds and answers, as frozen values: a request as the endpoint saw it,
a version's requests summed up over a window, one ground-truth label, what a feedback batch wrote.

Plain dataclasses with no third-party import: the endpoint builds a `RequestRecord` on the
request path, and that must cost nothing but the object itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["ok", "client_error", "model_error"]
# What a record is about its request: the answer the client got; a canary's failed attempt before
# the primary answered instead; or a shadow copy scored by the canary off the request path. A
# label joins the rows of every record of its request (each version's prediction of that row).
Role = Literal["answer", "attempt", "shadow"]


def outcome_of(status: int) -> Outcome:
    """2xx ok, 4xx the client's error, everything else (5xx) the endpoint's or the model's."""
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "client_error"
    return "model_error"


@dataclass(frozen=True)
class RequestRecord:
    """One scoring request, as the endpoint saw it."""

    request_id: str
    at: datetime  # aware UTC, when the request arrived
    model: str
    alias: str
    version: str | None  # the version that scored it (None: nothing was loaded)
    rows: int  # rows in the request (0 when it could not be parsed)
    latency_ms: float
    outcome: Outcome
    status: int  # the HTTP status answered
    inputs: Any = None  # sampled: a pandas DataFrame of at most max_rows rows, or None
    predictions: Any = None  # the raw predictions for those rows (ndarray/list/DataFrame), or None
    row_keys: tuple[str, ...] | None = None  # the row-key column's values for the sampled rows
    role: Role = "answer"
    # The sampled rows already encoded where the request was scored (instead of inputs,
    # predictions and row_keys): logencode.encode_rows.
    encoded: EncodedRows | None = None


@dataclass(frozen=True)
class EncodedRows:
    """A request's logged rows, encoded: one JSON object per input row, (number, JSON text) per
    prediction, the row keys."""

    lines: list[str]
    predictions: list[tuple[float | None, str | None]]
    keys: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RequestSummary:
    """One version's requests in a window. Latencies are over ok requests only (None: none was
    ok), taken as numpy's percentile with method="lower": the value at index floor(q * (n - 1))
    of the n latencies in ascending order."""

    requests: int
    rows: int
    ok: int
    client_errors: int
    model_errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        """Requests the endpoint or the model failed, as a share of all (None: no request)."""
        return self.model_errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Label:
    """One ground-truth value, for row `row` of request `request_id`, or for the most recent
    logged row whose row-key column had the value `row_key`."""

    label: float | str
    request_id: str | None = None
    row: int = 0  # the row of that request (0-based)
    row_key: str | None = None


@dataclass(frozen=True)
class FeedbackResult:
    """What one feedback batch wrote."""

    written: int
    by_version: dict[str, int]  # labels per version that served the labelled request
