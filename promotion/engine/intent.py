"""The write-ahead intent of an alias-moving operation, and what recovery makes of it.

Before its first write, every command that may move an alias (a gate, a rollback) records what it
is about to do as one tag on the registered model (`promotion.intent`): which alias, from which
version to which, what `<alias>-previous` goes from and to, and the operation id its record run
carries. The last write of a completed operation removes it. So a command interrupted at any
point leaves a statement of what it was doing, and the next command reads the aliases and decides,
by `assess` below (a pure function), whether the operation is:

- `applied`: the alias already points at the target: finish the remaining writes (the second
  alias, the version tags, the record) and record the move, once;
- `not_applied`: the alias is still where it was: nothing moved; undo what the operation may have
  written before its move (a gate writes `-previous` first), record the attempt as interrupted;
- `superseded`: the alias points elsewhere (a writer outside Promote moved it): record the
  attempt as superseded, touch no alias.

Never is an interrupted operation applied a second time, nor reversed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

INTENT_TAG = "promotion.intent"
Kind = Literal["gate", "rollback"]
State = Literal["applied", "not_applied", "superseded"]


@dataclass(frozen=True)
class Intent:
    operation: str  # a unique id; the record run carries it as a tag
    kind: Kind
    model: str
    alias: str
    previous_alias: str
    source: str | None  # what the alias pointed at before (None: not set)
    target: str  # what the alias points at once applied
    previous_source: str | None  # what -previous pointed at before
    previous_target: str | None  # what -previous points at once applied (None: unchanged)
    started_at: str
    holder: str  # who started it (user@host, pid)
    policy: str | None = None  # the policy a gate applied (for the hint to finish it)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Intent | None:
        """The intent in a tag's value, or None when the value is not one (then it is ignored)."""
        try:
            data = json.loads(text)
            return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None

    @property
    def describe(self) -> str:
        what = "promotion" if self.kind == "gate" else "rollback"
        return (f"an interrupted {what} of @{self.alias} (version {self.source or 'none'} -> "
                f"{self.target}, started {self.started_at} by {self.holder})")

    def finish_hint(self) -> str:
        """The one command that completes (or cleanly closes) this operation."""
        if self.kind == "rollback":
            suffix = "" if self.alias == "Production" else f" --alias {self.alias}"
            return f"promote rollback {self.model}{suffix}"
        return f"promote gate {self.policy}" if self.policy else f"promote status {self.model}"


def assess(intent: Intent, alias_now: str | None) -> State:
    """What became of an interrupted operation, from where its alias points now."""
    if alias_now == intent.target:
        return "applied"
    if alias_now == intent.source:
        return "not_applied"
    return "superseded"
