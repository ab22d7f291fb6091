"""What a command needs beyond the base install, checked before anything is read or moved.

The base install (mlflow-skinny, pyyaml, click, pydantic) gates, rolls back and reports on logged
metrics. A policy that re-scores, notifications to people, or a PostgreSQL inference log each
need an extra; each check here fails with exit 2 naming it (promotion.errors.requires_extra).
"""

from __future__ import annotations

import os

from promotion.errors import requires_extra
from promotion.gate import needs_evaluation
from promotion.notify.config import NOTIFY_URLS, split_urls
from promotion.policy.model import Policy


def for_policy(policy: Policy) -> None:
    """A policy whose rules re-score both versions (`source: evaluation`, budgets)."""
    if needs_evaluation(policy):
        with requires_extra("evaluate", f"the policy {policy.path} (it re-scores both versions)"):
            pass


def for_notifications() -> None:
    """Notifications to people (Apprise), when PROMOTE_NOTIFY_URLS names any."""
    if split_urls(os.environ.get(NOTIFY_URLS)):
        with requires_extra("notify", f"{NOTIFY_URLS} (notifications to people)"):
            pass


def for_log(log_uri: str | None) -> None:
    """A PostgreSQL inference log needs its driver."""
    if (log_uri or "").partition(":")[0].partition("+")[0].lower() in {"postgresql", "postgres"}:
        with requires_extra("postgres", "a PostgreSQL inference log"):
            pass
