"""Where a policy problem is: `Issue` (file, line, column, key path, message), the `PolicyError`
that carries every issue of a run, and `Positions`, the place of every key and value of a file.

These are plain values shared by the YAML reader (promotion.policy.yamlfile), the validator
(promotion.policy.schema) and the loaded `Policy` (promotion.policy.model), which keeps the
positions of its file so that later problems (an evaluation set that no longer reads) point at
the right line without reading the file again. Nothing here imports YAML or pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from promotion.errors import InvalidInput

Key = str | int
Path = tuple[Key, ...]
Position = tuple[int, int]  # 1-based (line, column)

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Issues and the error that carries them


@dataclass(frozen=True, order=True)
class Issue:
    """One problem in one file. `line` 0 means the file as a whole (unreadable, too large)."""

    file: str
    line: int
    col: int
    key: str  # dotted key path, "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        what = f"{self.key}: {self.message}" if self.key else self.message
        return f"{where}: {what}"


class PolicyError(InvalidInput):
    """Policy files are invalid. `.issues` holds every problem found, by file and position."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        # Files keep the order they were given in; within a file, issues go by position.
        order = {name: i for i, name in enumerate(dict.fromkeys(issue.file for issue in issues))}
        self.issues: list[Issue] = sorted(set(issues), key=lambda i: (order[i.file], i))
        first = str(self.issues[0]) if self.issues else "invalid policy"
        more = len(self.issues) - 1
        super().__init__(f"{first} (and {more} more)" if more > 0 else first)

    def lines(self) -> list[str]:
        """One line per issue: `path:LINE:COL: key.path: message`."""
        return [str(issue) for issue in self.issues]


def format_key(path: Iterable[Key]) -> str:
    """`("metrics", "rmse", "max")` -> `metrics.rmse.max`; odd keys are quoted, indices `[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _SIMPLE_KEY.fullmatch(part) else \
            '"' + printable(part.replace('"', '\\"'), limit=60) + '"'
        out += f".{text}" if out else text
    return out


def printable(text: str, limit: int = 80) -> str:
    """A value as it may appear inside a one-line message: no control characters, bounded."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Positions


@dataclass
class Positions:
    """Where each key and each value starts, by key path (1-based line and column)."""

    keys: dict[Path, Position] = field(default_factory=dict)
    values: dict[Path, Position] = field(default_factory=dict)

    def key(self, path: Path) -> Position:
        """The position of the key at `path`, else of its nearest ancestor that is recorded.

        A path may be absent (a required key that is missing): the parent's key is then where
        the problem is, since that is the mapping that lacks it. The top level has no key: its
        value (the document's first line) stands in.
        """
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def value(self, path: Path) -> Position:
        """The position of the value at `path` (falls back like `key`)."""
        return self.values[path] if path in self.values else self.key(path)

