"""What `promote webhooks` did: frozen results the renderers print (promotion.report.webhooks)."""

from __future__ import annotations

from dataclasses import dataclass

from promotion.engine.signing import SECRET_ENV
from promotion.errors import RegistryError

__all__ = ["SECRET_ENV", "EnsureResult", "WebhookTest"]


@dataclass(frozen=True)
class EnsureResult:
    """What `ensure_webhook` did (or, on a dry run, would do)."""

    name: str
    webhook_id: str | None  # None: a dry run that would create it
    url: str
    events: tuple[str, ...]
    status: str
    action: str  # "create" | "update" | "none" (up to date: only the secret is sent again)
    changed: tuple[str, ...]  # for "update": which of url, events, status differed
    dry_run: bool
    duplicates: tuple[str, ...] = ()  # ids of older webhooks with the same name, left alone
    return_code: int = 0


@dataclass(frozen=True)
class WebhookTest:
    """What the server reported after sending MLflow's test event to a webhook's URL."""

    name: str
    webhook_id: str
    url: str
    event: str  # the event MLflow tested with: the webhook's first
    success: bool
    status_code: int | None
    response: str | None  # an excerpt of the endpoint's answer, credentials removed
    error: str | None  # the server's reason when nothing was answered

    @property
    def return_code(self) -> int:
        return 0 if self.success else int(RegistryError.exit_code)
