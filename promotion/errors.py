"""Every expected failure derives from FatalError and carries its exit code.

The CLI's single error boundary (promotion.cli.main) maps these to process exit codes; nothing else
calls sys.exit. Outcomes that are not failures (a rejection by policy) are results with a
`return_code`, not exceptions.
"""

from __future__ import annotations

import logging
import re
from enum import IntEnum


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
