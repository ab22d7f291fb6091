"""The rules of the policy language's values, and the messages that explain them.

Each checker takes a raw value (as read from YAML) and returns it, possibly normalised (a margin
`"1%"` -> `Margin(0.01, relative=True)`, a data path resolved against the policy's directory), or
calls `fail` with a short, stable message that says what was expected and what was found
(`describe`), with a hint when one helps (`suggest`: "did you mean ...?"). promotion.policy.fields
pairs each checker with its JSON Schema; promotion.policy.schema assembles them into the language.

Two things pydantic would accept are refused on purpose: `null` anywhere (an empty `max:` is a
mistake, not "no bound"), and numbers written as strings or booleans (`max: "70"`, `min: true`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, NoReturn, TypeGuard

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from promotion.policy.issues import printable
from promotion.policy.model import Margin

EVALUATION_METRICS = ("rmse", "mae", "r2", "accuracy", "f1", "roc_auc", "log_loss")
# The datasets bundled with scikit-learn (no download) that load as (features, target).
SKLEARN_LOADERS = ("load_breast_cancer", "load_diabetes", "load_digits", "load_iris", "load_wine")
DATA_SUFFIXES = (".csv", ".parquet")
DEFAULT_TEST_SIZE = 0.25

# MLflow's own rules (mlflow.utils.validation): alias names match ^[\w\-]*$ (Unicode \w), are
# non-empty and at most 255 characters; 'latest' (any case) and v<digits> are reserved.
_ALIAS_CHARS = re.compile(r"[\w-]+")
_VERSION_ALIAS = re.compile(r"[vV]\d+")
MAX_ALIAS_LENGTH = 255
MAX_GUARDED_ALIAS_LENGTH = MAX_ALIAS_LENGTH - len("-previous")
MAX_MODEL_NAME_LENGTH = 256  # the registry's column width
MAX_TAG_KEY_LENGTH = 250
MAX_VERSION = 2**63 - 1  # the registry stores version numbers as 64-bit integers at most
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 90 * 86400  # a window or bake period longer than a quarter is a typo
_NEGATIVE_PERCENT = re.compile(r"-\s*[0-9]+(?:\.[0-9]+)?\s*%")


# --------------------------------------------------------------------------------------------
# Messages


def fail(message: str) -> NoReturn:
    """Raise a validation error whose text is exactly `message` (no pydantic prefix)."""
    # The message goes through the context, never the template: user text may contain braces.
    raise PydanticCustomError("policy", "{message}", {"message": message})


def describe(value: Any) -> str:
    """A value as YAML would show it, for `got ...` in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return printable(repr(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return printable(str(value), limit=40)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return value.isoformat()
    return type(value).__name__


def suggest(word: str, options: Sequence[str], cutoff: float = 0.6) -> str:
    """`; did you mean 'min'?` when a close option exists, else ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not close:
        close = difflib.get_close_matches(word.lower(), options, n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""


def _quote_hint(value: Any) -> str:
    """YAML turns unquoted `true`, `3` or `1.5` into non-strings: say how to keep the text."""
    if isinstance(value, bool | int | float):
        return f'; quote it: "{describe(value)}"'
    return ""


# --------------------------------------------------------------------------------------------
# Values: each checker returns the value or calls `fail`


def _unquote_hint(value: str, accepted: Callable[[str], bool]) -> str:
    """A quoted number or boolean is a string in YAML: say so when that is the only problem."""
    try:
        return "; write it without quotes" if accepted(value.strip()) else ""
    except (ValueError, OverflowError):
        return ""


def finite_number(value: Any, expected: str = "a finite number") -> float:
    if isinstance(value, str):
        hint = _unquote_hint(value, lambda v: math.isfinite(float(v)))
        fail(f"expected {expected}, got {describe(value)}{hint}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(f"expected {expected}, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        fail(f"expected {expected}, got {describe(value)}")
    if not math.isfinite(number):
        fail(f"expected {expected}, got {describe(value)}")
    return number


def string_value(value: Any) -> str:
    if not isinstance(value, str):
        fail(f"expected a string, got {describe(value)}{_quote_hint(value)}")
    return value


def non_empty(value: Any) -> str:
    text = string_value(value)
    if not text.strip():
        fail("expected a non-empty string")
    return text


def margin(value: Any) -> Margin:
    expected = "a number >= 0 or a percentage like '1%'"
    if isinstance(value, str):
        if match := _PERCENT.fullmatch(value):
            return Margin(finite_number(float(match[1]), expected) / 100, relative=True)
        if _NEGATIVE_PERCENT.fullmatch(value):
            fail(f"a margin cannot be negative, got {describe(value)}")
        hint = _unquote_hint(value, lambda v: math.isfinite(float(v)))
        fail(f"expected {expected}, got {describe(value)}{hint}")
    number = finite_number(value, expected)
    if number < 0:
        fail(f"a margin cannot be negative, got {describe(value)}")
    return Margin(number)


def duration(value: Any) -> float:
    """`30s`, `15m`, `2h`, `1d` -> seconds. A bare number is refused: its unit would be a guess."""
    expected = "a duration like '30s', '15m', '2h' or '1d'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        fail(f"expected {expected}, got {describe(value)}")
    if not isinstance(value, str):
        fail(f"expected {expected}, got {describe(value)} (write '{value:g}s' for seconds)")
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        fail(f"expected {expected}, got {describe(value)}")
    seconds = float(match[1]) * DURATION_UNITS[match[2]]
    if seconds > MAX_DURATION_S:
        fail(f"expected at most {MAX_DURATION_S // 86400}d, got {describe(value)}")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        fail(f"expected a duration above zero, got {describe(value)}")
    return seconds


def rate(value: Any) -> float:
    """A share of requests: `1%` or a number from 0 to 1."""
    expected = "a share from 0 to 1 or a percentage like '1%'"
    if isinstance(value, str):
        if match := _PERCENT.fullmatch(value.strip()):
            share = float(match[1]) / 100
            if share > 1:
                fail(f"expected at most 100%, got {describe(value)}")
            return share
        fail(f"expected {expected}, got {describe(value)}")
    number = finite_number(value, expected)
    if not 0 <= number <= 1:
        hint = f"; {number:g}% is {number / 100:g}" if 1 < number <= 100 else ""
        fail(f"expected {expected}, got {describe(value)}{hint}")
    return number


MAX_STEPS = 10  # a rollout with more steps than this is a typo (each lasts at least step_after)


def step_share(value: Any) -> float:
    """One step of a rollout: its share of the traffic, above 0 and at most 1 (`5%` or `0.05`)."""
    share = rate(value)
    if share <= 0:
        fail(f"a step's share must be above 0, got {describe(value)}")
    return share


def step_list(value: Any) -> Any:
    """The steps of a rollout: a list of 1 to MAX_STEPS shares (each checked by `step_share`)."""
    if not isinstance(value, list):
        fail(f"expected a list of traffic shares like [5%, 25%, 50%], got {describe(value)}")
    if not value:
        fail("expected at least one step, e.g. [5%, 25%, 50%]")
    if len(value) > MAX_STEPS:
        fail(f"expected at most {MAX_STEPS} steps, got {len(value)}")
    return value


def one_of(*options: str) -> Callable[[Any], Any]:
    listed = " or ".join(f"'{o}'" for o in options) if len(options) <= 2 else \
        "one of " + ", ".join(f"'{o}'" for o in options)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            hint = suggest(value, options) if isinstance(value, str) else ""
            fail(f"expected {listed}, got {describe(value)}{hint}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        hint = _unquote_hint(value, lambda v: v in ("true", "false")) \
            if isinstance(value, str) else ""
        fail(f"expected true or false, got {describe(value)}{hint}")
    return value


def integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = _unquote_hint(value, str.isdigit) if isinstance(value, str) else ""
            fail(f"expected an integer, got {describe(value)}{hint}")
        if not low <= value <= high:
            fail(f"expected an integer from {low} to {high}, got {describe(value)}")
        return value

    return check


def fraction(value: Any) -> float:
    number = finite_number(value, "a number between 0 and 1")
    if not 0 < number < 1:
        hint = f"; {number:g}% is {number / 100:g}" if 1 < number < 100 else ""
        fail(f"expected a number between 0 and 1 (exclusive), got {describe(value)}{hint}")
    return number


def alias_problem(name: str) -> str | None:
    """Why MLflow would refuse `name` as an alias, or None."""
    if not name:
        return "an alias name cannot be empty"
    if not _ALIAS_CHARS.fullmatch(name):
        return f"alias names may only contain letters, digits, '_' and '-', got {describe(name)}"
    if len(name) > MAX_ALIAS_LENGTH:
        return f"alias names are at most {MAX_ALIAS_LENGTH} characters, got {len(name)}"
    if name.lower() == "latest":
        return f"alias {describe(name)} is reserved by MLflow ('latest' in any case)"
    if _VERSION_ALIAS.fullmatch(name):
        return f"alias {describe(name)} is reserved by MLflow for version numbers"
    return None


def guarded_alias(value: Any) -> str:
    name = string_value(value)
    if problem := alias_problem(name):
        fail(problem)
    if len(name) > MAX_GUARDED_ALIAS_LENGTH:
        # Promotion also sets `<alias>-previous` (Policy.previous_alias), which MLflow must accept.
        fail(f"the guarded alias is at most {MAX_GUARDED_ALIAS_LENGTH} characters, got "
             f"{len(name)} ('{name[:8]}...-previous' must fit MLflow's {MAX_ALIAS_LENGTH})")
    return name


def candidate_spec(value: Any) -> str | int:
    expected = "expected 'latest', a version number or '@<alias>'"
    if isinstance(value, bool) or not isinstance(value, int | str):
        fail(f"{expected}, got {describe(value)}")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 30:
        value = int(value)  # a quoted version number
    if isinstance(value, int):
        if value < 1:
            fail(f"version numbers start at 1, got {value}")
        if value > MAX_VERSION:
            fail(f"version numbers are at most {MAX_VERSION}, got {describe(value)}")
        return value
    if value == "latest":
        return value
    if value.startswith("@"):
        if problem := alias_problem(value[1:]):
            fail(problem)
        return value
    hint = suggest(value, ["latest"], cutoff=0.5)
    if not hint and alias_problem(value) is None:
        hint = f"; did you mean '@{value}'?"
    fail(f"{expected}, got {describe(value)}{hint}")


def model_name(value: Any) -> str:
    name = string_value(value)
    if not name.strip():
        fail("the model name cannot be empty")
    if "/" in name or ":" in name:
        fail(f"model names cannot contain '/' or ':', got {describe(name)}")
    if name == "." or name.startswith(".."):
        fail(f"model names cannot be '.' or start with '..', got {describe(name)}")
    if len(name) > MAX_MODEL_NAME_LENGTH:
        fail(f"model names are at most {MAX_MODEL_NAME_LENGTH} characters, got {len(name)}")
    return name


def tag_key(value: Any) -> str:
    key = non_empty(value)
    if len(key) > MAX_TAG_KEY_LENGTH:
        fail(f"tag keys are at most {MAX_TAG_KEY_LENGTH} characters, got {len(key)}")
    return key


def data_source(value: Any, info: ValidationInfo) -> str:
    """`sklearn:<loader>` as is; a file path resolved against the policy's directory."""
    text = non_empty(value)
    if text.startswith("sklearn:"):
        loader = text.removeprefix("sklearn:")
        if loader not in SKLEARN_LOADERS:
            hint = suggest(loader, SKLEARN_LOADERS)
            fail(f"unknown scikit-learn dataset {describe(loader)}{hint} "
                 f"(known: {', '.join(SKLEARN_LOADERS)})")
        return text
    if not text.lower().endswith(DATA_SUFFIXES):
        fail(f"expected a .csv or .parquet file or 'sklearn:<loader>', got {describe(text)}")
    context = info.context or {}
    path = os.path.abspath(os.path.join(context.get("base_dir") or os.curdir, text))
    if context.get("check_files", True) and not os.path.isfile(path):
        fail(f"file not found: {describe(text)} (paths are relative to the policy file)")
    return path


def at_least_zero(value: Any) -> float:
    number = finite_number(value, "a number >= 0")
    if number < 0:
        fail(f"expected a number >= 0, got {describe(value)}")
    return number


def is_real(value: Any) -> TypeGuard[int | float]:
    """A plain finite number (rules compare values only when they are valid ones)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def no_null(value: Any) -> Any:
    """For optional sections: leaving one out is fine, writing `evaluation:` with nothing is not.

    (Every scalar type refuses null itself; pydantic would take null for a `Model | None`.)
    """
    if value is None:
        fail("expected a mapping, got null")
    return value
