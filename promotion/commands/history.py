"""`promote history MODEL`: past decisions, newest first."""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.gate import read_history
from promotion.registry.client import connect
from promotion.report.status import history_json, history_table
from promotion.report.text import dumps


@click.command("history")
@click.argument("model")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="How many decisions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
def command(model: str, limit: int, as_json: bool) -> object:
    """Show past promotion decisions, newest first: when, candidate, compared-to, outcome,
    reasons, and who or what triggered each."""
    history = read_history(connect(tracking_uri()), model, limit=limit)
    click.echo(dumps(history_json(history)) if as_json else history_table(history))
    return history
