"""Decision events for people, through Apprise: one URL syntax for Slack, Teams, Discord, email,
ntfy and about a hundred more services. Never raises: each target's outcome is a `Sent`.

Each URL gets its own `apprise.Apprise()`, so each target's outcome is known (Apprise's own
result is one boolean for all). Apprise logs why a target failed; those lines are caught here
(never printed), and the last one of each target, cleaned of every configured URL, is its why.
Apprise is imported only when a notification is sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from promotion.notify.endpoints import scheme_of
from promotion.report.events import Sent

LOGGER = "apprise"


class _Capture(logging.Handler):
    """Apprise's warnings and errors, by the thread that logged them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines[record.thread or 0] = record.getMessage()
        except Exception:  # a malformed log call must not break a notification
            self.lines[record.thread or 0] = "unreadable log line"


class Capturing:
    """While open: Apprise's log goes here only (not to stderr, not to any other handler)."""

    def __enter__(self) -> _Capture:
        self.logger = logging.getLogger(LOGGER)
        self.handler = _Capture()
        self.propagate = self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        return self.handler

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate


def notify(url: str, title: str, body: str, *, index: int, of: int, capture: _Capture,
           clean: Callable[[str], str]) -> Sent:
    """One notification to one Apprise URL (run inside `Capturing`)."""
    scheme = scheme_of(url)
    try:
        import apprise
    except ImportError:
        return Sent(index, of, scheme, False, 0, "Apprise is not installed (pip install "
                                                 "apprise)")
    try:
        target = apprise.Apprise()
        if not target.add(url):
            return Sent(index, of, scheme, False, 0, "not a URL Apprise knows")
        ok = bool(target.notify(body=body, title=title,
                                body_format=apprise.NotifyFormat.MARKDOWN))
    except Exception as exc:  # a plugin's bug must not change the decision: said, not raised
        return Sent(index, of, scheme, False, 1, clean(f"{type(exc).__name__}: {exc}"))
    if ok:
        return Sent(index, of, scheme, True)
    said = capture.lines.get(threading.get_ident())
    return Sent(index, of, scheme, False, 1, clean(said.rstrip(".")) if said else
                "not delivered")
