"""The services behind the commands: orchestration over the registry and the pure engine.

    promote   the gate: gather facts, decide, apply a pass write-ahead, record
    rollback  plan (read) and apply (re-read, then write) a rollback
    status    every alias and each version's last decision; the decision history
    preview   replay recent versions under a base and an edited policy (read-only)

Each takes an MlflowClient and returns a frozen result (promotion.engine.results).
"""

from __future__ import annotations

from promotion.engine.results import (
    GateConflict,
    GateIncomplete,
    GateResult,
    History,
    ModelStatus,
    RollbackConflict,
    RollbackIncomplete,
    RollbackResult,
    VersionStatus,
)
from promotion.gate.preview import preview
from promotion.gate.promote import needs_evaluation, run_gate
from promotion.gate.rollback import apply_rollback, plan_rollback, run_rollback
from promotion.gate.status import read_history, read_status

__all__ = [
    "GateConflict",
    "GateIncomplete",
    "GateResult",
    "History",
    "ModelStatus",
    "RollbackConflict",
    "RollbackIncomplete",
    "RollbackResult",
    "VersionStatus",
    "apply_rollback",
    "needs_evaluation",
    "plan_rollback",
    "preview",
    "read_history",
    "read_status",
    "run_gate",
    "run_rollback",
]
