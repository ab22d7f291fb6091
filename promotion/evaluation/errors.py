"""Errors that point into the policy file, and the useful part of a library's error message.

Every problem re-scoring finds (with the evaluation set, or with a model's ability to score it) is
an InvalidInput naming the policy file, the line and the key: `file:line:col: key: message`.
"""

from __future__ import annotations

from promotion.errors import InvalidInput, redact
from promotion.policy.model import Policy


def policy_error(policy: Policy, key: tuple[str, ...], message: str) -> InvalidInput:
    """An InvalidInput at `key` of the policy file: `file:line:col: key: message`.

    The position is the one the file had when the policy was loaded (the file is not read
    again); a policy built in code has none, and the message still names the file and the key.
    """
    return policy.error(key, redact(message))


def reason(exc: BaseException) -> str:
    """The useful part of a library's error: MLflow's schema errors end in `Error: <why>`."""
    text = str(exc)
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    return first_line(text)[:300] or type(exc).__name__


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
