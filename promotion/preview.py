"""Previewing a policy edit: which recent decisions would the new policy make differently?

The last N versions of the model (by version NUMBER) are read from the registry once, then each is
decided twice by the pure engine, under the base policy and under the edited (head) one. Nothing is
written: no alias moves, no tag is set.

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

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from promotion.decision import Decision, decide
from promotion.errors import ExitCode, InvalidInput
from promotion.facts import VersionFacts
from promotion.policy import Policy

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

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
        return f"version {self.production_version}" if self.production_version else "no version"

    @property
    def return_code(self) -> int:
        # A preview informs the review; whether decisions change is not a failure.
        return int(ExitCode.OK)

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


# ---------------------------------------------------------------------------------------------
# The replay (pure)


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


# ---------------------------------------------------------------------------------------------
# Gathering facts (read-only)


def preview(head: Policy, base: Policy | None, *, tracking_uri: str | None,
            last: int = DEFAULT_LAST, base_label: str = "", base_missing: bool = False) -> Preview:
    """Replay `base` and `head` over the last `last` versions of head's model. Reads only."""
    from promotion.clientlib import connect

    if not 1 <= last <= MAX_LAST:
        raise InvalidInput(f"--last must be between 1 and {MAX_LAST}, got {last}")
    notes: list[str] = []
    if base_missing:
        notes.append(f"no previous policy: {base_label} does not exist (a new policy file); "
                     "every decision is new")
    elif base is not None and base.model != head.model:
        notes.append(f"the edit moves the policy from model {base.model!r} to {head.model!r}: "
                     "the base policy never gated these versions; every decision is new")
        base = None
    head_rules, dropped_head = replayable(head)
    base_rules, dropped_base = replayable(base) if base is not None else (None, ())
    not_replayed = tuple(dict.fromkeys(dropped_head + dropped_base))
    result = Preview(head.path, base_label or (base.path if base else ""), base_missing,
                     head.model, head.alias, None, last, not_replayed=not_replayed)

    client = connect(tracking_uri)
    versions = last_versions(client, head.model, last)
    if not versions:
        # An empty search does not say whether the model exists: ask, for the right note.
        notes.append(f"model {head.model!r} has no versions yet: nothing to replay"
                     if _registered(client, head.model)
                     else f"model {head.model!r} is not registered yet: no versions to replay")
        return replace(result, notes=tuple(notes))

    facts = gather(client, versions)
    head_production = holder(client, head.model, head.alias, facts)
    base_production = head_production
    if base_rules is not None and base_rules.alias != head.alias:
        notes.append(f"the edit moves the policy from @{base_rules.alias} to @{head.alias}: "
                     "each side is decided against its own alias holder")
        base_production = holder(client, head.model, base_rules.alias, facts)
    if head_production is None:
        notes.append(f"no version holds @{head.alias}: decided as a first promotion "
                     f"(when_no_production: {head.when_no_production})")
    rows = replay(head_rules, base_rules, facts, head_production, base_production)
    return replace(result, rows=rows, notes=tuple(notes),
                   production_version=head_production.version if head_production else None)


def _registered(client: MlflowClient, model: str) -> bool:
    from promotion import registry

    try:
        registry.registered_model(client, model)
    except InvalidInput:  # only raised for an unknown model; unreachable is a RegistryError
        return False
    return True


def last_versions(client: MlflowClient, model: str, last: int) -> list[ModelVersion]:
    """The `last` versions with the highest version numbers, highest first: one sorted query."""
    from promotion import registry
    from promotion.clientlib import registry_errors

    literal = registry.quote(model)
    if literal is None:
        return _last_versions_by_number(client, model, last)
    with registry_errors(f"listing the versions of model {model!r}"):
        found = client.search_model_versions(f"name = {literal}", max_results=last,
                                             order_by=["version_number DESC"])
    return sorted(found, key=lambda mv: int(mv.version), reverse=True)[:last]


