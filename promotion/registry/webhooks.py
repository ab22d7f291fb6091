"""The MLflow webhooks that point the central node at serving endpoints.

MLflow (3.3 and later, with a SQL backend store) POSTs registry events to a webhook's URL, signed
with the webhook's secret (promotion.engine.signing says how). `promote webhooks ensure` keeps one
webhook per endpoint: found by name, created when absent, otherwise brought to the URL, events and
status asked for. MLflow never returns a secret, so a stored one cannot be compared: every ensure
sends it again.

Every call goes through `registry_errors`. A server without the webhook API (older than 3.3, or a
file store) is a RegistryError (exit 3) saying what webhooks need; a URL the server refuses is
InvalidInput (exit 2) with the server's reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from promotion.engine.webhooks import EnsureResult, WebhookTest
from promotion.errors import InvalidInput, RegistryError, redact
from promotion.registry.client import registry_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.webhook import Webhook

DEFAULT_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
NAME_PREFIX = "promote-serve-"
ACTIVE = "ACTIVE"
SCHEMES = ("http", "https")
PAGE_SIZE = 100
BODY_EXCERPT = 200  # characters of an endpoint's answer to a test delivery that are shown
# MLflow's rule for webhook names (mlflow.utils.validation._WEBHOOK_NAME_REGEX).
_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
_NOT_IN_NAME = re.compile(r"[^a-z0-9._-]+")

SQL_SERVER = "webhooks need an MLflow 3.3 (or later) server with a SQL backend store"
NEEDS = f"{SQL_SERVER} (docs/central-node.md: Webhooks to the endpoints)"
# A 5xx on a webhook call: a file store answers so, and so does a server that cannot decrypt the
# secrets it stored (MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY unset, or changed since).
SERVER_FAILED = (f"if the server is reachable: {SQL_SERVER}, and "
                 "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY set, the same on every worker and replica, "
                 "or it cannot read back the secrets it stored")
# A test waits on the endpoint: MLflow tries a delivery 4 times, up to 30 s each, plus backoff.
TEST_TIMED_OUT = ("if the server is reachable, it may still be waiting on the endpoint: MLflow "
                  "tries a delivery up to 1 + MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES (3) times, "
                  "waiting up to MLFLOW_WEBHOOK_REQUEST_TIMEOUT (30 s) each, longer than Promote "
                  "waits for the server; for MLflow's verdict on an endpoint that does not "
                  "answer, run with MLFLOW_HTTP_REQUEST_TIMEOUT=150 "
                  "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0")
REFUSED = ("the server decides which URLs it accepts: MLFLOW_WEBHOOK_ALLOWED_SCHEMES (https only "
           "by default) and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS (docs/central-node.md)")
ADMIN_ONLY = "with MLflow's basic auth, only admin users may read or write webhooks"


class WebhooksUnavailable(RegistryError):
    """The server cannot do what webhooks need (exit 3): the message, then why it may be."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    def lines(self) -> list[str]:
        return [str(self), self.hint]


class UrlRefused(InvalidInput):
    """The server refused the webhook's URL (exit 2): its reason, then where that is set."""

    def lines(self) -> list[str]:
        return [str(self), REFUSED]


@dataclass(frozen=True)
class WebhookSpec:
    """The webhook asked for. The secret is never part of what is shown (repr=False)."""

    name: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WebhookState:
    """A webhook as the server holds it (MLflow never returns the secret)."""

    webhook_id: str
    name: str
    url: str
    events: tuple[str, ...]
    status: str
    created: int  # creation time, ms


# -- what is asked: checked before anything is sent ---------------------------------------------


