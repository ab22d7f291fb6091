"""`promote feedback MODEL FILE`: join ground-truth labels to the predictions the log holds.

The labels arrive whenever they are known (minutes or weeks later): each is joined to the logged
row it is about, so the live quality of the version that served that request is computed by the
next `promote watch`. The file is checked whole before anything is written, and written all or
nothing.
"""

from __future__ import annotations

import click

from promotion.commands import extras
from promotion.engine.naming import version_or_none
from promotion.errors import InvalidInput, requires_extra
from promotion.monitoring.feedbackfile import read_labels
from promotion.monitoring.logstore import DEFAULT_LOG_URI, LOG_URI_ENV, LogStore


@click.command("feedback")
@click.argument("model")
@click.argument("path", metavar="FILE", type=click.Path(path_type=str))
@click.option("--label-column", default="label", show_default=True,
              help="The column holding the true value.")
@click.option("--log-uri", envvar=LOG_URI_ENV, show_envvar=True, default=DEFAULT_LOG_URI,
              show_default=True, metavar="URI", help="The inference log `promote serve` writes.")
def command(model: str, path: str, label_column: str, log_uri: str) -> None:
    """Join ground-truth labels in FILE (CSV or Parquet) to MODEL's logged predictions.

    \b
    Columns: label, and request_id (+ optional row, from 0) as X-Request-Id named the
    request, or row_key (the value of the endpoint's --row-key column).

    \b
    Exit codes: 0 written, 2 a bad file / unknown request ids / duplicates /
    rows already labelled (nothing written), 3 log database unreachable.
    """
    with requires_extra("monitor", "promote feedback"):
        extras.for_log(log_uri)
        if not model.strip():
            raise InvalidInput("MODEL must not be empty")
        found = read_labels(path, label_column=label_column)
        store = LogStore(log_uri)
        try:
            store.migrate()  # a log written by an older Promote is brought up to this schema first
            written = store.add_feedback(found.labels, source=f"file {path}", model=model)
        except InvalidInput as refused:
            raise found.located(refused) from None
        finally:
            store.close()
        by_version = ", ".join(f"{version_or_none(v, 'no version')}: {n}"
                               for v, n in sorted(written.by_version.items()))
        click.echo(f"wrote {written.written} label(s) for {model} ({by_version}) to {store.where}")
