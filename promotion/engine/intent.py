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

A rollout (promotion.engine.rollout) adds two kinds and a few fields. A `step` moves no alias:
its "move" is the rollout state tag going from one step to the next (or, for a stale rollout
whose canary alias was moved elsewhere, away), so what it is compared by is the state's
`position` (source and target are positions; target None: the state removed). `abort` removes
the canary alias (target None). A gate that starts a rollout (the canary alias moves) or
finishes one (the guarded alias moves) says in `rollout_before` / `rollout_after` what the
state tag was and becomes, in `retire` which alias goes once it applied, and in `outcome`
what the target version is then recorded as; recovery writes exactly that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from promotion.engine.rollout import read_state

INTENT_TAG = "promotion.intent"
Kind = Literal["gate", "rollback", "step", "abort"]
State = Literal["applied", "not_applied", "superseded"]


@dataclass(frozen=True)
class Intent:
    operation: str  # a unique id; the record run carries it as a tag
    kind: Kind
    model: str
    alias: str
    previous_alias: str
    source: str | None  # what the alias pointed at before (None: not set)
    target: str | None  # what the alias points at once applied (None: removed)
    previous_source: str | None  # what -previous pointed at before
    previous_target: str | None  # what -previous points at once applied (None: unchanged)
    started_at: str
    holder: str  # who started it (user@host, pid)
    policy: str | None = None  # the policy a gate applied (for the hint to finish it)
    # A rollout's state tag (promotion.rollout.<rollout_alias>) before and after (None: absent).
    rollout_alias: str | None = None
    rollout_before: str | None = None
    rollout_after: str | None = None
    retire: str | None = None  # an alias removed once applied (the canary, after a promotion)
    outcome: str | None = None  # the target's decision once applied (default by kind)
    record_kind: str | None = None  # the kind of its decision record (default: `kind`)

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
        what = {"gate": "promotion", "rollback": "rollback", "step": "rollout step",
                "abort": "rollout abort"}[self.kind]
        if self.kind == "step":
            to = f"to step {_step(self.target)}" if self.target else "clearing it"
            return (f"an interrupted {what} of @{self.alias} ({to}, started {self.started_at} "
                    f"by {self.holder})")
        target = "removed" if self.target is None else self.target
        return (f"an interrupted {what} of @{self.alias} (version {self.source or 'none'} -> "
                f"{target}, started {self.started_at} by {self.holder})")

    def finish_hint(self) -> str:
        """The one command that completes (or cleanly closes) this operation."""
        if self.kind == "rollback":
            suffix = "" if self.alias == "Production" else f" --alias {self.alias}"
            return f"promote rollback {self.model}{suffix}"
        command = "gate" if self.kind == "gate" and self.record_kind != "rollout" else "rollout"
        return f"promote {command} {self.policy}" if self.policy else \
            f"promote status {self.model}"


def _step(position: str | None) -> str:
    """The 1-based step of a rollout position `version:step:started_at`."""
    try:
        return str(int(str(position).split(":")[1]) + 1)
    except (IndexError, ValueError):
        return "?"


def assess(intent: Intent, now: str | None) -> State:
    """What became of an interrupted operation, from where it stands now: the version its alias
    points at, or, for a `step`, the rollout state's position."""
    if now == intent.target:
        return "applied"
    if now == intent.source:
        return "not_applied"
    return "superseded"


def standing(intent: Intent, aliases: Mapping[str, str], tags: Mapping[str, str]) -> str | None:
    """Where an operation stands now, in the terms `assess` compares: its alias's version, or,
    for a `step`, the position of the rollout state on the model's tags."""
    if intent.kind == "step":
        state, _ = read_state(tags, intent.rollout_alias or "")
        return None if state is None else state.position
    return aliases.get(intent.alias)
