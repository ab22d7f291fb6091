"""`promote rollback MODEL`: move the alias back to `<alias>-previous`, and record it."""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.gate import RollbackIncomplete, run_rollback
from promotion.policy.model import DEFAULT_ALIAS
from promotion.registry.client import connect
from promotion.report.decision import rollback_text, to_json_text


@click.command("rollback")
@click.argument("model")
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True, help="The alias to roll back.")
@click.option("--dry-run", is_flag=True, help="Show what would move; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(model: str, alias: str, dry_run: bool, as_json: bool) -> object:
    """Move the alias back to <alias>-previous (and <alias>-previous to what it displaced).

    Rolling back a rollback flips them again. Exit 2 when there is nothing to roll back to.
    """
    try:
        result = run_rollback(connect(tracking_uri()), model, alias, dry_run=dry_run)
    except RollbackIncomplete as incomplete:
        result = incomplete.result
        click.echo(to_json_text(result) if as_json else rollback_text(result), nl=not as_json)
        raise
    click.echo(to_json_text(result) if as_json else rollback_text(result), nl=not as_json)
    return result
