"""`promote train CONFIG...`: train candidates and register each as a new `challenger` version."""

from __future__ import annotations

import click

from promotion.commands import tracking_uri
from promotion.errors import requires_extra
from promotion.report.training import train_json, train_lines
from promotion.training import TrainResult, train_candidates


@click.command(name="train")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...",
                type=click.Path(dir_okay=False))
@click.option("--model-name", metavar="NAME",
              help="Register into this model instead of the one each config names.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(configs: tuple[str, ...], model_name: str | None, as_json: bool) -> object:
    """Train each CONFIG (train/candidates/*.yaml), register a new version, alias it `challenger`.

    Every config is validated before anything is written: one bad config and nothing is trained.
    Prints the run id, the registered version and the holdout metrics of each candidate.
    """
    with requires_extra("train", "promote train"):

        def progress(result: TrainResult) -> None:
            if not as_json:
                click.echo("\n".join(train_lines(result)))

        report = train_candidates(configs, tracking_uri=tracking_uri(), model_name=model_name,
                                  progress=progress)
        if as_json:
            click.echo(train_json(report.results))
        return report
