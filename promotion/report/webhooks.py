"""`promote webhooks` reports: the terminal text and the `--json` documents (kinds `webhook` and
`webhook_test`). The secret is never part of them: only where it comes from."""

from __future__ import annotations

from promotion.engine.webhooks import SECRET_ENV, EnsureResult, WebhookTest
from promotion.errors import redact
from promotion.report.text import document, grid

CANNOT_COMPARE = "MLflow never returns a secret, so it cannot be compared"
DONE = {"create": "created", "update": "updated", "none": "up_to_date"}
WOULD = {"create": "would_create", "update": "would_update", "none": "up_to_date"}


def _headline(result: EnsureResult) -> str:
    changed = ", ".join(result.changed)
    if result.dry_run:
        return {"create": "would be created",
                "update": f"would be updated: {changed}",
                "none": f"up to date (ensure sets the secret again: {CANNOT_COMPARE})",
                }[result.action] + " (dry run: nothing written)"
    return {"create": "created",
            "update": f"updated: {changed} (and the secret set again)",
            "none": f"up to date (secret set again: {CANNOT_COMPARE})"}[result.action]


def ensure_text(result: EnsureResult, server: str) -> str:
    rows = [("id", result.webhook_id or "-"), ("url", redact(result.url)),
            ("events", ", ".join(result.events)), ("status", result.status),
            ("secret", f"from {SECRET_ENV} (never shown)"), ("server", server)]
    lines = [f"webhook {result.name}: {_headline(result)}",
             *("  " + line for line in grid(("", ""), rows)[1:])]
    if result.duplicates:
        lines.append(f"note: {len(result.duplicates)} older webhook(s) share the name "
                     f"{result.name} ({', '.join(result.duplicates)}); only the newest is kept "
                     "up to date: delete the others")
    return "\n".join(lines)


def ensure_json(result: EnsureResult, server: str) -> dict[str, object]:
    return document("webhook", None, {
        "name": result.name,
        "id": result.webhook_id,
        "url": redact(result.url),
        "events": list(result.events),
        "status": result.status,
        "action": (WOULD if result.dry_run else DONE)[result.action],
        "changed": list(result.changed),
        "dry_run": result.dry_run,
        "secret_sent": not result.dry_run,
        "duplicates": list(result.duplicates),
    }, server)


def tested_text(result: WebhookTest, server: str) -> str:
    status = f" (HTTP {result.status_code})" if result.status_code is not None else ""
    outcome = "succeeded" if result.success else "failed"
    rows = [("id", result.webhook_id), ("url", redact(result.url)),
            ("event", f"{result.event} (MLflow's example payload)"), ("server", server)]
    if result.response:
        rows.append(("response", result.response))
    if result.error:
        rows.append(("error", redact(result.error)))
    return "\n".join([f"webhook {result.name}: test delivery {outcome}{status}",
                      *("  " + line for line in grid(("", ""), rows)[1:])])


def tested_json(result: WebhookTest, server: str) -> dict[str, object]:
    return document("webhook_test", None, {
        "name": result.name,
        "id": result.webhook_id,
        "url": redact(result.url),
        "event": result.event,
        "success": result.success,
        "status_code": result.status_code,
        "response": result.response,
        "error": None if result.error is None else redact(result.error),
    }, server)
