"""Decision events: every decision delivered to HTTP endpoints (signed as MLflow signs its
webhooks) and told to people through Apprise, configured from the environment only.

    config     PROMOTE_EVENTS_URLS, PROMOTE_EVENTS_SECRET, PROMOTE_NOTIFY_URLS, and the optional
               PROMOTE_EVENTS_CONFIG file (no secrets): what goes where
    endpoints  one signed POST per endpoint, bounded retries (the standard library's client)
    people     Apprise, one target per URL, its log kept off the terminal
    redaction  every configured URL and secret taken out of any text that is shown or recorded
    announce   the one call a command makes after a decision

The payload and its rendering for people are report.events: pure, from the frozen results.
Nothing here is imported by a command's --help beyond this package's own small modules; Apprise
and the HTTP client are imported only when something is sent.
"""

from __future__ import annotations

from promotion.notify.announce import announce

__all__ = ["announce"]
