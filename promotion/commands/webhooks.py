"""`promote webhooks ensure URL` and `promote webhooks test NAME|URL`: the MLflow webhooks that
tell a serving endpoint at once when an alias moves.

The click layer: options -> `promotion.registry.webhook_spec` -> `ensure_webhook` or
`send_test_event`, and the text and `--json` forms of their results (built with
promotion.report.text's primitives). The secret comes from PROMOTE_WEBHOOK_SECRET only: never
from the command line (where `ps` would show it), never printed.
"""

from __future__ import annotations

import os

import click

from promotion.commands import tracking_uri
from promotion.errors import InvalidInput, redact
from promotion.registry import (
    DEFAULT_EVENTS,
    SECRET_ENV,
    EnsureResult,
    WebhookTest,
    ensure_webhook,
    send_test_event,
    webhook_spec,
)
from promotion.registry.client import connect, describe_uri
from promotion.report.text import document, dumps, grid

CANNOT_COMPARE = "MLflow never returns a secret, so it cannot be compared"
DONE = {"create": "created", "update": "updated", "none": "up_to_date"}
WOULD = {"create": "would_create", "update": "would_update", "none": "up_to_date"}


@click.group("webhooks")
def command() -> None:
    """MLflow webhooks that tell serving endpoints at once when an alias moves.

    \b
    Webhooks need an MLflow 3.3 (or later) server with a SQL backend store, and
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY set on it (docs/central-node.md).
    """


@command.command("ensure", short_help="Create or update the webhook that points at an endpoint.")
@click.argument("url")
@click.option("--name", default=None, metavar="NAME",
              help="The webhook's name. Default: promote-serve-<host>-<port> of URL.")
@click.option("--events", "events", multiple=True, metavar="EVENT[,EVENT...]",
              help="Registry events to deliver, comma-separated. Default: "
                   + " and ".join(DEFAULT_EVENTS) + ".")
@click.option("--dry-run", is_flag=True, help="Say what would be done; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ensure(url: str, name: str | None, events: tuple[str, ...], dry_run: bool,
           as_json: bool) -> EnsureResult:
    """Create the webhook that sends registry events to URL (an endpoint's /hooks/mlflow), or
    bring it to the URL, events and ACTIVE status asked for. Idempotent.

    \b
    The secret deliveries are signed with comes from PROMOTE_WEBHOOK_SECRET (required; give the
    endpoint the same value). MLflow never returns a secret, so every run sets it again.
    Exit codes: 0 done, 2 invalid input (URL, name, event, no secret), 3 the server is
    unreachable or has no webhook API.
    """
    secret = os.environ.get(SECRET_ENV, "")
    if not secret.strip():
        raise InvalidInput(f"{SECRET_ENV} is not set: the secret MLflow signs deliveries with "
                           "(the endpoint checks them with the same value)")
    names = [e for given in events for e in given.split(",")] if events else DEFAULT_EVENTS
    spec = webhook_spec(url, name=name, events=names, secret=secret)
    client = connect(tracking_uri())
    result = ensure_webhook(client, spec, dry_run=dry_run)
    server = describe_uri(client)
    click.echo(dumps(ensure_json(result, server)) if as_json else ensure_text(result, server))
    return result


@command.command("test", short_help="Have MLflow send its test event to a webhook's endpoint.")
@click.argument("name_or_url", metavar="NAME|URL")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def test_command(name_or_url: str, as_json: bool) -> WebhookTest:
    """Have the MLflow server send its test event (for the webhook's first event) to the
    webhook named NAME, or pointing at URL, and print what the endpoint answered.

    Exit 0 when it answered with a success status, 3 when not (the server's reason is shown).
    """
    client = connect(tracking_uri())
    result = send_test_event(client, name_or_url)
    server = describe_uri(client)
    click.echo(dumps(tested_json(result, server)) if as_json else tested_text(result, server))
    return result


# -- what is printed ---------------------------------------------------------------------------


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