def _last_versions_by_number(client: MlflowClient, model: str, last: int) -> list[ModelVersion]:
    """For a name no filter string can quote: count down from the latest version number."""
    from promotion import registry

    try:
        top = int(registry.latest_version(client, model).version)
    except InvalidInput:  # no such model, or no versions: the caller says which
        return []
    found: list[ModelVersion] = []
    for number in range(top, 0, -1):
        if len(found) == last:
            break
        try:
            found.append(registry.get_version(client, model, str(number)))
        except InvalidInput:  # a deleted version
            continue
    return found


def gather(client: MlflowClient, versions: Sequence[ModelVersion]) -> list[VersionFacts]:
    """The facts of every version (its run's metrics and its tags), a few requests in parallel."""
    from promotion import registry

    return registry.parallel([partial(registry.version_facts, client, mv) for mv in versions])


def holder(client: MlflowClient, model: str, alias: str,
           known: Sequence[VersionFacts]) -> VersionFacts | None:
    """The facts of the version holding `alias` now, reusing those already gathered."""
    from promotion import registry

    mv = registry.alias_target(client, model, alias)
    if mv is None:
        return None
    for facts in known:
        if facts.version == str(mv.version):
            return facts
    return registry.version_facts(client, mv)


# ---------------------------------------------------------------------------------------------
# Rendering


def _header(p: Preview) -> list[str]:
    base = "none (a new policy)" if p.base_missing else p.base_label
    return [f"policy {p.head_path} (model {p.model}, @{p.alias} = {p.holder})",
            f"base   {base}",
            f"replayed over the last {len(p.rows)} of up to {p.last} versions, "
            f"each against @{p.alias} as it is now (read-only)"]


def _verdict(p: Preview) -> str:
    if not p.rows:
        return "nothing to replay"
    if p.base_missing or all(r.base is None for r in p.rows):
        return f"{len(p.rows)} new decisions (no previous policy)"
    changed = len(p.changed)
    if not changed:
        return f"no decision changes ({len(p.rows)} versions replayed)"
    return f"{changed} of {len(p.rows)} decisions change"


def render_text(p: Preview) -> str:
    lines = _header(p)
    lines += [f"note   {note}" for note in p.notes]
    if p.not_replayed:
        lines.append(f"note   not replayed (need re-scoring; the gate applies them): "
                     f"{', '.join(p.not_replayed)}")
    lines.append("")
    if p.rows:
        table = [("version", "base", "head", "change", "why")]
        table += [(r.version, r.base.outcome if r.base else "-", r.head.outcome, r.change, r.why)
                  for r in p.rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            lines.append("  ".join([*cells, row[4]]).rstrip())
        lines.append("")
    lines.append(_verdict(p))
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text.replace('`', '')}`"


def render_markdown(p: Preview) -> str:
    """A section for the job summary of a pull request."""
    base = "none: a new policy file" if p.base_missing else _code(p.base_label)
    lines = [f"### Policy preview: {_code(p.head_path)}", "",
             f"Model {_code(p.model)}, {_code('@' + p.alias)} = {p.holder}. Base policy: "
             f"{base}. Each of the last {len(p.rows)} versions (of up to {p.last}) is decided "
             f"under both policies against {_code('@' + p.alias)} as it is now; nothing is "
             "written.", ""]
    lines += [f"> {_md(note)}" for note in p.notes]
    if p.not_replayed:
        lines.append(f"> Not replayed (they need re-scoring; the gate applies them): "
                     f"{_md(', '.join(p.not_replayed))}")
    if p.notes or p.not_replayed:
        lines.append("")
    lines += [f"**{_verdict(p)}**", ""]
    if p.rows:
        lines += ["| version | base | head | change | why |", "|---:|---|---|---|---|"]
        for r in p.rows:
            head = f"**{r.head.outcome}**" if r.change == "changed" else r.head.outcome
            change = f"**{r.change}**" if r.change == "changed" else r.change
            lines.append(f"| {r.version} | {r.base.outcome if r.base else '–'} | {head} | "
                         f"{change} | {_md(r.why)} |")
        lines.append("")
    return "\n".join(lines)


def render_json(p: Preview) -> str:
    return json.dumps(p.to_dict(), indent=2, sort_keys=True)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}

