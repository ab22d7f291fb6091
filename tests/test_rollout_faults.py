"""The fault sweep of a rollout's moves: the registry failing at every write of the gate that
starts a rollout, and of `promote rollout` advancing, aborting and promoting it.

The same proxy and method as tests/test_faults.py (read its docstring): for each write index
(each distinct crash point: tests/sweeppoints.py) the server "dies" from that request on (and,
for an advance, whose move is a tag rather than an alias, the answer of that request is lost
instead). Each point then checks:

- what the command moves is only ever where it was or where it goes, and the exit code says
  which: 3 only when nothing moved, 5 when it moved (or may have) and the record is incomplete,
  the command's own code when it completed;
- the guarded alias never moves unless the command is the promotion;
- a healthy rerun of the same command converges: the move made, no intent, no live lease, no
  record left running, and `history` holding exactly one record of the move.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from faultproxy import DownFrom, DropResponse, FaultProxy
from helpers import add_version, aliases, decision_runs
from sweeppoints import prepared, sweep_points

from promotion.cli import run
from promotion.engine.intent import INTENT_TAG
from promotion.engine.rollout import RolloutState, read_state
from promotion.monitoring.logstore import LogStore, RequestRecord
from promotion.registry import rollouts
from promotion.registry.lease import is_live, read_lease

pytestmark = pytest.mark.mlflow
CANARY = "Production-canary"


@dataclass
class Case:
    model: str
    args: list[str]
    where: Callable[[object], str | None]  # (client) -> what the command moves, now
    old: str | None
    new: str | None
    done: int  # the command's exit code when it completes
    outcome: str  # the record outcome of the move
    production: str  # where @Production must stay (or go, for the promotion)


def _policy(tmp_path: Path, model: str, steps: list[str], log: str) -> Path:
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump({
        "model": model, "metrics": {"rmse": {"goal": "minimize", "min_improvement": "1%"}},
        "rollout": {"steps": steps, "step_after": "10m", "min_requests": 20,
                    "rules": {"error_rate": {"max": "5%"}}}}), encoding="utf-8")
    return path


def _in_rollout(client, base: str, tmp_path: Path, steps: list[str], errors: int) -> tuple:
    """Production on v1, v2 on the canary alias at step 1 begun 20 minutes ago, and its
    traffic in the log (with `errors` failed requests)."""
    model = f"{base}-{uuid.uuid4().hex[:6]}"
    log = f"sqlite:///{tmp_path / (model + '.db')}"
    # No runs: the rollout judges the log, not logged metrics (and a point costs less).
    v1 = add_version(client, model, run=False)
    v2 = add_version(client, model, run=False)
    client.set_registered_model_alias(model, "Production", v1)
    client.set_registered_model_alias(model, CANARY, v2)
    began = time.time() - 1200
    at = datetime.fromtimestamp(began, UTC).isoformat(timespec="milliseconds")
    at = at.replace("+00:00", "Z")
    shares = tuple(float(s.rstrip("%")) / 100 for s in steps)
    state = RolloutState("Production", CANARY, v2, "canary", shares, 0, at, at, v1)
    rollouts.write_state(client, model, "Production", state.to_json())
    store = LogStore(log)
    store.migrate()
    frame = pd.DataFrame({"x": np.arange(80.0)})
    store.write([RequestRecord(
        uuid.uuid4().hex, datetime.fromtimestamp(began + 10 + i, UTC), model,
        "Production" if i % 2 else CANARY, v1 if i % 2 else v2, 1, 5.0,
        "model_error" if i < 2 * errors and i % 2 == 0 else "ok",
        500 if i < 2 * errors and i % 2 == 0 else 200, frame.iloc[[i]], np.array([i]))
        for i in range(80)])
    store.close()
    policy = _policy(tmp_path, model, steps, log)
    return model, v1, v2, ["rollout", str(policy), "--log-uri", log]


def _canary(client, base, tmp_path) -> Case:
    model = f"{base}-{uuid.uuid4().hex[:6]}"
    v1 = add_version(client, model, {"rmse": 0.5})
    client.set_registered_model_alias(model, "Production", v1)
    v2 = add_version(client, model, {"rmse": 0.4})
    policy = _policy(tmp_path, model, ["10%", "50%"], "sqlite://")
    return Case(model, ["gate", str(policy), "--candidate", v2],
                lambda c: aliases(c, model).get(CANARY), None, v2, 0, "canary", v1)


def _step(client, model: str) -> str | None:
    state = read_state(client.get_registered_model(model).tags, "Production")[0]
    return None if state is None else f"{state.version}:{state.step}"


def _advance(client, base, tmp_path) -> Case:
    model, v1, v2, args = _in_rollout(client, base, tmp_path, ["10%", "50%"], errors=0)
    return Case(model, args, lambda c: _step(c, model), f"{v2}:0", f"{v2}:1", 0, "advanced", v1)


def _abort(client, base, tmp_path) -> Case:
    model, v1, v2, args = _in_rollout(client, base, tmp_path, ["10%", "50%"], errors=10)
    return Case(model, args, lambda c: aliases(c, model).get(CANARY), v2, None, 1, "aborted", v1)


def _promote(client, base, tmp_path) -> Case:
    model, v1, v2, args = _in_rollout(client, base, tmp_path, ["50%"], errors=0)
    return Case(model, args, lambda c: aliases(c, model).get("Production"), v1, v2, 0,
                "promoted", v2)


SETUPS = {"canary gate": _canary, "advance": _advance, "abort": _abort, "promote": _promote}
SWEEPS = [(name, "server dies") for name in SETUPS] + [("advance", "answer lost")]
# (A lost answer of an alias write is swept in tests/test_faults.py; an advance's move is a tag.)


def _run(proxy: FaultProxy, case: Case, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = run(["--tracking-uri", proxy.url, *case.args])
    return code, capsys.readouterr().err


def _check_point(client, case: Case, code: int, err: str) -> str | None:
    where = case.where(client)
    assert where in {case.old, case.new}, (where, code, err)
    if case.outcome != "promoted":
        assert aliases(client, case.model)["Production"] == case.production, err
    first = err.strip().splitlines()[0] if err.strip() else ""
    if where != case.old:
        assert code in (case.done, 5), (code, err)
        if code == 5:
            assert "incomplete" in err, err
    elif code == 5:
        assert "may have" in first, err
    else:
        assert code == 3, (code, err)
        assert "nothing moved" in first or "nothing was moved" in first, err
    return where


def _check_converged(client, proxy: FaultProxy, case: Case, capsys, *, strict: bool) -> None:
    assert case.where(client) == case.new
    assert aliases(client, case.model)["Production"] == case.production
    rm = client.get_registered_model(case.model)
    assert INTENT_TAG not in (rm.tags or {}), rm.tags
    held = read_lease(client, case.model)
    assert held is None or (not strict and not is_live(held)), held
    decisions = decision_runs(client, case.model)
    if strict:
        assert all(status != "RUNNING" for _, _, status in decisions), decisions
    capsys.readouterr()
    assert run(["--tracking-uri", proxy.url, "history", case.model, "--json"]) == 0
    shown = [d["outcome"] for d in json.loads(capsys.readouterr().out)["decisions"]]
    assert shown.count(case.outcome) == 1, (shown, decisions)
    assert "pending" not in shown, (shown, decisions)


@pytest.mark.parametrize(("command", "mode"), SWEEPS)
def test_every_write_of_a_rollout_interrupted(command, mode, proxy, client, model_name,
                                              tmp_path, capsys, fast_failures, monkeypatch):
    # "answer lost": the write reaches the server and its answer does not come back, and the
    # client does not retry it (fast_failures): the command must find out what it did by
    # reading, as after a timeout.
    proxy.arm(None)
    case = SETUPS[command](client, model_name, tmp_path)
    code, err = _run(proxy, case, capsys)
    assert code == case.done, err
    total = sum(1 for r in proxy.requests if r.write)
    assert total >= 5
    points = sweep_points(proxy.requests)  # every distinct crash point (tests/sweeppoints.py)
    table = []
    setup = partial(SETUPS[command], client, model_name, tmp_path)
    for n, case in zip(points, prepared(setup, len(points)), strict=True):
        proxy.arm(DownFrom(n, writes_only=True) if mode == "server dies"
                  else DropResponse(n, writes_only=True))
        code, err = _run(proxy, case, capsys)
        proxy.arm(None)
        where = _check_point(client, case, code, err)
        rerun = "-"
        if code not in (0, 1):
            rerun, rerun_err = _run(proxy, case, capsys)
            assert rerun in (0, 1), rerun_err
        _check_converged(client, proxy, case, capsys, strict=rerun != "-")
        table.append(f"{n:>3}  exit {code}  {'moved' if where != case.old else 'stayed'}"
                     f"  rerun {rerun}")
    print(f"\n{command}, {mode}: {total} writes, failed at {len(points)}\n" + "\n".join(table))
