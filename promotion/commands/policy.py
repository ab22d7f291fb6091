"""`promote policy ...`: validate policy files, list them (e.g. as a CI matrix), print the policy
JSON Schema. Only the click layer: the work is in promotion.policy (files, listing, load), the
output in promotion.report.policy.

More subcommands live in their own modules and are listed in `LAZY_SUBCOMMANDS` (module, help):
they are imported only when invoked, and a module that is not installed is simply not offered.
Nothing here imports mlflow, so `promote policy validate` stays fast enough for pre-commit.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from promotion.errors import ExitCode, InvalidInput
from promotion.policy.issues import PolicyError
from promotion.policy.listing import check_paths, list_policies
from promotion.policy.load import policy_schema
from promotion.report.policy import (
    LIST_FORMATS,
    error_annotations,
    listing_text,
    schema_text,
    validation_lines,
)

# name -> (module exposing a click command named `command`, one-line help shown in the listing)
LAZY_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "preview": ("promotion.commands.preview",
                "Replay a policy edit over recent versions: what would change."),
}


class PolicyGroup(click.Group):
    """A click group whose extra subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, (module, _) in LAZY_SUBCOMMANDS.items() if _installed(module)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in LAZY_SUBCOMMANDS or not _installed(LAZY_SUBCOMMANDS[cmd_name][0]):
            return None
        cmd: click.Command = importlib.import_module(LAZY_SUBCOMMANDS[cmd_name][0]).command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static help for lazy subcommands, so listing them imports nothing.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit=70)))
            else:
                rows.append((name, LAZY_SUBCOMMANDS[name][1]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@click.group("policy", cls=PolicyGroup)
def command() -> None:
    """Validate and list policies; preview the effect of a policy edit."""


# --------------------------------------------------------------------------------------------
# validate


@command.command("validate", short_help="Check policy files without contacting MLflow.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--format", "output_format", type=click.Choice(["text", "github"]), default="text",
              show_default=True,
              help="github: also print GitHub Actions ::error annotations on stdout.")
def validate(paths: tuple[str, ...], output_format: str) -> int:
    """Check policy files without contacting MLflow.

    PATHS are policy files or directories (their *.yaml and *.yml files, recursively); the
    default is the policies/ directory. Prints `ok  PATH` for each valid file and one
    `PATH:LINE:COL: key: message` line per problem. Exit code 0 when every file is valid, 2
    otherwise.
    """
    loaded, issues = check_paths(paths)
    for line in validation_lines(loaded, issues, output_format):
        click.echo(line)
    if issues:
        raise PolicyError(issues)
    return int(ExitCode.OK)


# --------------------------------------------------------------------------------------------
# schema


@command.command("schema", short_help="Print the JSON Schema of the policy language.")
def schema() -> int:
    """Print the policy language's JSON Schema (policies/schema.json is this output)."""
    click.echo(schema_text(policy_schema()), nl=False)
    return int(ExitCode.OK)


# --------------------------------------------------------------------------------------------
# list


@command.command("list", short_help="List policies (file, model, alias), e.g. as a CI matrix.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--select", metavar="POLICY_FILE|MODEL",
              help="Only this policy file, or every policy of this model. Empty: every policy.")
@click.option("--per-alias", is_flag=True,
              help="One entry per (model, alias): the first policy file guarding it.")
@click.option("--watched", is_flag=True,
              help="Only policies with a watch: block (none is not an error).")
@click.option("--rollouts", is_flag=True,
              help="Only policies with a rollout: block (none is not an error).")
@click.option("--format", "output_format", type=click.Choice(LIST_FORMATS), default="text",
              show_default=True,
              help="github-matrix: one line {\"include\": [...]}, errors also as ::error "
                   "annotations.")
def list_command(paths: tuple[str, ...], select: str | None, per_alias: bool, watched: bool,
                 rollouts: bool, output_format: str) -> int:
    """List the policies under PATHS (default: policies/): file, model and alias.

    Only files under PATHS count, so a selection can only pick a policy that is there (in a
    repository: one that code review has seen). Every file is validated; exit code 0 when the
    selection matches (--watched and --rollouts may then leave no entry), 2 for an invalid
    policy or a selection that matches nothing.
    """
    try:
        text = listing_text(list_policies(paths, select=select, per_alias=per_alias,
                                          watched=watched, rollouts=rollouts), output_format)
    except InvalidInput as exc:
        if output_format == "github-matrix":  # stdout is the matrix: annotate on stderr
            for line in error_annotations(exc):
                click.echo(line, err=True)
        raise
    click.echo(text)
    return int(ExitCode.OK)
