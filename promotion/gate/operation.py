"""The one mechanism every alias-moving command writes through: lease, intent, move, finish.

    with lease.holding(...):                 # Promote's writers never interleave
        recover(...)                         # finish or close what an interrupted command left
        op = Operation(client, intent)
        op.begin()                           # the intent, before any other write
        ...record run, write-ahead tags, re-read...
        op.move(alias, version)              # the one write that changes what is served
        op.finish([...])                     # the rest, retried; what stays missing is reported

Exit codes follow from what is known to have moved: before the move, a registry failure is
"nothing moved" (exit 3, and the writes made so far are undone or closed where possible); after
it, or when the move's answer was lost, the command says what moved and what is missing (exit 5),
and the intent stays for the next command to complete.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from promotion import registry
from promotion.engine.intent import Intent
from promotion.engine.naming import version_or_none
from promotion.errors import ConflictError, NothingMoved, RegistryError
from promotion.gate.recovery import INTERRUPTED, Recovery, recover
from promotion.registry import journal, lease, rollouts
from promotion.registry import records as store

if TYPE_CHECKING:
    from mlflow import MlflowClient

RETRY_DELAYS = (0.5, 1.5)  # the remaining writes of an applied operation: three tries each
Step = tuple[str, Callable[[], object]]


def still(intent: Intent) -> str:
    """What the registry holds when nothing moved, said first in every such message."""
    return f"@{intent.alias} still on {version_or_none(intent.source, 'nothing')}; nothing moved"


UNREAD = object()  # where the alias is, before it could be read


@contextmanager
def nothing_moved_unless_said(alias: str, version: object = UNREAD) -> Iterator[None]:
    """A registry failure that did not already say what the registry holds happened before this
    command moved anything: say so first (exit 3)."""
    try:
        yield
    except (NothingMoved, ConflictError):
        raise
    except RegistryError as exc:
        held = str(version) if isinstance(version, str) else None
        where = (f"@{alias} still on {version_or_none(held, 'nothing')}"
                 if version is not UNREAD else f"@{alias} not read")
        raise NothingMoved(f"{where}; nothing moved: {exc}") from exc


class Operation:
    """One alias-moving operation, written ahead as an intent."""

    def __init__(self, client: MlflowClient, intent: Intent,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.intent, self.sleep = client, intent, sleep
        self.moved: bool | None = False  # None: the move's answer was lost and nothing tells

    def begin(self) -> None:
        try:
            journal.write_intent(self.client, self.intent)
        except RegistryError as exc:
            raise NothingMoved(f"{still(self.intent)}: {exc}") from exc

    def move(self, alias: str, version: str | None) -> None:
        """Point the operation's alias at `version` (None: remove it).

        A failure is re-checked by reading the alias: it may have moved (the answer was lost).
        Sets `moved`; raises RegistryError only when the alias is known not to have moved.
        """
        model = self.intent.model
        write = partial(registry.set_alias, self.client, model, alias, version) \
            if version is not None else partial(registry.delete_alias, self.client, model, alias)
        self._moved(write, partial(registry.alias_version, self.client, model, alias), version)

    def move_state(self, rollout_alias: str, value: str | None, position: str | None) -> None:
        """The move of a rollout step: the rollout state tag becomes `value` (at `position`;
        None: removed); re-checked by reading the state when the write's answer is lost, like
        `move`."""
        model = self.intent.model

        def now() -> str | None:
            return journal.read_state(self.client, model).standing

        self._moved(partial(rollouts.write_state, self.client, model, rollout_alias, value), now,
                    position)

    def _moved(self, write: Callable[[], object], read: Callable[[], str | None],
               expected: str | None) -> None:
        try:
            write()
        except RegistryError:
            try:
                now = read()
            except RegistryError:
                self.moved = None
                return
            if now != expected:
                raise
        self.moved = True

    def finish(self, steps: Sequence[Step]) -> tuple[str, ...]:
        """Run the writes that complete an applied operation, each retried twice; then clear
        the intent. Returns what is still missing (empty: the operation is complete)."""
        missing = [what for what, write in steps if not self._retried(write)]
        if not missing and not self._retried(
                lambda: journal.clear_intent(self.client, self.intent.model)):
            missing.append(f"the removal of the intent on model {self.intent.model!r}")
        return tuple(missing)

    def abandon(self, steps: Sequence[Step]) -> tuple[str, ...]:
        """Nothing moved: undo and close what was written (one try each, then the intent goes);
        what could not be done is left to the next command's recovery, which the intent allows."""
        left = [what for what, write in steps if not self._once(write)]
        if not left:
            self._once(lambda: journal.clear_intent(self.client, self.intent.model))
        return tuple(left)

    def _retried(self, write: Callable[[], object]) -> bool:
        for delay in (*RETRY_DELAYS, None):
            if self._once(write):
                return True
            if delay is not None:
                self.sleep(delay)
        return False

    @staticmethod
    def _once(write: Callable[[], object]) -> bool:
        try:
            write()
        except RegistryError:
            return False
        return True


@dataclass
class Session:
    """What a writing command finds once it holds the lease: the model's aliases (after any
    recovery) and what recovery did; the command notes its own operation and record run."""

    aliases: dict[str, str]
    recovered: Recovery | None
    operation: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # the model's (its rollout states)


@contextmanager
def writing(client: MlflowClient, model: str, *, purpose: str) -> Iterator[Session]:
    """Hold the model's lease, finish whatever an interrupted command left, and afterwards close
    the decision records an interruption left running (duplicates of a retried create, orphans)."""
    with lease.holding(client, model, purpose=purpose):
        state = journal.read_state(client, model)
        note = None
        if state.intent is not None:
            note = recover(client, state.intent, state)
            state = journal.read_state(client, model)
        session = Session(state.aliases, note, tags=state.tags)
        sweep(client, model, session)  # what earlier interruptions left
        try:
            yield session
        finally:
            sweep(client, model, session)  # what this command left (a duplicate record)


def _duplicate(client: MlflowClient, model: str, run: store.RunningRecord) -> bool:
    """The run is a later copy of its operation's first record (a retried create)."""
    if not run.operation:
        return False
    runs = journal.operation_runs(client, model, run.operation)
    return bool(runs) and runs[0] != run.run_id


def sweep(client: MlflowClient, model: str, session: Session) -> None:
    """Close every decision run of `model` still RUNNING but the session's own: under the lease
    no other Promote writer of this model runs, so each was left by an interruption. One that
    carries the session's operation is a duplicate (a create retried after its answer was lost)
    and is removed; any other is ended as FAILED, a `pending` one recorded as interrupted. Best
    effort: a failure here changes nothing about the command's own outcome."""
    try:
        for run in store.running(client, model):
            if run.run_id == session.run_id:
                continue  # its own record, if it could not be closed: recovery's to finish
            if run.operation == session.operation or _duplicate(client, model, run):
                journal.delete_run(client, run.run_id)  # a duplicate of a record that exists
            else:
                outcome = INTERRUPTED if run.outcome == "pending" else run.outcome
                store.set_run_outcome(client, run.run_id, outcome,
                                      "the command writing this record was interrupted; "
                                      "closed by a later command", failed=True)
    except RegistryError:
        return
