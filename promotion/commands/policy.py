"""`promote policy ...`: validate policy files, print the policy JSON Schema.

More subcommands live in their own modules and are listed in `LAZY_SUBCOMMANDS` (module, help):
they are imported only when invoked, and a module that is not installed is simply not offered.
Nothing here imports mlflow, so `promote policy validate` stays fast enough for pre-commit.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence

import click

from promotion.errors import ExitCode, InvalidInput
from promotion.policyfile import Issue, PolicyError

DEFAULT_DIR = "policies"
POLICY_SUFFIXES = (".yaml", ".yml")

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
    """Validate policies, preview the effect of a policy edit."""


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
    from promotion.policies import load_policy

    files = policy_files(paths)
    issues: list[Issue] = []
    for path in files:
        try:
            load_policy(path)
        except PolicyError as exc:
            issues.extend(exc.issues)
        else:
            click.echo(f"ok  {path}")
    if not issues:
        return int(ExitCode.OK)
    if output_format == "github":
        for issue in issues:
            click.echo(github_annotation(issue))
    raise PolicyError(issues)


def policy_files(paths: Sequence[str]) -> list[str]:
    """The files to validate: files as given, directories expanded, sorted within a directory."""
    if not paths:
        if not os.path.isdir(DEFAULT_DIR):
            raise InvalidInput(f"no {DEFAULT_DIR}/ directory here; pass policy files or "
                               "directories")
        paths = (DEFAULT_DIR,)
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = list(_yaml_files(path))
            if not found:
                raise InvalidInput(f"{path}: no *.yaml or *.yml files in this directory")
            files.extend(found)
        else:
            files.append(path)  # a missing file is reported by load_policy, with the others
    return list(dict.fromkeys(files))


def _yaml_files(directory: str) -> Iterable[str]:
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.endswith(POLICY_SUFFIXES) and not name.startswith("."):
                yield os.path.normpath(os.path.join(root, name))  # "./x.yaml" -> "x.yaml"


def github_annotation(issue: Issue) -> str:
    """A GitHub Actions workflow command: `::error file=F,line=L,col=C::key: message`."""
    props = [f"file={_escape_property(issue.file)}"]
    if issue.line:
        props += [f"line={issue.line}", f"col={issue.col}"]
    text = f"{issue.key}: {issue.message}" if issue.key else issue.message
    return f"::error {','.join(props)}::{_escape_data(text)}"


def _escape_data(text: str) -> str:
    # GitHub's rules (actions/toolkit, command.ts): % first, then CR and LF.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


# --------------------------------------------------------------------------------------------
# schema


@command.command("schema", short_help="Print the JSON Schema of the policy language.")
def schema() -> int:
    """Print the policy language's JSON Schema (policies/schema.json is this output)."""
    click.echo(schema_text(), nl=False)
    return int(ExitCode.OK)


def schema_text() -> str:
    """The JSON Schema exactly as committed: 2-space indent, trailing newline."""
    from promotion.schema import json_schema

    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
