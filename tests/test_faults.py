"""The fault sweep: every alias-moving command, with the registry failing at every write.

A real TCP proxy (tests/faultproxy.py) stands between Promote and the real test server. For every
write index of a promoting gate, a rejecting gate and a rollback, the server "dies" from that
request on (every later request refused), or only that request's answer is lost (it reached the
server). (Every distinct crash point, that is: within a batch of version tags, whose requests are
sent at once and arrive in any order, the first and the last; tests/sweeppoints.py says why.)
Each point then checks what a user depends on:

- the alias is only ever on the old or the new version, never on a version recorded as rejected;
- the exit code says what moved: 3 only when nothing did, 5 when the alias moved (or may have) but
  the record is incomplete, 0/1 when the command completed;
- a healthy rerun of the same command converges: the alias on the right version, no interrupted
  operation left, no lease held, no decision record left running, and `history` holding exactly
  one record per move that happened (and none for a move that did not).

Commands run in-process through the CLI boundary (`promotion.cli.run`), which is faithful: the
same code path as the `promote` executable, without paying for `import mlflow` at every point.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from dataclasses import dataclass
from functools import partial

import pytest
from faultproxy import Callback, DownFrom, DropResponse, FaultProxy, ResetOnce, Status
from forkserver import PromoteForker
from helpers import add_version, aliases, decision_runs, write_policy
from sweeppoints import prepared, sweep_points

from promotion.cli import run
from promotion.engine import records as record
from promotion.engine.intent import INTENT_TAG
from promotion.gate import operation
from promotion.registry.lease import is_live, read_lease

pytestmark = pytest.mark.mlflow


@dataclass
class Case:
    """One model set up for one command, and what the command should do to it."""

    model: str
    args: list[str]
    old: str  # where the alias is before
    new: str  # where it is once the command completed (== old: nothing may move)
    moves: int  # the records saying a move happened, once converged (0 or 1)
    kind: str  # the record kind of the move: gate | rollback


def _promoting(client, base: str, tmp_path) -> Case:
    model = f"{base}-{uuid.uuid4().hex[:6]}"
    v1 = add_version(client, model, {"rmse": 0.5})
    client.set_registered_model_alias(model, "Production", v1)
    v2 = add_version(client, model, {"rmse": 0.4})
    policy = write_policy(tmp_path / f"{model}.yaml", model, {
        "metrics": {"rmse": {"goal": "minimize", "min_improvement": "1%"}}})
    return Case(model, ["gate", str(policy), "--candidate", v2], v1, v2, 1, "gate")


def _rejecting(client, base: str, tmp_path) -> Case:
    case = _promoting(client, base, tmp_path)
    worse = add_version(client, case.model, {"rmse": 0.9})
    case.args[-1] = worse
    return Case(case.model, case.args, case.old, case.old, 0, "gate")


def _rollback(client, base: str, tmp_path) -> Case:
    model = f"{base}-{uuid.uuid4().hex[:6]}"
    v1 = add_version(client, model, {"rmse": 0.5})
    v2 = add_version(client, model, {"rmse": 0.4})
    client.set_registered_model_alias(model, "Production", v2)
    client.set_registered_model_alias(model, "Production-previous", v1)
    return Case(model, ["rollback", model], v2, v1, 1, "rollback")


SETUPS = {"promoting gate": _promoting, "rejecting gate": _rejecting, "rollback": _rollback}


def _run(proxy: FaultProxy, case: Case, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(["--tracking-uri", proxy.url, *case.args])
    out, err = capsys.readouterr()
    return code, out, err


def _check_point(client, case: Case, code: int, err: str) -> str:
    """The invariants right after the faulted command; returns where the alias is."""
    where = aliases(client, case.model).get("Production")
    assert where in {case.old, case.new}, (where, code, err)
    rejected = client.get_model_version(case.model, where).tags.get(record.DECISION)
    assert rejected != "rejected", (where, code, err)
    moved = where != case.old
    if moved:
        assert code in (0, 5), (code, err)  # never "nothing moved" once it moved
        if code == 5:
            assert "moved" in err.splitlines()[0] and "incomplete" in err, err
    elif code == 5:  # the alias write itself got no answer: it cannot be told, and says so
        assert "may have moved" in err.splitlines()[0], err
    else:
        assert code in (1, 3) if case.moves == 0 else code == 3, (code, err)
        if code == 3:
            first = err.strip().splitlines()[0]
            assert "nothing moved" in first or "nothing was" in first, err
    return where


def _check_converged(client, proxy: FaultProxy, case: Case, capsys, *, strict: bool) -> None:
    """The fully recorded state. `strict` after a writing command ran on a healthy registry;
    otherwise (the faulted command itself completed) only what such a command leaves behind
    when its last cleanup write failed is allowed: a lease nobody holds any more, and a
    duplicate record run that `history` does not show."""
    assert aliases(client, case.model).get("Production") == case.new
    rm = client.get_registered_model(case.model)
    assert INTENT_TAG not in (rm.tags or {}), rm.tags
    held = read_lease(client, case.model)
    assert held is None or (not strict and not is_live(held)), held
    decisions = decision_runs(client, case.model)
    if strict:
        assert all(status != "RUNNING" for _, _, status in decisions), decisions
        assert all(outcome != "pending" for _, outcome, _ in decisions), decisions
    capsys.readouterr()
    assert run(["--tracking-uri", proxy.url, "history", case.model, "--json"]) == 0
    shown = [d["outcome"] for d in json.loads(capsys.readouterr().out)["decisions"]]
    move = "promoted" if case.kind == "gate" else "rollback"
    assert shown.count(move) == case.moves, (shown, decisions)
    assert "pending" not in shown, (shown, decisions)


def _points(proxy: FaultProxy, case: Case, capsys) -> tuple[int, list[int]]:
    """A healthy run of the command: (how many writes it makes, the ones a sweep fails)."""
    proxy.arm(None)
    code, _, err = _run(proxy, case, capsys)
    assert code in (0, 1), err
    return sum(1 for r in proxy.requests if r.write), sweep_points(proxy.requests)


SWEEPS = [(command, "server dies") for command in sorted(SETUPS)] + [
    # A rejecting gate moves nothing: a lost answer is covered by the other two.
    ("promoting gate", "answer lost"), ("rollback", "answer lost")]


@pytest.mark.parametrize(("command", "mode"), SWEEPS)
def test_every_write_interrupted(command, mode, proxy, client, model_name, tmp_path, capsys,
                                 fast_failures, monkeypatch):
    if mode == "answer lost":
        # The request reached the server; MLflow's client retries it once, as by default.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    total, points = _points(proxy, SETUPS[command](client, model_name, tmp_path), capsys)
    assert total >= 5
    table = []
    setup = partial(SETUPS[command], client, model_name, tmp_path)
    for n, case in zip(points, prepared(setup, len(points)), strict=True):
        proxy.arm(DownFrom(n, writes_only=True) if mode == "server dies"
                  else DropResponse(n, writes_only=True))
        code, _, err = _run(proxy, case, capsys)
        proxy.arm(None)
        where = _check_point(client, case, code, err)
        if code == 5 and where != case.old:
            _check_status_names_the_interrupted_operation(proxy, case, capsys)
        rerun = "-"
        if code not in (0, 1):  # a completed command is not repeated: a rollback would flip
            rerun, _, rerun_err = _run(proxy, case, capsys)
            assert rerun in (0, 1), rerun_err
        _check_converged(client, proxy, case, capsys, strict=rerun != "-")
        table.append(f"{n:>3}  exit {code}  alias {'moved' if where != case.old else 'stayed'}"
                     f"  rerun {rerun}")
    print(f"\n{command}, {mode}: {total} writes, failed at {len(points)}\n" + "\n".join(table))


def _check_status_names_the_interrupted_operation(proxy: FaultProxy, case: Case, capsys) -> None:
    """The alias moved and the rest is missing: `status` says so, and which command finishes it
    (a retry of the same command: it completes the operation, never repeats or reverses it)."""
    capsys.readouterr()
    assert run(["--tracking-uri", proxy.url, "status", case.model, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["interrupted"]
    assert found is not None and found["state"] == "applied", found
    assert found["kind"] == case.kind and found["to_version"] == case.new
    expected = (f"promote rollback {case.model}" if case.kind == "rollback"
                else f"promote gate {case.args[1]}")
    assert found["finish"] == expected, found


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_a_single_transient_failure_at_every_request(fault, proxy, client, model_name, tmp_path,
                                                     capsys, monkeypatch):
    """One 503 or one reset anywhere: MLflow's retries absorb it, or the command says truly what
    happened, and a rerun converges."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setattr(operation, "RETRY_DELAYS", (0.0, 0.0))
    total, points = _points(proxy, _promoting(client, model_name, tmp_path), capsys)
    outcomes = []
    setup = partial(_promoting, client, model_name, tmp_path)
    for n, case in zip(points, prepared(setup, len(points)), strict=True):
        proxy.arm(Status(n, 503, writes_only=True) if fault == "503"
                  else ResetOnce(n, writes_only=True))
        code, _, err = _run(proxy, case, capsys)
        proxy.arm(None)
        _check_point(client, case, code, err)
        outcomes.append(code)
        if code != 0:
            assert _run(proxy, case, capsys)[0] == 0
        _check_converged(client, proxy, case, capsys, strict=code != 0)
    print(f"\none {fault} at {len(points)} of {total} writes: exit codes {outcomes}")
    assert outcomes == [0] * len(points), outcomes  # MLflow's client retries each through


