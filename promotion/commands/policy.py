"""`promote policy ...`: validate policy files, list them (e.g. as a CI matrix), print the policy
JSON Schema.

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
from dataclasses import dataclass

import click

from promotion.errors import ExitCode, InvalidInput, redact
from promotion.policy import Policy
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
    loaded, issues = load_each(policy_files(paths))
    for path, _ in loaded:
        click.echo(f"ok  {path}")
    if not issues:
        return int(ExitCode.OK)
    if output_format == "github":
        for issue in issues:
            click.echo(github_annotation(issue))
    raise PolicyError(issues)


def load_each(files: Sequence[str]) -> tuple[list[tuple[str, Policy]], list[Issue]]:
    """Every file validated: the valid ones with their policy, and every issue of the others."""
    from promotion.policies import load_policy

    loaded: list[tuple[str, Policy]] = []
    issues: list[Issue] = []
    for path in files:
        try:
            loaded.append((path, load_policy(path)))
        except PolicyError as exc:
            issues.extend(exc.issues)
    return loaded, issues


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


# --------------------------------------------------------------------------------------------
# list

# GitHub Actions refuses a matrix of more than 256 jobs: say so before the workflow does.
MATRIX_LIMIT = 256
LIST_FORMATS = ("text", "json", "github-matrix")


@dataclass(frozen=True)
class PolicyEntry:
    """What a workflow needs to act on one policy: its file, its model, the alias it guards."""

    policy: str
    model: str
    alias: str

    def as_dict(self) -> dict[str, str]:
        return {"policy": self.policy, "model": self.model, "alias": self.alias}


@dataclass(frozen=True)
class PolicyListing:
    entries: tuple[PolicyEntry, ...]

    @property
    def return_code(self) -> int:
        return int(ExitCode.OK)

    def text(self, output_format: str) -> str:
        if output_format == "github-matrix":
            # One line: it goes into $GITHUB_OUTPUT as `matrix=...`.
            return json.dumps({"include": [e.as_dict() for e in self.entries]},
                              ensure_ascii=False)
        if output_format == "json":
            return json.dumps({"policies": [e.as_dict() for e in self.entries]}, indent=2,
                              ensure_ascii=False)
        return "\n".join(f"{e.policy}: {e.model}@{e.alias}" for e in self.entries)


@command.command("list", short_help="List policies (file, model, alias), e.g. as a CI matrix.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--select", metavar="POLICY_FILE|MODEL",
              help="Only this policy file, or every policy of this model. Empty: every policy.")
@click.option("--per-alias", is_flag=True,
              help="One entry per (model, alias): the first policy file guarding it.")
@click.option("--format", "output_format", type=click.Choice(LIST_FORMATS), default="text",
              show_default=True,
              help="github-matrix: one line {\"include\": [...]}, errors also as ::error "
                   "annotations.")
def list_command(paths: tuple[str, ...], select: str | None, per_alias: bool,
                 output_format: str) -> PolicyListing:
    """List the policies under PATHS (default: policies/): file, model and alias.

    Only files under PATHS count, so a selection can only pick a policy that is there (in a
    repository: one that code review has seen). Every file is validated; exit code 0 with at
    least one entry, 2 for an invalid policy or a selection that matches nothing.
    """
    try:
        listing = list_policies(paths, select=select, per_alias=per_alias)
        if output_format == "github-matrix" and len(listing.entries) > MATRIX_LIMIT:
            raise InvalidInput(f"{len(listing.entries)} policies selected: a GitHub Actions "
                               f"matrix runs at most {MATRIX_LIMIT} jobs; select a model or a "
                               "policy file")
    except InvalidInput as exc:
        if output_format == "github-matrix":  # stdout is the matrix: annotate on stderr
            for line in _annotations(exc):
                click.echo(line, err=True)
        raise
    click.echo(listing.text(output_format))
    return listing


def list_policies(paths: Sequence[str], *, select: str | None = None,
                  per_alias: bool = False) -> PolicyListing:
    """The policies under `paths` (default policies/), in file order, narrowed by `select`.

    `select` names a policy file (compared as an absolute path, so `./policies/a.yaml` matches)
    or a model (every policy of it); None or "" selects everything. Raises PolicyError if any
    file is invalid, InvalidInput if the selection matches nothing.
    """
    files = policy_files(paths)
    loaded, issues = load_each(files)
    if issues:
        raise PolicyError(issues)
    entries = [PolicyEntry(path, policy.model, policy.alias) for path, policy in loaded]
    if select:
        entries = [e for e in entries if _selects(select, e)]
        if not entries:
            raise InvalidInput(_no_match(select, paths, files))
    if per_alias:
        # A rollback once per alias: a second one of the same alias would flip it back.
        first: dict[tuple[str, str], PolicyEntry] = {}
        for entry in entries:
            first.setdefault((entry.model, entry.alias), entry)
        entries = list(first.values())
    return PolicyListing(tuple(entries))


def _selects(select: str, entry: PolicyEntry) -> bool:
    # One value names a file or a model (a workflow input is one text box). Only listed files
    # are compared, so neither reading can reach a file outside PATHS.
    return select == entry.model or os.path.abspath(select) == os.path.abspath(entry.policy)


def _no_match(select: str, paths: Sequence[str], files: Sequence[str]) -> str:
    where = ", ".join(p if p.endswith("/") or not os.path.isdir(p) else f"{p}/"
                      for p in (paths or (DEFAULT_DIR,)))
    return (f"no policy under {where} matches {select!r}: name a policy file there or a model "
            f"({len(files)} policy file(s) found)")


def _annotations(exc: InvalidInput) -> list[str]:
    if isinstance(exc, PolicyError):
        return [github_annotation(issue) for issue in exc.issues]
    return [f"::error::{_escape_data(redact(str(exc)))}"]
