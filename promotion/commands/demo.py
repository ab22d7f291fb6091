"""`promote demo`: the main job that `make demo` runs (see promotion.demo)."""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.demo import DEFAULT_CANDIDATES, DEFAULT_POLICIES, DEFAULT_TRACKING_URI, run_demo
from promotion.errors import requires_extra
from promotion.monitoring.logschema import DEFAULT_LOG_URI, LOG_URI_ENV
from promotion.registry.client import connect
from promotion.report.demo import demo_json


@click.command(name="demo")
@click.option("--candidates", default=DEFAULT_CANDIDATES, show_default=True, metavar="DIR",
              help="Directory of candidate configs; every *.yaml in it is trained.")
@click.option("--policies", default=DEFAULT_POLICIES, show_default=True, metavar="DIR",
              help="Directory of policies; those naming the candidates' model gate them.")
@click.option("--model-name", metavar="NAME",
              help="Register and gate under this model name instead of the configs' one.")
@click.option("--rows", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="How many holdout rows to predict and print.")
@click.option("--details", is_flag=True, help="Also print each gate's full report.")
@click.option("--json", "as_json", is_flag=True,
              help="Print only the result as JSON (phases and timings included).")
@click.option("--watch", is_flag=True,
              help="Then the monitoring loop: serve Production with the inference log, promote "
                   "a candidate that is bad on live data, and let `promote watch` roll it back.")
@click.option("--rollout", is_flag=True,
              help="Then the rollout loop: a candidate bad on live data goes canary at 5% and "
                   "is aborted; a retrain passes 5% and 50% and becomes Production.")
@click.option("--log-uri", envvar=LOG_URI_ENV, show_envvar=True, default=DEFAULT_LOG_URI,
              show_default=True, metavar="URI", help="The inference log of --watch and "
                                                     "--rollout.")
def command(candidates: str, policies: str, model_name: str | None, rows: int, details: bool,
            as_json: bool, watch: bool, rollout: bool, log_uri: str) -> object:
    """Train every candidate, gate each new version, then predict from Production.

    Uses the group's --tracking-uri / MLFLOW_TRACKING_URI, else a local SQLite store
    (sqlite:///mlflow.db in the current directory, artifacts in ./mlruns; no server).
    Exits 0 when the job ran, whatever each gate decided.
    """
    with requires_extra("all", "promote demo"):
        result = run_demo(connect(tracking_uri() or DEFAULT_TRACKING_URI), candidates=candidates,
                          policies=policies, model_name=model_name, rows=rows, details=details,
                          say=(lambda _line: None) if as_json else click.echo,
                          watch_log=log_uri if watch else None,
                          rollout_log=log_uri if rollout else None)
    if as_json:
        click.echo(demo_json(result))
    return result