def default_name(url: str) -> str:
    """`promote-serve-<host>-<port>`: the colon of host:port becomes `-`, since MLflow allows only
    lowercase letters, digits, `.`, `_` and `-` in a webhook name (63 characters at most)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    tail = _NOT_IN_NAME.sub("-", f"{parts.hostname or ''}-{port}".lower())
    name = NAME_PREFIX + tail
    if len(name) > 63:  # keep it unique: a digest of the whole host and port
        digest = hashlib.sha256(tail.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-._')}-{digest}"
    return name


def check_url(url: str) -> str:
    """The endpoint URL, or InvalidInput: http(s), a host, and no credentials in it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"not a URL: {redact(url)!r} ({exc})") from exc
    if parts.scheme not in SCHEMES:
        raise InvalidInput(f"the webhook URL must start with http:// or https://, not "
                           f"{redact(url)!r} (e.g. http://serve-1.internal:8080/hooks/mlflow)")
    if not parts.hostname:
        raise InvalidInput(f"the webhook URL names no host: {redact(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("the webhook URL must hold no credentials (user:password@): "
                           "deliveries are signed with PROMOTE_WEBHOOK_SECRET instead")
    return url


def check_events(events: Sequence[str]) -> tuple[str, ...]:
    """The event names, each one MLflow knows (`entity.action`), in order, without repeats."""
    from typing import get_args

    from mlflow.entities.webhook import WebhookEventStr

    known = get_args(WebhookEventStr)
    names = tuple(dict.fromkeys(e.strip() for e in events if e.strip()))
    if not names:
        raise InvalidInput("no webhook events given")
    unknown = [e for e in names if e not in known]
    if unknown:
        raise InvalidInput(f"unknown webhook event {unknown[0]!r}; MLflow's events: "
                           + ", ".join(known))
    return names


def webhook_spec(url: str, *, name: str | None, events: Sequence[str],
                 secret: str) -> WebhookSpec:
    """The webhook asked for, checked: URL, name (MLflow's rule), events."""
    url = check_url(url)
    chosen = name if name is not None else default_name(url)
    if not _NAME.fullmatch(chosen):
        raise InvalidInput(f"webhook name {chosen!r} is invalid: MLflow allows 1 to 63 lowercase "
                           "letters, digits, '.', '_' and '-', starting and ending with a letter "
                           "or digit")
    return WebhookSpec(name=chosen, url=url, events=check_events(events), secret=secret)


# -- the server --------------------------------------------------------------------------------


@contextmanager
def webhook_errors(what: str, failed: str = SERVER_FAILED) -> Iterator[None]:
    """`registry_errors`, plus what a failure of the webhook API itself means (`failed`: what a
    5xx or no answer may mean for this call)."""
    from mlflow.exceptions import MlflowException

    with registry_errors(what):
        try:
            yield
        except MlflowException as exc:
            code = exc.error_code
            if code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED"):
                raise WebhooksUnavailable(f"{what}: the server has no webhook API",
                                          NEEDS) from exc
            if code == "INTERNAL_ERROR":
                raise WebhooksUnavailable(f"{what}: {_first_line(exc.message)}",
                                          failed) from exc
            if code == "PERMISSION_DENIED":
                raise WebhooksUnavailable(f"{what}: {_first_line(exc.message)}",
                                          ADMIN_ONLY) from exc
            raise


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """A create or update: the server's refusal of the URL (or name, events) is exit 2."""
    from mlflow.exceptions import MlflowException

    with webhook_errors(what):
        try:
            yield
        except MlflowException as exc:
            if exc.error_code == "INVALID_PARAMETER_VALUE":
                raise UrlRefused(f"{what}: {_first_line(exc.message)}") from exc
            raise


def _events(names: Sequence[str]) -> list[Any]:
    """Event names as MLflow's client takes them (checked by `check_events`)."""
    return list(names)


def _first_line(text: str) -> str:
    text = redact(str(text)).strip()
    return text.splitlines()[0] if text else text


def _state(webhook: Webhook) -> WebhookState:
    return WebhookState(webhook_id=webhook.webhook_id, name=webhook.name, url=webhook.url,
                        events=tuple(str(e) for e in webhook.events),
                        status=str(webhook.status), created=int(webhook.creation_timestamp or 0))


