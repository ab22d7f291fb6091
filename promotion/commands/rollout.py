"""`promote rollout POLICY`: judge the step in force of a rollout; advance, abort or promote.

`--once` (the default) judges once and exits with the outcome; `--every 5m` judges again at that
interval until stopped (SIGTERM or Ctrl-C), and keeps going when the registry or the log
database is briefly unreachable. `--abort` ends the rollout now (a person's decision, recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from promotion.commands import extras, tracking_uri
from promotion.commands.repeat import every_seconds, repeat
from promotion.engine.results import RolloutConflict, RolloutIncomplete
from promotion.errors import requires_extra
from promotion.gate.rollout import abort_rollout, rollout_of, run_rollout
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LOG_URI_ENV, LogStore
from promotion.notify import announce
from promotion.policy.load import load_policy
from promotion.registry.client import connect
from promotion.report.github import write_github_rollout
from promotion.report.rollout import table, to_json_text

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.engine.results import RolloutResult
    from promotion.policy.model import Policy


@click.command("rollout")
@click.argument("policy_path", metavar="POLICY", type=click.Path(path_type=str))
@click.option("--once", "once", is_flag=True, help="Judge the step once and exit (the default).")
@click.option("--every", metavar="DURATION", help="Judge again at this interval ('5m') until "
                                                  "stopped.")
@click.option("--abort", "abort", is_flag=True,
              help="End the rollout now: remove the canary alias (recorded).")
@click.option("--reason", metavar="TEXT", help="With --abort: why, for the record.")
@click.option("--dry-run", is_flag=True, help="Measure and judge; write nothing anywhere.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the step as JSON (schema_version 1, see docs/rollout.md).")
@click.option("--log-uri", envvar=LOG_URI_ENV, show_envvar=True, default=DEFAULT_LOG_URI,
              show_default=True, metavar="URI",
              help="The inference log `promote serve` writes (sqlite:/// or postgresql://).")
def command(policy_path: str, once: bool, every: str | None, abort: bool, reason: str | None,
            dry_run: bool, as_json: bool, log_uri: str) -> object:
    """Take a rollout a step further on live traffic: advance, abort or promote.

    Measures the candidate on the canary alias and Production over the step's window (from
    the inference log), judges every `rollout:` rule, and when all pass for at least
    `step_after` and `min_requests`, gives the candidate the next step's share; after the
    last step it moves the guarded alias (as a gate does). Any breach aborts: the canary
    alias is removed. Each step's decision is a record in `promote history`.

    \b
    Exit codes: 0 waiting, advanced, promoted, no rollout, or aborted by --abort;
    1 aborted after a breach; 2 invalid input (no rollout: block, nothing to abort);
    3 registry or log database error, or the rollout or an alias changed meanwhile
    (nothing moved); 5 moved, but the record is incomplete.
    """
    if once and every:
        raise click.UsageError("--once and --every exclude each other")
    if abort and every:
        raise click.UsageError("--abort and --every exclude each other")
    if reason is not None and not abort:
        raise click.UsageError("--reason goes with --abort")
    interval = every_seconds(every)
    with requires_extra("monitor", "promote rollout"):
        extras.for_log(log_uri)
        extras.for_notifications()
    policy = load_policy(policy_path)
    rollout_of(policy)
    client = connect(tracking_uri())
    if abort:
        return _show(client, lambda: abort_rollout(client, policy, reason=reason,
                                                   dry_run=dry_run), as_json)
    store = LogStore(log_uri)
    try:
        if interval is None:
            return _one(client, policy, store, dry_run, as_json)
        repeat(interval, lambda: _one(client, policy, store, dry_run, as_json), "rollout")
    finally:
        store.close()
    return None


def _one(client: MlflowClient, policy: Policy, store: LogStore, dry_run: bool,
         as_json: bool) -> RolloutResult:
    return _show(client, lambda: run_rollout(client, policy, store, dry_run=dry_run), as_json)


def _show(client: MlflowClient, step: Callable[[], RolloutResult],
          as_json: bool) -> RolloutResult:
    try:
        result = step()
    except (RolloutConflict, RolloutIncomplete) as stopped:  # shown; the exit code tells
        click.echo(to_json_text(stopped.result) if as_json else table(stopped.result),
                   nl=not as_json)
        write_github_rollout(stopped.result)
        _announce(client, stopped)
        raise
    click.echo(to_json_text(result) if as_json else table(result), nl=not as_json)
    write_github_rollout(result)
    _announce(client, result)
    return result


def _announce(client: MlflowClient,
              subject: RolloutResult | RolloutConflict | RolloutIncomplete) -> None:
    """A step's event (advanced, aborted, promoted, conflict) to the configured endpoints and
    people (docs/events.md); what became of it on stderr. Never changes the exit code."""
    line = announce(client, subject)
    if line is not None:
        click.echo(line, err=True)
