"""`promote watch POLICY`: judge the version behind the policy's alias on its live traffic.

`--once` (the default) watches one window and exits with its outcome; `--every 5m` watches again
at that interval until stopped (SIGTERM or Ctrl-C), printing each window, and keeps going when
the registry or the log database is briefly unreachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from promotion.commands import extras, tracking_uri
from promotion.commands.repeat import every_seconds, repeat
from promotion.engine.results import RollbackIncomplete, WatchNotApplied
from promotion.errors import InvalidInput, requires_extra
from promotion.gate.watch import run_watch
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LOG_URI_ENV, LogStore
from promotion.notify import announce
from promotion.policy.load import load_policy
from promotion.registry.client import connect
from promotion.report.github import write_github_watch
from promotion.report.watch import table, to_json_text, watch_files

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.engine.results import WatchResult
    from promotion.policy.model import Policy


@click.command("watch")
@click.argument("policy_path", metavar="POLICY", type=click.Path(path_type=str))
@click.option("--once", "once", is_flag=True, help="Watch one window and exit (the default).")
@click.option("--every", metavar="DURATION", help="Watch again at this interval ('5m') until "
                                                  "stopped.")
@click.option("--dry-run", is_flag=True, help="Measure and judge; write nothing anywhere.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the watch as JSON (schema_version 1, see docs/monitoring.md).")
@click.option("--log-uri", envvar=LOG_URI_ENV, show_envvar=True, default=DEFAULT_LOG_URI,
              show_default=True, metavar="URI",
              help="The inference log `promote serve` writes (sqlite:/// or postgresql://).")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write watch.json, watch.md and chart.png (the signals over time) here, "
                   "e.g. for a CI artifact.")
def command(policy_path: str, once: bool, every: str | None, dry_run: bool, as_json: bool,
            log_uri: str, report_dir: Path | None) -> object:
    """Judge the version behind the policy's alias on its live traffic; roll a bad one back.

    Reads the last `watch.window` of the version's requests from the inference log, computes
    every `watch:` rule (errors, latency, drift against the version's reference profile,
    quality where labels arrived), logs the figures to the MLflow experiment
    promotion-monitoring, and on a breach inside the bake period moves the alias back to
    <alias>-previous (recorded as a decision of kind `watch`). Later breaches only alert.

    \b
    Exit codes: 0 healthy or insufficient data, 1 breach (rolled back or alerted),
    2 invalid input, 3 registry or log database error / the alias moved meanwhile
    (nothing moved), 5 rolled back but the record is incomplete.
    """
    if once and every:
        raise click.UsageError("--once and --every exclude each other")
    interval = every_seconds(every)
    with requires_extra("monitor", "promote watch"):
        extras.for_log(log_uri)
        extras.for_notifications()
    policy = load_policy(policy_path)
    if policy.watch is None:
        raise InvalidInput(f"{policy_path}: this policy has no 'watch:' block; add one to watch "
                           f"@{policy.alias} (docs/monitoring.md)")
    client = connect(tracking_uri())
    store = LogStore(log_uri)
    try:
        if interval is None:
            return _one(client, policy, store, dry_run, as_json, report_dir)
        repeat(interval, lambda: _one(client, policy, store, dry_run, as_json, report_dir),
               "watch")
    finally:
        store.close()
    return None


def _one(client: MlflowClient, policy: Policy, store: LogStore, dry_run: bool,
         as_json: bool, report_dir: Path | None) -> WatchResult:
    try:
        result = run_watch(client, policy, store, dry_run=dry_run)
    except WatchNotApplied as stopped:  # the breach is shown; the exit code says nothing moved
        click.echo(to_json_text(stopped.result) if as_json else table(stopped.result))
        write_github_watch(stopped.result)
        _announce(client, stopped)
        raise
    except RollbackIncomplete as incomplete:  # rolled back; its record is incomplete (exit 5)
        _announce(client, incomplete)
        raise
    click.echo(to_json_text(result) if as_json else table(result))
    write_github_watch(result)
    _announce(client, result)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        files = watch_files(result)
        if result.chart_png is not None:
            files["chart.png"] = result.chart_png
        for name, data in files.items():
            (report_dir / name).write_bytes(data)
    return result


def _announce(client: MlflowClient,
              subject: WatchResult | WatchNotApplied | RollbackIncomplete) -> None:
    """A breach's event (rollback or alert) to the configured endpoints and people
    (docs/events.md); what became of it on stderr. Never changes the exit code."""
    line = announce(client, subject)
    if line is not None:
        click.echo(line, err=True)