def test_sigkill_at_every_write_converges(proxy, client, model_name, tmp_path, capsys,
                                         fast_failures):
    """The `promote` process is killed (SIGKILL) just as its n-th write arrives, for every n: the
    next gate (here in the test's process, on the same host) sees the dead holder's lease, takes
    it over at once, and converges.

    Each `promote` is a process of its own, forked by tests/forkserver.py from a process that has
    already imported the CLI and MLflow (what `python -m promotion` spends most of its start on):
    its own pid, its own connections, killed and reaped before the proxy answers anything."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    case = _promoting(client, model_name, tmp_path)
    writes, points = _points(proxy, case, capsys)
    killed = []
    with PromoteForker(env) as forker:
        setup = partial(_promoting, client, model_name, tmp_path)
        for n, case in zip(points, prepared(setup, len(points)), strict=True):
            started: list[int] = []
            ready, dead = threading.Event(), threading.Event()

            def kill(_record, started=started, ready=ready, dead=dead):
                ready.wait(60)
                os.kill(started[0], signal.SIGKILL)
                dead.wait(60)  # dead (and reaped) before the proxy answers anything

            proxy.arm(Callback(n, kill, writes_only=True))
            started.append(forker.start(case.args, tmp_path / f"promote-{n}.log"))
            ready.set()
            status = forker.wait()
            dead.set()
            proxy.arm(None)
            assert status == -signal.SIGKILL, (tmp_path / f"promote-{n}.log").read_text()
            where = aliases(client, case.model).get("Production")
            assert where in {case.old, case.new}
            again, _, err = _run(proxy, case, capsys)
            assert again == 0, err
            _check_converged(client, proxy, case, capsys, strict=True)
            killed.append(f"{n}:{'moved' if where != case.old else 'stayed'}")
    print(f"\nSIGKILL at {len(points)} of {writes} writes (write:alias): {' '.join(killed)}")
