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
from promotion.registry import journal
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


def recover(client: MlflowClient, intent: Intent, aliases: dict[str, str]) -> Recovery:
    """Bring the registry to the state the interrupted operation's completion (or clean
    abandonment) leaves, clear the intent, and say what was done."""
    state = assess(intent, aliases.get(intent.alias))
    when = records.utc_now()
    if state == "applied":
        _complete(client, intent, aliases, when)
        recorded = (f"version {intent.target} is recorded as promoted" if intent.kind == "gate"
                    else "it is recorded as a rollback")
        note = f"{intent.describe} had moved @{intent.alias}: {recorded} (completed at {when})"
    elif state == "not_applied":
        _close_unmoved(client, intent, aliases, when, INTERRUPTED,
                       "interrupted before the alias moved; nothing moved")
        note = f"{intent.describe} had moved nothing; recorded as interrupted"
    else:
        _close_unmoved(client, intent, aliases, when, SUPERSEDED,
                       f"superseded: @{intent.alias} was moved to "
                       f"{aliases.get(intent.alias, 'nothing')} outside Promote meanwhile",
                       undo_previous=False)
        note = (f"{intent.describe} was superseded: @{intent.alias} now points at "
                f"{aliases.get(intent.alias, 'nothing')}; recorded as superseded")
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


def _complete(client: MlflowClient, intent: Intent, aliases: dict[str, str], when: str) -> None:
    model = intent.model
    if intent.previous_target is not None and aliases.get(intent.previous_alias) != \
            intent.previous_target:
        registry.set_alias(client, model, intent.previous_alias, intent.previous_target)
    note = f"completed at {when} by a later command: @{intent.alias} points here"
    if intent.kind == "gate":
        registry.set_tags(client, model, intent.target,
                          {records.DECISION: "promoted", records.RESOLVED: note})
        _records(client, intent, "promoted", note, failed=False)
        return
    registry.set_tags(client, model, intent.target,
                      {records.DECISION: "restored", records.RESOLVED: note})
    if intent.source is not None:
        registry.set_tags(client, model, intent.source, {
            records.DECISION: "rolled_back",
            records.REASON: f"replaced by version {intent.target} in a rollback of "
                            f"@{intent.alias}"})
    _records(client, intent, "rollback", f"rollback: @{intent.alias} moved back from "
             f"{intent.source} to version {intent.target}; {note}", failed=False)


def _close_unmoved(client: MlflowClient, intent: Intent, aliases: dict[str, str], when: str,
                   outcome: str, why: str, *, undo_previous: bool = True) -> None:
    model = intent.model
    if undo_previous and intent.kind == "gate" and \
            aliases.get(intent.previous_alias) != intent.previous_source:
        # A gate writes -previous before the alias: put it back where it was.
        registry.point_alias(client, model, intent.previous_alias, intent.previous_source)
    if intent.kind == "gate":
        registry.set_tags(client, model, intent.target, {
            records.DECISION: outcome,
            records.REASON: f"{why} (at {when}); gate this version again to decide it"})
    _records(client, intent, outcome, why, failed=True)
