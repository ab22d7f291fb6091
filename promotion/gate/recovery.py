"""Finishing, or cleanly closing, what an interrupted alias-moving command left behind.

Run under the model's lease by every command that writes (and read, not acted on, by `status`).
Whatever the interruption, the result is the state a completed command would have left: an
operation whose alias moved is recorded as that move, exactly once; one whose alias did not move
is recorded as interrupted, with nothing moved and what it wrote before its move undone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from promotion import registry
from promotion.engine import records
from promotion.engine.intent import Intent, State, assess
from promotion.engine.rollout import RolloutState, state_tag
from promotion.registry import journal, rollouts
from promotion.registry import records as store

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The decision tag of a version whose promotion was interrupted before the alias moved.
INTERRUPTED = "interrupted"
SUPERSEDED = "superseded"  # ... and one whose alias was moved outside Promote meanwhile


@dataclass(frozen=True)
class Recovery:
    intent: Intent
    state: State
    note: str  # what was done, for the command's output


# What an applied operation's target is recorded as, and its record's outcome, by kind.
APPLIED = {"gate": "promoted", "rollback": "rollback", "step": "advanced", "abort": "aborted"}


def recover(client: MlflowClient, intent: Intent, model: journal.ModelState) -> Recovery:
    """Bring the registry to the state the interrupted operation's completion (or clean
    abandonment) leaves, clear the intent, and say what was done."""
    aliases = model.aliases
    state = assess(intent, model.standing)
    when = records.utc_now()
    if state == "applied":
        _complete(client, intent, model, when)
        outcome = intent.outcome or APPLIED[intent.kind]
        recorded = (f"version {intent.target} is recorded as {outcome}" if intent.kind == "gate"
                    else f"it is recorded as {'a rollback' if outcome == 'rollback' else outcome}")
        note = f"{intent.describe} had moved @{intent.alias}: {recorded} (completed at {when})"
    elif state == "not_applied":
        _close_unmoved(client, intent, model, when, INTERRUPTED,
                       "interrupted before the alias moved; nothing moved")
        note = f"{intent.describe} had moved nothing; recorded as interrupted"
    else:
        where = ("its rollout state was changed" if intent.kind == "step" else
                 f"@{intent.alias} was moved to {aliases.get(intent.alias, 'nothing')}")
        _close_unmoved(client, intent, model, when, SUPERSEDED,
                       f"superseded: {where} outside Promote meanwhile", undo_previous=False)
        note = f"{intent.describe} was superseded: {where}; recorded as superseded"
    journal.clear_intent(client, intent.model)
    return Recovery(intent, state, note)


def _records(client: MlflowClient, intent: Intent, outcome: str, reason: str, *,
             failed: bool) -> None:
    """Close the operation's record run; remove duplicates a retried create left."""
    runs = journal.operation_runs(client, intent.model, intent.operation)
    for extra in runs[1:]:
        journal.delete_run(client, extra)
    if runs:
        store.set_run_outcome(client, runs[0], outcome, reason, failed=failed)


def _complete(client: MlflowClient, intent: Intent, model: journal.ModelState,
              when: str) -> None:
    aliases, name = model.aliases, intent.model
    if intent.previous_target is not None and aliases.get(intent.previous_alias) != \
            intent.previous_target:
        registry.set_alias(client, name, intent.previous_alias, intent.previous_target)
    note = f"completed at {when} by a later command: @{intent.alias} points here"
    _rollout_state(client, intent, model, intent.rollout_after)
    if intent.retire is not None and intent.retire in aliases:
        registry.delete_alias(client, name, intent.retire)
    outcome = intent.outcome or APPLIED[intent.kind]
    if intent.kind == "gate":
        assert intent.target is not None
        registry.set_tags(client, name, intent.target,
                          {records.DECISION: outcome, records.RESOLVED: note})
        displaced = superseded_canary(intent.rollout_before, intent.target)
        if displaced is not None:
            registry.set_tags(client, name, displaced, {
                records.DECISION: "aborted",
                records.REASON: f"its rollout was replaced by one of version {intent.target}"})
        _records(client, intent, outcome, note, failed=False)
        return
    if intent.kind in ("step", "abort"):
        if intent.kind == "abort" and intent.source is not None:
            registry.set_tags(client, name, intent.source, {
                records.DECISION: "aborted", records.RESOLVED: note})
        _records(client, intent, outcome, f"rollout of @{intent.alias}: {outcome}; {note}",
                 failed=False)
        return
    assert intent.target is not None
    registry.set_tags(client, name, intent.target,
                      {records.DECISION: "restored", records.RESOLVED: note})
    if intent.source is not None:
        registry.set_tags(client, name, intent.source, {
            records.DECISION: "rolled_back",
            records.REASON: f"replaced by version {intent.target} in a rollback of "
                            f"@{intent.alias}"})
    _records(client, intent, "rollback", f"rollback: @{intent.alias} moved back from "
             f"{intent.source} to version {intent.target}; {note}", failed=False)


def _rollout_state(client: MlflowClient, intent: Intent, model: journal.ModelState,
                   value: str | None) -> None:
    """Put the rollout state tag the operation names where it must be (absent: None)."""
    if intent.rollout_alias is None:
        return
    if model.tags.get(state_tag(intent.rollout_alias)) != value:
        rollouts.write_state(client, intent.model, intent.rollout_alias, value)


def superseded_canary(before: str | None, target: str | None) -> str | None:
    """The version a new rollout displaced from the canary alias (recorded as aborted)."""
    state = RolloutState.from_json(before) if before else None
    return state.version if state is not None and state.version != target else None


def _close_unmoved(client: MlflowClient, intent: Intent, model: journal.ModelState, when: str,
                   outcome: str, why: str, *, undo_previous: bool = True) -> None:
    aliases, name = model.aliases, intent.model
    if undo_previous and intent.kind == "gate":
        # A gate writes -previous (and a rollout's state) before the alias: put them back.
        if aliases.get(intent.previous_alias) != intent.previous_source:
            registry.point_alias(client, name, intent.previous_alias, intent.previous_source)
        _rollout_state(client, intent, model, intent.rollout_before)
    if intent.kind == "gate" and intent.target is not None and intent.record_kind == "rollout":
        # The last step of a rollout that did not move: the rollout goes on.
        registry.set_tags(client, name, intent.target, {
            records.DECISION: "canary",
            records.REASON: f"its promotion was {why} (at {when}); the rollout goes on: "
                            f"`{intent.finish_hint()}` judges its last step again"})
    elif intent.kind == "gate" and intent.target is not None:
        registry.set_tags(client, name, intent.target, {
            records.DECISION: outcome,
            records.REASON: f"{why} (at {when}); gate this version again to decide it"})
    _records(client, intent, outcome, why, failed=True)