def list_webhooks(client: MlflowClient) -> list[WebhookState]:
    """Every webhook on the server (all pages), newest first."""
    found: list[WebhookState] = []
    token: str | None = None
    seen: set[str] = set()
    with webhook_errors("listing the server's webhooks"):
        while True:
            page = client.list_webhooks(max_results=PAGE_SIZE, page_token=token)
            found.extend(_state(w) for w in page)
            token = page.token or None
            if token is None or token in seen:
                break
            seen.add(token)
    return sorted(found, key=lambda w: w.created, reverse=True)


def find_webhooks(client: MlflowClient, name_or_url: str) -> list[WebhookState]:
    """The webhooks named `name_or_url`, or (for a URL) pointing at it; newest first."""
    key = "url" if "://" in name_or_url else "name"
    return [w for w in list_webhooks(client) if getattr(w, key) == name_or_url]


def ensure_webhook(client: MlflowClient, spec: WebhookSpec, *,
                   dry_run: bool = False) -> EnsureResult:
    """Create the webhook `spec` names, or bring it to `spec` (URL, events, ACTIVE) and set its
    secret again. Idempotent. A dry run only reads."""
    same = [w for w in list_webhooks(client) if w.name == spec.name]
    current, older = (same[0], tuple(w.webhook_id for w in same[1:])) if same else (None, ())
    if current is None:
        webhook_id = None if dry_run else _create(client, spec).webhook_id
        return EnsureResult(spec.name, webhook_id, spec.url, spec.events, ACTIVE, "create", (),
                            dry_run)
    changed = tuple(f for f, differs in (("url", current.url != spec.url),
                                         ("events", set(current.events) != set(spec.events)),
                                         ("status", current.status != ACTIVE)) if differs)
    if not dry_run:
        _update(client, current.webhook_id, spec, changed)
    return EnsureResult(spec.name, current.webhook_id, spec.url, spec.events, ACTIVE,
                        "update" if changed else "none", changed, dry_run, older)


def _create(client: MlflowClient, spec: WebhookSpec) -> WebhookState:
    with _writing(f"creating webhook {spec.name!r}"):
        made = client.create_webhook(name=spec.name, url=spec.url, events=_events(spec.events),
                                     secret=spec.secret, status=ACTIVE,
                                     description="Promote: registry events to a serving endpoint")
    return _state(made)


def _update(client: MlflowClient, webhook_id: str, spec: WebhookSpec,
            changed: Sequence[str]) -> None:
    """Send what differs, and the secret (it cannot be read back to compare)."""
    with _writing(f"updating webhook {spec.name!r}"):
        client.update_webhook(webhook_id,
                              url=spec.url if "url" in changed else None,
                              events=_events(spec.events) if "events" in changed else None,
                              status=ACTIVE if "status" in changed else None,
                              secret=spec.secret)


def send_test_event(client: MlflowClient, name_or_url: str) -> WebhookTest:
    """Have the server send MLflow's test event to the webhook named `name_or_url` (or pointing
    at that URL; the newest when several match) and report what the endpoint answered."""
    found = find_webhooks(client, name_or_url)
    if not found:
        what = "points at" if "://" in name_or_url else "is named"
        raise InvalidInput(f"no webhook {what} {redact(name_or_url)!r} "
                           "(`promote webhooks ensure URL` creates it)")
    webhook = found[0]
    event = webhook.events[0]
    with webhook_errors(f"testing webhook {webhook.name!r}", TEST_TIMED_OUT):
        result = client.test_webhook(webhook.webhook_id, cast(Any, event))
    body = result.response_body
    excerpt = None if body is None else redact(" ".join(body.split()))[:BODY_EXCERPT]
    return WebhookTest(name=webhook.name, webhook_id=webhook.webhook_id, url=webhook.url,
                       event=event, success=result.success,
                       status_code=result.response_status, response=excerpt,
                       error=None if result.error_message is None
                       else redact(result.error_message))


def delete_webhook(client: MlflowClient, webhook_id: str) -> None:
    with webhook_errors(f"deleting webhook {webhook_id}"):
        client.delete_webhook(webhook_id)
