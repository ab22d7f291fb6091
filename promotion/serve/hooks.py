"""POST /hooks/mlflow: MLflow's registry webhooks, so a move is followed at once.

MLflow (3.3+) can POST every registry event to a URL: `{"entity", "action", "timestamp",
"data"}`, signed with the webhook's secret (`promotion.engine.signing`: X-MLflow-Delivery-Id,
X-MLflow-Timestamp, X-MLflow-Signature). An alias event (entity `model_version_alias`, action
`created` or `deleted`, data `{"name", "alias", "version"}`) about a served model and an
alias this endpoint follows for it (its alias, the canary alias of the rollout in force, or the
default canary alias, whose creation starts a rollout) wakes that model's follower: it reads the
registry now instead of at the end of its poll interval. Anything else signed and well-formed is
acknowledged and ignored.

Deliveries are fire-and-forget: MLflow sends each one from a thread of the server process that
handled the change, and never again once that process is gone. So a delivery only brings the
next check forward; the follower's polling stays the ground truth, and a lost delivery costs at
most one poll interval.

The handler never calls the registry and never waits for the follower: it checks the size, the
signature (constant time), the freshness and the delivery id (never accepted twice), parses the
JSON and, for a followed alias, sets the wake event of that model's follower (an endpoint
serving several models has one per model; a pinned version follows no alias). No scoring
request waits for it.

The secret comes from PROMOTE_WEBHOOK_SECRET, read once when the endpoint starts
(`secret_from_env`); it is never logged, reported or put in an answer. Without one, every
delivery is refused (401).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from promotion.engine.signing import (
    DELIVERY_ID_HEADER,
    MAX_DELIVERY_ID,
    SECRET_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOLERANCE_SECONDS,
    ReplayGuard,
    verify,
)
from promotion.policy.model import canary_alias
from promotion.serve.follower import AliasFollower, FollowerState, FollowEvent
from promotion.serve.protocol import RequestError
from promotion.serve.routing import json_response, read_body

log = logging.getLogger("promotion.serving")

HOOK_PATH = "/hooks/mlflow"
MAX_HOOK_BYTES = 64 * 1024  # MLflow's registry payloads are a few hundred bytes
ALIAS_ENTITY = "model_version_alias"
# The `outcome` label of promote_serve_webhook_deliveries_total. A delivery without the three
# headers counts as bad_signature, one whose headers cannot be read as malformed.
OUTCOMES = ("accepted", "ignored", "bad_signature", "stale", "replayed", "too_large",
            "malformed", "no_secret")
REFUSALS_LOGGED_EVERY = 60.0  # seconds: one line per reason for refusing, not one per delivery
_ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 409: "RESOURCE_ALREADY_EXISTS",
                413: "PAYLOAD_TOO_LARGE"}


def secret_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The webhook secret, or None when PROMOTE_WEBHOOK_SECRET is unset or blank."""
    value = environ.get(SECRET_ENV, "")
    return value if value.strip() else None


@dataclass(frozen=True)
class Delivery:
    """A signed, well-formed registry event."""

    entity: str
    action: str
    data: dict[str, Any]


