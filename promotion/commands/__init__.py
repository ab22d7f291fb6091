"""The `promote` subcommands: thin click layers over plain functions."""

from __future__ import annotations

import click

from promotion.cli import Context


def tracking_uri() -> str | None:
    """The group's --tracking-uri (or MLFLOW_TRACKING_URI); None lets MLflow pick its default."""
    ctx = click.get_current_context().find_object(Context)
    return ctx.tracking_uri if ctx is not None else None
