"""`promote gate POLICY`: decide on a candidate and move the alias only when every rule passes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from promotion.commands import extras, tracking_uri
from promotion.gate import GateConflict, GateIncomplete, run_gate
from promotion.notify import announce
from promotion.policy.load import load_policy
from promotion.policy.model import Candidate
from promotion.registry.client import connect
from promotion.report.decision import table, to_json_text
from promotion.report.github import write_github

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.engine.results import GateResult


@click.command("gate")
@click.argument("policy_path", metavar="POLICY", type=click.Path(path_type=str))
@click.option("--candidate", metavar="VERSION|latest|@ALIAS",
              help="The version to gate; overrides the policy's `candidate`.")
@click.option("--dry-run", is_flag=True, help="Decide and report; writes nothing to the registry.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the decision as JSON (schema_version 1, see docs/gate.md).")
def command(policy_path: str, candidate: str | None, dry_run: bool, as_json: bool) -> object:
    """Gate a candidate version against the alias a policy guards.

    \b
    Exit codes: 0 promoted / would be promoted / already holds the alias,
    1 rejected or inconclusive, 2 invalid input, 3 registry error or the alias
    moved while deciding.
    """
    selector = None
    if candidate is not None:
        try:
            selector = Candidate.parse(candidate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--candidate") from exc
    policy = load_policy(policy_path)
    extras.for_policy(policy)
    extras.for_notifications()
    client = connect(tracking_uri())
    try:
        result = run_gate(client, policy, candidate=selector, dry_run=dry_run)
    except (GateConflict, GateIncomplete) as conflict:
        result = conflict.result
        click.echo(to_json_text(result) if as_json else table(result), nl=not as_json)
        write_github(result)
        _announce(client, conflict)
        raise
    click.echo(to_json_text(result) if as_json else table(result), nl=not as_json)
    write_github(result)
    _announce(client, result)
    return result


def _announce(client: MlflowClient, subject: GateResult | GateConflict | GateIncomplete) -> None:
    """The decision's event to the configured endpoints and people (docs/events.md); what
    became of it on stderr. Never changes the decision nor its exit code."""
    line = announce(client, subject)
    if line is not None:
        click.echo(line, err=True)