def parse_delivery(body: bytes) -> Delivery:
    """The event in a delivery's body, or ValueError saying what is wrong with it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deeply
        raise ValueError(f"malformed JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"the body is a JSON {type(document).__name__}, not an object")
    entity, action, data = document.get("entity"), document.get("action"), document.get("data")
    if not isinstance(entity, str) or not isinstance(action, str) or not isinstance(data, dict):
        raise ValueError("the body must have a string entity and action and an object data")
    return Delivery(entity, action, data)


class _Refused(Exception):
    def __init__(self, status: int, outcome: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.outcome, self.reason, self.message = status, outcome, reason, message


class Webhooks:
    """The POST /hooks/mlflow handler of one app, and its deliveries counted by outcome."""

    def __init__(self, followers: AliasFollower | Mapping[str, AliasFollower],
                 secret: str | None, *, max_body_bytes: int = MAX_HOOK_BYTES,
                 tolerance: float = TOLERANCE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        every = {followers.model: followers} if isinstance(followers, AliasFollower) \
            else dict(followers)
        # A pinned version follows no alias: its deliveries are ignored like another model's.
        self.followers = {name: f for name, f in every.items() if not f.pinned}
        self.enabled = secret is not None
        self.max_body_bytes = max_body_bytes
        self.tolerance = tolerance
        self._secret = secret
        self._clock = clock
        self._lock = threading.Lock()  # the replay guard, the counters, the log's throttle
        self._replays = ReplayGuard(tolerance)
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._logged: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __repr__(self) -> str:  # never the secret
        return f"Webhooks({'on' if self.enabled else 'off'})"

    def counts(self) -> dict[str, int]:
        """Deliveries so far, by outcome."""
        with self._lock:
            return dict(self._counts)

    @staticmethod
    def followed(follower: AliasFollower, state: FollowerState) -> set[str]:
        """The aliases whose events make the follower look now."""
        aliases = {follower.alias, canary_alias(follower.alias)}
        if state.canary is not None:
            aliases.add(state.canary.route.alias)
        return aliases

    async def handle(self, request: Request) -> Response:
        try:
            outcome, response = await self._receive(request)
        except _Refused as refused:
            self._log_refusal(refused.reason, refused.message)
            outcome, response = refused.outcome, json_response(
                {"error_code": _ERROR_CODES[refused.status], "reason": refused.reason,
                 "message": refused.message}, refused.status)
        except ClientDisconnect:  # the sender left while sending: nothing to answer
            return Response(status_code=499)
        with self._lock:
            self._counts[outcome] += 1
        return response

    async def _receive(self, request: Request) -> tuple[str, Response]:
        if self._secret is None:
            raise _Refused(401, "no_secret", "no_secret", "this endpoint has no webhook secret "
                           f"configured: set {SECRET_ENV} where promote serve starts (the "
                           "webhook's secret in MLflow); until then every delivery is refused")
        try:
            body = await read_body(request, self.max_body_bytes)
        except RequestError as exc:
            raise _Refused(413, "too_large", "too_large", exc.message) from exc
        now = self._clock()
        delivery_id = self._verified(request, body, now)
        with self._lock:
            first = self._replays.first_time(delivery_id, now)
        if not first:
            raise _Refused(409, "replayed", "replayed", f"delivery {delivery_id!r} was already "
                           "received; it is not applied twice")
        try:
            delivery = parse_delivery(body)
        except ValueError as exc:
            raise _Refused(400, "malformed", "malformed", str(exc)) from exc
        return self._dispatch(delivery, delivery_id, now)

    def _verified(self, request: Request, body: bytes, now: float) -> str:
        """The delivery id of a delivery signed with the secret and fresh; else _Refused."""
        assert self._secret is not None
        verdict = verify(self._secret, request.headers, body, now, tolerance=self.tolerance)
        if verdict.ok and verdict.delivery_id is not None:
            return verdict.delivery_id
        if verdict.reason == "missing_headers":
            missing = [name for name in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
                       if not request.headers.get(name)]
            raise _Refused(401, "bad_signature", "missing_headers", f"no {', '.join(missing)} "
                           "header (MLflow signs a delivery only when its webhook has a secret)")
        if verdict.reason == "malformed_headers":
            raise _Refused(400, "malformed", "malformed_headers", f"{TIMESTAMP_HEADER} must be "
                           f"Unix seconds and {DELIVERY_ID_HEADER} at most {MAX_DELIVERY_ID} "
                           "characters")
        if verdict.reason == "stale":
            age = now - int(request.headers[TIMESTAMP_HEADER])
            raise _Refused(401, "stale", "stale", f"the delivery is timestamped {age:+.0f} s from "
                           f"this endpoint's clock; at most {self.tolerance:g} s either way is "
                           "accepted (check both clocks)")
        raise _Refused(401, "bad_signature", "bad_signature", "the signature does not match: "
                       f"the webhook's secret is not {SECRET_ENV}, or the body changed on the way")

    def _dispatch(self, delivery: Delivery, delivery_id: str, now: float) -> tuple[str, Response]:
        data = delivery.data
        alias, name = data.get("alias"), data.get("name")
        follower = self.followers.get(name) if isinstance(name, str) else None
        if follower is None or delivery.entity != ALIAS_ENTITY or not isinstance(alias, str) \
                or alias not in self.followed(follower, follower.state):
            log.debug("webhook %s.%s (delivery %r): nothing this endpoint follows",
                      delivery.entity, delivery.action, delivery_id)
            return "ignored", Response(status_code=204)
        version = data.get("version")
        event = FollowEvent(now, delivery_id, alias, delivery.action,
                            str(version) if isinstance(version, str | int) else None)
        follower.nudge("webhook", event)
        log.info("webhook: %s@%s %s%s (delivery %r); checking the registry now",
                 follower.model, alias, delivery.action,
                 f" -> version {event.version}" if event.version else "", delivery_id)
        return "accepted", json_response({"accepted": True, "delivery_id": delivery_id,
                                          "checking": f"{follower.model}@{alias}"}, 202)

    def _log_refusal(self, reason: str, message: str) -> None:
        """One line per reason and minute at most: a sender that keeps failing (or a flood of
        junk) cannot fill the endpoint's log."""
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(reason)
            if last is not None and now - last < REFUSALS_LOGGED_EVERY:
                self._quiet[reason] = self._quiet.get(reason, 0) + 1
                return
            self._logged[reason] = now
            quiet = self._quiet.pop(reason, 0)
        more = f" ({quiet} more since the last such line)" if quiet else ""
        log.warning("webhook delivery refused (%s): %s%s", reason, message, more)
