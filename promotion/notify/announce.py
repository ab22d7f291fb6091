"""After a decision: its event to the configured endpoints and people, and what became of it.

`announce(client, subject)` is the one call a command makes once its service returned (or raised
an error that carries the recorded result). It never raises and never changes a decision or an
exit code: a delivery that fails is said on one line, in the job summary, and on the decision's
record run (`promotion.events`, `promotion.notified`). Nothing configured: it returns None at
once, having imported and sent nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from promotion.engine.records import utc_now
from promotion.errors import FatalError
from promotion.notify import endpoints, people
from promotion.notify.config import Config, from_env
from promotion.notify.redaction import Redactor
from promotion.registry.records import EVENTS_TAG, NOTIFIED_TAG, tag_record
from promotion.report import events
from promotion.report.github import write_github_events

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_THREADS = 8


def announce(client: MlflowClient | None, subject: events.Subject, *,
             env: Mapping[str, str] | None = None) -> str | None:
    """Send the decision's event; the line to print (stderr), or None when nothing is
    configured or there was no decision to tell."""
    config = from_env(env)
    if not config.configured:
        return None
    clean = Redactor(config.secrets)
    try:
        line = _announce(client, subject, config, clean)
    except Exception as exc:  # a bug here must not change the decision: said, not raised
        line = events.line([clean(f"not sent: unexpected error ({type(exc).__name__})")])
    if line is not None:
        with suppress(OSError):  # the job summary is a courtesy: the line is printed anyway
            write_github_events(line, env)
    return line


def _announce(client: MlflowClient | None, subject: events.Subject, config: Config,
              clean: Callable[[str], str]) -> str | None:
    event = events.payload(subject, event_id=str(uuid.uuid4()), now=utc_now())
    if event is None:
        return None
    parts: dict[str, str] = {}
    if config.problem is not None:
        why = f"not sent: {clean(config.problem)}"
        parts = {EVENTS_TAG: why} if config.endpoints else {}
        parts.update({NOTIFIED_TAG: why} if config.targets else {})
    else:
        parts = _send(event, config, clean)
    said = list(dict.fromkeys(parts.values()))  # the same words once
    if event["record_run_id"] and client is not None:
        try:
            tag_record(client, event["record_run_id"], parts)
        except FatalError as exc:
            said.append(f"the decision record was not tagged ({clean(str(exc))})")
    return events.line(said)


def _send(event: dict[str, Any], config: Config, clean: Callable[[str], str]) -> dict[str, str]:
    """Every endpoint and every target at once; what each channel became, in words."""
    kind, outcome = event["kind"], event["outcome"]
    urls = config.endpoints if config.events.wants(kind, outcome) else ()
    targets = config.targets if config.notify.wants(kind, outcome) else ()
    body = events.encode(event)
    title, text = events.title(event), events.markdown(event)
    with people.Capturing() as capture, \
            ThreadPoolExecutor(max_workers=max(1, min(MAX_THREADS, len(urls) + len(targets))),
                               thread_name_prefix="promote-events") as pool:
        posts = [pool.submit(endpoints.deliver, url, body, secret=config.secret,
                             timeout=config.timeout, attempts=config.attempts, index=i,
                             of=len(urls), clean=clean) for i, url in enumerate(urls, 1)]
        notes = [pool.submit(people.notify, url, title, text, index=i, of=len(targets),
                             capture=capture, clean=clean) for i, url in enumerate(targets, 1)]
        sent, told = [f.result() for f in posts], [f.result() for f in notes]
    skipped = f"not sent ({kind} {outcome} is not selected in the events config)"
    parts = {}
    if config.endpoints:
        parts[EVENTS_TAG] = events.delivered(sent, signed=bool(config.secret)) if urls \
            else skipped
    if config.targets:
        parts[NOTIFIED_TAG] = events.notified(told) if targets else skipped
    return parts
