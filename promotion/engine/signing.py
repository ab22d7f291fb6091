"""Signed deliveries, as MLflow's registry webhooks sign them (so one verifier serves both).

MLflow (3.3+) sends every webhook delivery with three headers: `X-MLflow-Delivery-Id` (a unique
id), `X-MLflow-Timestamp` (Unix seconds) and `X-MLflow-Signature: v1,<base64 HMAC-SHA256>` over
`<delivery id>.<timestamp>.<body>` with the webhook's secret (the Standard Webhooks scheme).
Promote's own decision events are signed the same way (`sign`), and `promote serve` checks
MLflow's with `verify`: the signature compared in constant time (`hmac.compare_digest`), the
timestamp within a freshness window, and the delivery id never accepted twice (`ReplayGuard`).

Pure: no I/O; the clock is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

SECRET_ENV = "PROMOTE_WEBHOOK_SECRET"  # the webhook secret: an endpoint's, the server's copy
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
VERSION = "v1"
TOLERANCE_SECONDS = 300.0  # a delivery older (or newer) than this is refused as stale
MAX_DELIVERY_ID = 128


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes | str) -> str:
    """`v1,<base64 HMAC-SHA256 of "delivery_id.timestamp.body">`, exactly as MLflow makes it."""
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    signed = f"{delivery_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode('ascii')}"


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed delivery."""
    stamp = str(int(timestamp))
    return {DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature(secret, delivery_id, stamp, body)}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # why not (for the log and a counter's label), or "ok"
    delivery_id: str | None = None


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float, *,
           tolerance: float = TOLERANCE_SECONDS) -> Verdict:
    """Whether a delivery is signed with `secret` and fresh. `headers` is case-insensitive
    (a Starlette Headers) or lower-cased. Replays are the caller's (`ReplayGuard`)."""
    def header(name: str) -> str | None:
        return headers.get(name) or headers.get(name.lower())

    delivery, stamp, signed = (header(DELIVERY_ID_HEADER), header(TIMESTAMP_HEADER),
                               header(SIGNATURE_HEADER))
    if not delivery or not stamp or not signed:
        return Verdict(False, "missing_headers")
    if len(delivery) > MAX_DELIVERY_ID or not stamp.isdigit():
        return Verdict(False, "malformed_headers")
    if abs(now - int(stamp)) > tolerance:
        return Verdict(False, "stale", delivery)
    expected = signature(secret, delivery, stamp, body).encode()
    # Several signatures may be sent, space-separated (a secret being rotated); any one counts.
    # Every candidate is compared in full, in constant time.
    matched = False
    for candidate in signed.split():
        matched |= hmac.compare_digest(candidate.encode(), expected)
    return Verdict(True, "ok", delivery) if matched else Verdict(False, "bad_signature",
                                                                 delivery)


class ReplayGuard:
    """Delivery ids seen within the freshness window: a second delivery with one is a replay.

    Bounded: at most `capacity` ids are kept (the oldest go first); an id older than the window
    can go, since its timestamp alone now refuses it. Not thread-safe: callers hold a lock.
    """

    def __init__(self, window: float = TOLERANCE_SECONDS, capacity: int = 100_000) -> None:
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, delivery_id: str, now: float) -> bool:
        """Record `delivery_id`; False when it was seen before (within the window)."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= 2 * self.window and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True
