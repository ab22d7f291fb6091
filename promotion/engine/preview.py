"""Previewing a policy edit, the pure half: replay recent versions under both policies.

Every version is decided against the version that holds the alias NOW, under both policies. MLflow
keeps no alias history (an alias is a last-writer-wins upsert), so "what Production was when
version 7 was gated" is not knowable from the registry; and the question a reviewer asks is "from
here on, which candidates would this edit let through or stop?", which is exactly the decision the
next gate would make for each of them. The version holding the alias shows as `already`.

Rules that need re-scoring (`source: evaluation` metrics and budgets) are not replayed: that means
loading every model and its evaluation data, which a pull-request check should not do. They are
left out of both policies and named in the report; the gate applies them in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from promotion.engine.decision import Decision, decide
from promotion.engine.facts import VersionFacts
from promotion.engine.naming import version_or_none
from promotion.errors import ExitCode
from promotion.policy.model import Policy

DEFAULT_LAST = 20
MAX_LAST = 1000
Change = Literal["same", "changed", "new"]


@dataclass(frozen=True)
class Row:
    """One version, decided under both policies. `base` is None when there is no base policy."""

    version: str
    head: Decision
    base: Decision | None = None

    @property
    def change(self) -> Change:
        if self.base is None:
            return "new"
        return "same" if self.base.outcome == self.head.outcome else "changed"

    @property
    def why(self) -> str:
        """What a reviewer needs next to a changed row: the reason of the side that rejects."""
        if self.head.outcome == "already":
            return f"holds @{self.head.alias}"
        if self.change == "same":
            return ""
        if not self.head.passed or self.base is None:
            return self.head.summary
        return f"was {self.base.outcome}: {self.base.summary}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "change": self.change,
                "base": _decision_dict(self.base), "head": _decision_dict(self.head)}


@dataclass(frozen=True)
class Preview:
    head_path: str
    base_label: str  # how the report names the base policy
    base_missing: bool  # the base file does not exist: a new policy, "no previous policy"
    model: str
    alias: str
    production_version: str | None  # the version holding the alias now
    last: int
    rows: tuple[Row, ...] = ()
    not_replayed: tuple[str, ...] = ()  # rules left out of both policies (need re-scoring)
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.change != "same")

    @property
    def holder(self) -> str:
        return version_or_none(self.production_version)

    # A preview informs the review; whether decisions change is not a failure.
    return_code: ClassVar[int] = int(ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.head_path, "base": None if self.base_missing else self.base_label,
                "model": self.model, "alias": self.alias,
                "production_version": self.production_version, "last": self.last,
                "changed": len(self.changed), "rows": [r.to_dict() for r in self.rows],
                "not_replayed": list(self.not_replayed), "notes": list(self.notes)}


def _decision_dict(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {"outcome": decision.outcome, "reasons": list(decision.reasons)}


def replayable(policy: Policy) -> tuple[Policy, tuple[str, ...]]:
    """The policy without the rules that need re-scoring, and the names of those rules."""
    dropped = tuple([f"{r.name} (source: evaluation)" for r in policy.metrics
                     if r.source == "evaluation"]
                    + [f"{b.name} (budget)" for b in policy.budgets])
    if not dropped:
        return policy, ()
    kept = tuple(r for r in policy.metrics if r.source != "evaluation")
    return replace(policy, metrics=kept, budgets=(), evaluation=None), dropped


def replay(head: Policy, base: Policy | None, versions: Sequence[VersionFacts],
           head_production: VersionFacts | None,
           base_production: VersionFacts | None) -> tuple[Row, ...]:
    """Decide every version under both policies, each against its own alias holder (the same
    version unless the edit changed the alias)."""
    rows = []
    for facts in versions:
        head_decision = decide(head, facts, head_production)
        base_decision = decide(base, facts, base_production) if base is not None else None
        rows.append(Row(facts.version, head_decision, base_decision))
    return tuple(rows)
