"""`promote policy preview --base OLD.yaml --head NEW.yaml`: what a policy edit would change."""

from __future__ import annotations

import os

import click

from promotion.commands import tracking_uri
from promotion.engine.preview import DEFAULT_LAST, MAX_LAST, Preview
from promotion.gate import preview
from promotion.policy.load import load_policy, load_revision
from promotion.registry.client import connect
from promotion.report.preview import RENDERERS


@click.command("preview")
@click.option("--base", "base_path", required=True, metavar="OLD.yaml",
              type=click.Path(dir_okay=False),
              help="The policy before the edit. A path that does not exist means a new policy.")
@click.option("--head", "head_path", required=True, metavar="NEW.yaml",
              type=click.Path(dir_okay=False), help="The policy after the edit.")
@click.option("--last", default=DEFAULT_LAST, show_default=True, metavar="N",
              type=click.IntRange(1, MAX_LAST),
              help="Replay over the N versions with the highest version numbers.")
@click.option("--format", "output_format", type=click.Choice(sorted(RENDERERS)), default="text",
              show_default=True, help="markdown: a section for a GitHub job summary.")
@click.option("--base-label", metavar="TEXT",
              help="How the report names the base policy, e.g. main:policies/x.yaml "
                   "(default: its path).")
def command(base_path: str, head_path: str, last: int, output_format: str,
            base_label: str | None) -> Preview:
    """Replay the base and head versions of a policy over the model's last N versions.

    Each version is decided under both policies against the version that holds the alias now,
    and the report says which decisions the edit changes. Read-only: nothing is written to the
    registry. Rules that need re-scoring (source: evaluation, budgets) are named, not replayed.
    Exit code 0 when the preview ran (whatever it found), 2 for an invalid policy or option,
    3 when the registry cannot be read.
    """
    head = load_policy(head_path)
    label = base_label or base_path
    base = load_revision(base_path, label, base_dir=os.path.dirname(head_path))
    result = preview(connect(tracking_uri()), head, base, last=last, base_label=label,
                     base_missing=base is None)
    click.echo(RENDERERS[output_format](result))
    return result
