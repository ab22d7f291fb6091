"""Every expected failure derives from FatalError and carries its exit code.

The CLI's single error boundary (promotion.cli.main) maps these to process exit codes; nothing else
calls sys.exit. Outcomes that are not failures (a rejection by policy) are results with a
`return_code`, not exceptions.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from promotion import DISTRIBUTION


class ExitCode(IntEnum):
    """The documented exit codes (README: "Exit codes")."""

    OK = 0  # promoted, would be promoted (dry run), already Production, valid, done
    REJECTED = 1  # a policy rule failed (or the result was inconclusive): nothing moved
    INVALID_INPUT = 2  # bad policy, arguments, config, unknown model/version/alias
    REGISTRY = 3  # registry unreachable after bounded retries, or the alias moved while deciding:
    # nothing moved (the message starts with where the alias still points)
    BUG = 4  # unexpected error: traceback written to a log file
    INCOMPLETE = 5  # the alias moved (or its write's answer was lost), but the record is
    # incomplete: `promote status` shows what is missing; the model's next gate or rollback
    # completes it
    INTERRUPTED = 130  # Ctrl-C / SIGINT


class FatalError(Exception):
    """Base of every expected failure. The message is one clear line meant for the user."""

    exit_code: ExitCode = ExitCode.INVALID_INPUT

    def lines(self) -> list[str]:
        """What the boundary prints, one item per line (subclasses may print several)."""
        return [str(self)]


class InvalidInput(FatalError):
    """Bad input: arguments, configs, unknown model / version / alias."""

    exit_code = ExitCode.INVALID_INPUT


class RegistryError(FatalError):
    """The registry could not be read or written (unreachable, refused, inconsistent)."""

    exit_code = ExitCode.REGISTRY


class ConflictError(RegistryError):
    """The alias moved while a decision was being made; nothing was moved."""


class NothingMoved(RegistryError):
    """A registry failure before any alias moved; the message says where the alias still is."""


class LogUnavailable(FatalError):
    """The inference log database could not be read or written (exit 3): nothing moved."""

    exit_code = ExitCode.REGISTRY


class IncompleteError(FatalError):
    """An alias moved (or may have), and what should follow it was not all written."""

    exit_code = ExitCode.INCOMPLETE


class MissingExtra(InvalidInput):
    """A command (or a policy, or a setting) needs an optional part of Promote that is not
    installed: exit 2, said before anything was read or moved."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(f"{what} needs the {extra} extra: pip install '{DISTRIBUTION}[{extra}]' "
                         f"(the module {module} is not installed)")
        self.extra, self.module = extra, module


# The modules each extra of the distribution brings (pyproject.toml, optional-dependencies), by
# import name. The base install (mlflow-skinny, pyyaml, click, pydantic) gates on logged metrics.
_SCIENCE = ("numpy", "pandas", "sklearn", "skops")
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("sqlalchemy", "alembic"),  # full mlflow: a database tracking store (sqlite:///...)
    "train": _SCIENCE,
    "evaluate": (*_SCIENCE, "matplotlib"),
    "serve": ("prometheus_client", "sqlalchemy", *_SCIENCE),
    "monitor": ("sqlalchemy", "scipy", "matplotlib", *_SCIENCE),
    "notify": ("apprise",),
    "postgres": ("psycopg",),
}
EXTRAS["all"] = tuple(dict.fromkeys(m for modules in EXTRAS.values() for m in modules))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextmanager
def requires_extra(extra: str, what: str) -> Iterator[None]:
    """Fail with MissingExtra when `extra` is not installed: at once when one of its modules is
    missing (nothing imported, nothing moved), and when the body's own imports find a third-party
    module missing. `what` names what needs it ("promote serve", "the policy p.yaml")."""
    for module in EXTRAS[extra]:
        if not _installed(module):
            raise MissingExtra(what, extra, module)
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if not top or top == "promotion":
            raise
        raise MissingExtra(what, extra, top) from exc


# Userinfo runs to the LAST "@" of the URI (a password may itself hold "@" or "/"): greedy on
# purpose, since hiding a little too much of a URI is better than showing part of a password.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)\S*@")
_SECRET_PARAMS = re.compile(
    r"(?P<key>[?&](?:access_token|token|password|passwd|secret|api_key|apikey|sig)=)[^&#\s]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Remove credentials from text meant for output: URI userinfo (scheme://user:pass@host) and
    secret-looking query parameters (?token=...)."""
    return _SECRET_PARAMS.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


class RedactingFormatter(logging.Formatter):
    """A log formatter that passes every line, tracebacks included, through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
