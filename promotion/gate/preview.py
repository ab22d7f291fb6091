"""Previewing a policy edit: which recent decisions would the new policy make differently?

The last N versions of the model (by version NUMBER) are read from the registry once, then each is
decided twice by the pure engine (promotion.engine.preview), under the base policy and under the
edited (head) one. Nothing is written: no alias moves, no tag is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from promotion import registry
from promotion.engine.facts import VersionFacts
from promotion.engine.preview import DEFAULT_LAST, MAX_LAST, Preview, replay, replayable
from promotion.errors import InvalidInput
from promotion.policy.model import Policy

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

def preview(client: MlflowClient, head: Policy, base: Policy | None, *,
            last: int = DEFAULT_LAST, base_label: str = "", base_missing: bool = False) -> Preview:
    """Replay `base` and `head` over the last `last` versions of head's model. Reads only."""
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

    versions = registry.last_versions(client, head.model, last)
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
    try:
        registry.registered_model(client, model)
    except InvalidInput:  # only raised for an unknown model; unreachable is a RegistryError
        return False
    return True


def gather(client: MlflowClient, versions: Sequence[ModelVersion]) -> list[VersionFacts]:
    """The facts of every version (its run's metrics and its tags), a few requests in parallel."""
    return registry.parallel([partial(registry.version_facts, client, mv) for mv in versions])


def holder(client: MlflowClient, model: str, alias: str,
           known: Sequence[VersionFacts]) -> VersionFacts | None:
    """The facts of the version holding `alias` now, reusing those already gathered."""
    mv = registry.alias_target(client, model, alias)
    if mv is None:
        return None
    for facts in known:
        if facts.version == str(mv.version):
            return facts
    return registry.version_facts(client, mv)
