"""The `promote` command line: a thin click layer and the one error boundary.

Subcommands are imported lazily so that `promote --help` and `promote policy validate` never pay
for `import mlflow` (~1.3 s). Each command module exposes a click command named `command` and keeps
heavy imports inside its functions.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

import click

from promotion import __version__
from promotion.commands import Context
from promotion.errors import ExitCode, FatalError, redact

# name -> (module, one-line help). The help is static so listing commands imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "gate": (
        "promotion.commands.gate",
        "Gate a candidate version against the alias a policy guards.",
    ),
    "rollback": ("promotion.commands.rollback", "Move the alias back to <alias>-previous."),
    "status": (
        "promotion.commands.status",
        "Show every alias of a model and each version's last decision.",
    ),
    "history": ("promotion.commands.history", "Show past promotion decisions, newest first."),
    "policy": (
        "promotion.commands.policy",
        "Validate and list policies; preview the effect of a policy edit.",
    ),
    "train": (
        "promotion.commands.train",
        "Train a candidate from a config and register it as a new version.",
    ),
    "demo": (
        "promotion.commands.demo",
        "Run the main job: train every candidate, gate each, load Production.",
    ),
    "serve": (
        "promotion.commands.serve",
        "Serve models:/MODEL@ALIAS over HTTP, following the alias as it moves.",
    ),
    "watch": (
        "promotion.commands.watch",
        "Judge the version behind an alias on live traffic; roll a bad one back.",
    ),
    "rollout": (
        "promotion.commands.rollout",
        "Take a canary or shadow rollout a step further on live traffic.",
    ),
    "feedback": (
        "promotion.commands.feedback",
        "Join ground-truth labels (CSV/Parquet) to logged predictions.",
    ),
    "webhooks": (
        "promotion.commands.webhooks",
        "Point MLflow webhooks at serving endpoints (ensure), and test them.",
    ),
    "init": (
        "promotion.commands.init",
        "Write a starter policy, training config and workflows into a git repository.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[cmd_name][0])
        cmd: click.Command = module.command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="promote")
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    show_envvar=True,
    metavar="URI",
    help="MLflow tracking server. Default: MLflow's embedded default (a local SQLite file).",
)
@click.pass_context
def cli(ctx: click.Context, tracking_uri: str | None) -> None:
    """Promote: move an MLflow model alias only when every policy rule passes.

    \b
    Exit codes: 0 ok/promoted, 1 rejected by policy, 2 invalid input,
    3 registry error, 4 unexpected error (traceback logged), 130 interrupted.
    """
    ctx.obj = Context(tracking_uri=tracking_uri or None)


def _crash_log(exc: BaseException) -> str:
    """Write the traceback of an unexpected error to a file and return its path."""
    directory = os.environ.get("PROMOTE_LOG_DIR") or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(
        directory, f"promote-crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    )
    text = "".join(traceback.format_exception(exc))
    # Readable by its owner only: a traceback can hold more than the one line printed.
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(redact(text))
    return path


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code: the one place exceptions become exit codes."""
    try:
        result: Any = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="promote",
            standalone_mode=False,
        )
    except FatalError as exc:
        for line in exc.lines():
            click.echo(redact(line), err=True)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.ClickException as exc:  # usage errors: bad option, missing argument
        exc.show()
        return int(ExitCode.INVALID_INPUT)
    except (KeyboardInterrupt, click.Abort):
        click.echo("promote: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        path = _crash_log(exc)
        click.echo(
            f"promote: unexpected error ({type(exc).__name__}); traceback written to {path}",
            err=True,
        )
        return int(ExitCode.BUG)
    # Commands return an int, an object with `return_code`, or None (success).
    if result is None:
        return int(ExitCode.OK)
    return int(getattr(result, "return_code", result))


def main() -> None:
    sys.exit(run())
