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
from promotion.engine.webhooks import SECRET_ENV
from promotion.errors import InvalidInput
from promotion.registry import (
    DEFAULT_EVENTS,
    EnsureResult,
    WebhookTest,
    ensure_webhook,
    send_test_event,
    webhook_spec,
)
from promotion.registry.client import connect, describe_uri
from promotion.report.text import dumps
from promotion.report.webhooks import ensure_json, ensure_text, tested_json, tested_text


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
