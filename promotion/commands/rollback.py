"""`promote rollback MODEL`: move the alias back to `<alias>-previous`, and record it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from promotion.commands import extras, tracking_uri
from promotion.gate import RollbackConflict, RollbackIncomplete, run_rollback
from promotion.notify import announce
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry.client import connect
from promotion.report.decision import rollback_text, to_json_text

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.engine.results import RollbackResult


@click.command("rollback")
@click.argument("model")
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True, help="The alias to roll back.")
@click.option("--dry-run", is_flag=True, help="Show what would move; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(model: str, alias: str, dry_run: bool, as_json: bool) -> object:
    """Move the alias back to <alias>-previous (and <alias>-previous to what it displaced).

    Rolling back a rollback flips them again. Exit 2 when there is nothing to roll back to.
    """
    extras.for_notifications()
    client = connect(tracking_uri())
    try:
        result = run_rollback(client, model, alias, dry_run=dry_run)
    except RollbackIncomplete as incomplete:
        result = incomplete.result
        click.echo(to_json_text(result) if as_json else rollback_text(result), nl=not as_json)
        _announce(client, incomplete)
        raise
    except RollbackConflict as conflict:  # nothing moved; the message says so (stderr)
        _announce(client, conflict)
        raise
    click.echo(to_json_text(result) if as_json else rollback_text(result), nl=not as_json)
    _announce(client, result)
    return result


def _announce(client: MlflowClient,
              subject: RollbackResult | RollbackIncomplete | RollbackConflict) -> None:
    """The decision's event to the configured endpoints and people (docs/events.md); what
    became of it on stderr. Never changes the decision nor its exit code."""
    line = announce(client, subject)
    if line is not None:
        click.echo(line, err=True)
