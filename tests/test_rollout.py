"""`promote rollout` end to end: a real MLflow server, a real inference log, versions gated by the
real gate, and every move through the guarded write-ahead path.

Traffic is written to the log the way `promote serve` writes it (one RequestRecord per request,
the canary's with its own version), timed inside the step's window; `now` is passed to the
rollout so a step's duration needs no waiting.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import add_version, aliases, decision_tag, rmse_policy, snapshot

from promotion.cli import run
from promotion.engine import step as engine_step
from promotion.engine.results import RolloutConflict
from promotion.engine.rollout import RolloutState, read_state, state_tag
from promotion.errors import InvalidInput, NothingMoved
from promotion.gate import rollout as rollout_service
from promotion.gate import run_gate
from promotion.gate.rollout import run_rollout
from promotion.gate.status import read_history, read_status
from promotion.monitoring.logstore import LogStore, RequestRecord
from promotion.policy.model import Agreement, Margin, Rollout, WatchRule
from promotion.registry import lease
from promotion.report.decision import table, to_json_text

pytestmark = pytest.mark.mlflow

RULES = (WatchRule("error_rate", max=0.05, max_increase=Margin(0.5, relative=True)),
         WatchRule("latency_p95_ms", max_increase=Margin(0.5, relative=True)))
STEP_AFTER = 600.0


def rolled(model: str, **kwargs) -> object:
    r = Rollout(alias="Production-canary", rules=kwargs.pop("rules", RULES),
                steps=kwargs.pop("steps", (0.1, 0.5)), step_after_seconds=STEP_AFTER,
                min_requests=kwargs.pop("min_requests", 40), min_labels=20, **kwargs)
    return rmse_policy(model, rollout=r)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    log = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    log.migrate()
    yield log
    log.close()


def canary_started(client, model: str, policy) -> tuple[str, str, RolloutState]:
    """v1 promoted by the gate (no Production yet), v2 passes it: the rollout starts."""
    v1 = add_version(client, model, {"rmse": 0.9})
    assert run_gate(client, policy).outcome == "promoted"
    v2 = add_version(client, model, {"rmse": 0.5})
    before = snapshot(client, model)
    dry = run_gate(client, policy, dry_run=True)
    assert dry.outcome == "canary" and dry.return_code == 0 and not dry.applied
    assert snapshot(client, model) == before
    assert "DRY RUN: WOULD START A ROLLOUT: @Production-canary -> version" in table(dry)
    assert json.loads(to_json_text(dry))["rollout"]["share"] == policy.rollout.steps[0]
    started = run_gate(client, policy)
    assert started.outcome == "canary" and started.return_code == 0
    state = _state(client, model)
    assert state is not None and state.version == v2
    return v1, v2, state


def _state(client, model: str) -> RolloutState | None:
    return read_state(client.get_registered_model(model).tags, "Production")[0]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def traffic(store: LogStore, model: str, version: str, n: int, start: float, *,
            errors: int = 0, latency: float = 5.0, alias: str = "Production",
            ids: list[str] | None = None, predictions: np.ndarray | None = None) -> list[str]:
    """`n` one-row requests served by `version` from `start` on (0.5 s apart)."""
    rng = np.random.default_rng(len(version) + n)
    rows = pd.DataFrame({"x": rng.normal(0, 1, n)})
    ids = ids or [uuid.uuid4().hex for _ in range(n)]
    out = predictions if predictions is not None else rows["x"].to_numpy() * 2
    records = [RequestRecord(
        request_id=ids[i], at=datetime.fromtimestamp(start + 1 + i * 0.5, UTC), model=model,
        alias=alias, version=version, rows=1, latency_ms=latency + (i % 5),
        outcome="model_error" if i < errors else "ok", status=500 if i < errors else 200,
        inputs=None if i < errors else rows.iloc[[i]],
        predictions=None if i < errors else out[i:i + 1]) for i in range(n)]
    store.write(records)
    return ids


def test_a_passing_gate_starts_a_rollout_on_the_canary_alias(client, model_name):
    policy = rolled(model_name)
    v1, v2, state = canary_started(client, model_name, policy)
    assert aliases(client, model_name) == {"Production": v1, "Production-canary": v2}
    assert (state.mode, state.steps, state.step, state.production) == ("canary", (0.1, 0.5),
                                                                       0, v1)
    assert decision_tag(client, model_name, v2) == "canary"
    tags = client.get_model_version(model_name, v2).tags
    assert tags["promotion.alias"] == "Production-canary"
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome, latest.candidate_version) == ("gate", "canary", v2)
    # Gating the same candidate again neither restarts its rollout nor moves anything.
    before = snapshot(client, model_name)["model_tags"]
    again = run_gate(client, policy)
    assert again.outcome == "already" and again.return_code == 0
    assert "already rolling out" in again.decision.reasons[0]
    assert snapshot(client, model_name)["model_tags"] == before
    status = read_status(client, model_name)
    assert [r.version for r in status.rollouts] == [v2]


def test_each_step_advances_only_with_enough_requests_and_passing_rules(client, model_name,
                                                                       store):
    policy = rolled(model_name)
    v1, v2, state = canary_started(client, model_name, policy)
    start = _epoch(state.step_started_at)
    traffic(store, model_name, v1, 200, start)
    traffic(store, model_name, v2, 20, start, alias="Production-canary")
    few = run_rollout(client, policy, store, now=start + STEP_AFTER + 60)
    assert few.action == "wait" and few.decision.standing == "insufficient_data"
    assert "fewer than min_requests 40" in few.decision.why
    traffic(store, model_name, v2, 30, start + 10, alias="Production-canary")
    early = run_rollout(client, policy, store, now=start + 120)
    assert early.action == "wait" and early.decision.standing == "passing"
    assert "to go" in early.decision.why and _state(client, model_name) == state
    advanced = run_rollout(client, policy, store, now=start + STEP_AFTER + 60)
    assert advanced.action == "advance" and advanced.applied and advanced.return_code == 0
    now = _state(client, model_name)
    assert (now.step, now.share, now.version) == (1, 0.5, v2)
    assert aliases(client, model_name) == {"Production": v1, "Production-canary": v2}
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome, latest.alias) == ("rollout", "advanced",
                                                           "Production-canary")
    files = {f.path for f in client.list_artifacts(latest.run_id)}
    assert files == {"rollout.json", "rollout.md", "timeline.png"}
    # The new step's window starts when it began, not when the first step did.
    waiting = run_rollout(client, policy, store)
    assert waiting.action == "wait"
    assert waiting.facts.step_started == _epoch(now.step_started_at) > start


def test_a_breach_at_any_step_aborts_and_is_recorded(client, model_name, store, capsys):
    policy = rolled(model_name)
    v1, v2, state = canary_started(client, model_name, policy)
    start = _epoch(state.step_started_at)
    traffic(store, model_name, v1, 200, start)
    traffic(store, model_name, v2, 60, start, alias="Production-canary", errors=12)
    # A breach aborts at once: it does not wait for the step to last `step_after`.
    result = run_rollout(client, policy, store, now=start + 120)
    assert result.action == "abort" and result.applied and result.return_code == 1
    assert {c.rule for c in result.decision.breached} == {"error_rate"}
    assert aliases(client, model_name) == {"Production": v1}
    assert _state(client, model_name) is None
    assert decision_tag(client, model_name, v2) == "aborted"
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome) == ("rollout", "aborted")
    assert "error_rate" in latest.reason
    # Nothing left to do: the next run says so and exits 0.
    assert run_rollout(client, policy, store).action == "none"


def test_the_last_step_promotes_with_the_gates_guarantees(client, model_name, store):
    policy = rolled(model_name, steps=(0.25,))
    v1, v2, state = canary_started(client, model_name, policy)
    start = _epoch(state.step_started_at)
    traffic(store, model_name, v1, 100, start)
    traffic(store, model_name, v2, 50, start, alias="Production-canary")
    result = run_rollout(client, policy, store, now=start + STEP_AFTER + 1)
    assert result.action == "promote" and result.applied and result.return_code == 0
    assert aliases(client, model_name) == {"Production": v2, "Production-previous": v1}
    assert _state(client, model_name) is None
    tags = client.get_model_version(model_name, v2).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.alias"] == "Production"
    assert tags["promotion.compared_to"] == v1
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome, latest.candidate_version) == ("rollout", "promoted", v2)


def test_production_moved_meanwhile_is_a_conflict_and_nothing_moves(client, model_name, store,
                                                                    monkeypatch):
    policy = rolled(model_name, steps=(0.25,))
    v1, v2, state = canary_started(client, model_name, policy)
    v3 = add_version(client, model_name, {"rmse": 0.1})
    start = _epoch(state.step_started_at)
    traffic(store, model_name, v1, 100, start)
    traffic(store, model_name, v2, 50, start, alias="Production-canary")
    real = engine_step.judge_step

    def judge_then_someone_moves_production(rollout, facts):
        client.set_registered_model_alias(model_name, "Production", v3)
        return real(rollout, facts)

    monkeypatch.setattr(rollout_service, "judge_step", judge_then_someone_moves_production)
    with pytest.raises(RolloutConflict, match="nothing was moved") as stopped:
        run_rollout(client, policy, store, now=start + STEP_AFTER + 1)
    assert stopped.value.exit_code == 3
    assert f"@Production moved from version {v1} to version {v3}" in str(stopped.value)
    assert aliases(client, model_name) == {"Production": v3, "Production-canary": v2}
    assert _state(client, model_name) == state  # the rollout stands; nothing moved
    assert decision_tag(client, model_name, v2) == "canary"
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome) == ("rollout", "conflict")


def test_a_rollout_and_a_gate_of_the_same_model_never_act_at_once(client, model_name, store,
                                                                   monkeypatch):
    """While another command holds the model's lease, a rollout waits, then gives up having
    written nothing (exit 3), naming the holder."""
    policy = rolled(model_name, steps=(0.25,))
    v1, v2, state = canary_started(client, model_name, policy)
    start = _epoch(state.step_started_at)
    traffic(store, model_name, v1, 100, start)
    traffic(store, model_name, v2, 50, start, alias="Production-canary")
    monkeypatch.setenv("PROMOTE_LEASE_WAIT_S", "1")
    held, release = threading.Event(), threading.Event()

    def gate_holding_the_lease():
        with lease.holding(client, model_name, purpose="gate of @Production"):
            held.set()
            release.wait(60)

    other = threading.Thread(target=gate_holding_the_lease)
    other.start()
    try:
        assert held.wait(30)
        before = snapshot(client, model_name)
        with pytest.raises(NothingMoved, match="gate of @Production") as stopped:
            run_rollout(client, policy, store, now=start + STEP_AFTER + 1)
        assert stopped.value.exit_code == 3
        assert str(stopped.value).startswith(f"@Production still on version {v1}; nothing moved")
        after = snapshot(client, model_name)
        assert after["aliases"] == before["aliases"] and after["decisions"] == before["decisions"]
    finally:
        release.set()
        other.join(30)
    assert run_rollout(client, policy, store, now=start + STEP_AFTER + 1).action == "promote"


def test_shadow_mode_judges_agreement_on_the_same_rows(client, model_name, store):
    agreement = Agreement(min=0.9, tolerance=Margin(0.1))
    policy = rolled(model_name, mode="shadow", steps=(1.0,), agreement=agreement)
    v1, v2, state = canary_started(client, model_name, policy)
    assert state.mode == "shadow"
    start = _epoch(state.step_started_at)
    predictions = np.linspace(0, 10, 100)
    ids = traffic(store, model_name, v1, 100, start, predictions=predictions)
    # The shadow copies of the same requests: 95 agree within 0.1, 5 do not.
    shadow = predictions + np.where(np.arange(100) < 5, 1.0, 0.05)
    traffic(store, model_name, v2, 100, start, alias="Production-canary", ids=ids,
            predictions=shadow)
    result = run_rollout(client, policy, store, now=start + 60, dry_run=True)
    check = next(c for c in result.decision.checks if c.rule == "agreement")
    assert check.status == "pass" and check.live == pytest.approx(0.95)
    assert "95 of 100 rows within 0.1" in check.reason
    strict = rolled(model_name, mode="shadow", steps=(1.0,),
                    agreement=replace(agreement, min=0.99))
    breached = run_rollout(client, strict, store, now=start + 60)
    assert breached.action == "abort" and breached.return_code == 1
    assert aliases(client, model_name) == {"Production": v1}


def test_a_person_aborts_a_rollout_from_the_command_line(client, model_name, tmp_path,
                                                         monkeypatch, capsys):
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(json.dumps({
        "model": model_name, "metrics": {"rmse": {"goal": "minimize", "max": 1.0}},
        "rollout": {"steps": ["10%", "50%"], "rules": {"error_rate": {"max": "5%"}}}}))
    from promotion.policy.load import load_policy

    policy = load_policy(str(policy_file))
    v1, v2, _ = canary_started(client, model_name, policy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    capsys.readouterr()
    assert run(["rollout", str(policy_file), "--abort", "--reason", "bad smell",
                "--dry-run"]) == 0
    assert "WOULD ABORT" in capsys.readouterr().out
    assert aliases(client, model_name)["Production-canary"] == v2
    assert run(["rollout", str(policy_file), "--abort", "--reason", "bad smell"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ABORTED") and "bad smell" in out, out
    assert aliases(client, model_name) == {"Production": v1}
    latest = read_history(client, model_name, limit=1).entries[0]
    assert (latest.kind, latest.outcome) == ("rollout", "aborted")
    assert "aborted by" in latest.reason and "bad smell" in latest.reason
    assert run(["rollout", str(policy_file), "--abort"]) == 2
    assert "nothing to abort" in capsys.readouterr().err


def test_a_canary_alias_moved_outside_promote_ends_the_stale_rollout(client, model_name,
                                                                     store):
    policy = rolled(model_name)
    canary_started(client, model_name, policy)
    client.delete_registered_model_alias(model_name, "Production-canary")
    result = run_rollout(client, policy, store)
    assert result.action == "abort" and result.return_code == 0 and result.applied
    assert "stale" in result.abort_reason and _state(client, model_name) is None
    assert read_history(client, model_name, limit=1).entries[0].outcome == "aborted"


def test_a_policy_without_a_rollout_block_is_invalid_input(client, model_name, store):
    with pytest.raises(InvalidInput, match="no 'rollout:' block"):
        run_rollout(client, rmse_policy(model_name), store)


def test_an_unreadable_state_is_invalid_input_naming_the_fix(client, model_name, store):
    policy = rolled(model_name)
    add_version(client, model_name, {"rmse": 0.9})
    run_gate(client, policy)
    client.set_registered_model_tag(model_name, state_tag("Production"), "{not json")
    with pytest.raises(InvalidInput, match="--abort` clears it"):
        run_rollout(client, policy, store)
