"""`promote status MODEL`: every alias, its version, and each version's last decision."""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.gate import read_status
from promotion.registry.client import connect
from promotion.report.status import status_json, status_table
from promotion.report.text import dumps


@click.command("status")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def command(model: str, as_json: bool) -> object:
    """Show every alias of a model and each version's last decision (and any pending one)."""
    status = read_status(connect(tracking_uri()), model)
    click.echo(dumps(status_json(status)) if as_json else status_table(status))
    return status
