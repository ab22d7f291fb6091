"""The `promote` subcommands: click only. Each parses its options, calls one function of the
layers below (promotion.gate, promotion.training, promotion.serve, ...), and hands the result to
a renderer in promotion.report. Nothing here imports mlflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass
class Context:
    """What the group's options give every subcommand (click's ctx.obj)."""

    tracking_uri: str | None


def tracking_uri() -> str | None:
    """The group's --tracking-uri (or MLFLOW_TRACKING_URI); None lets MLflow pick its default."""
    ctx = click.get_current_context().find_object(Context)
    return ctx.tracking_uri if ctx is not None else None
