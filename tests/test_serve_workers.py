"""Scoring processes (serve.workers): real forked processes scoring a real saved sklearn model.

No registry is needed: a model saved with mlflow.sklearn.save_model is loaded by the endpoint's
process (as the follower does) and by the scoring processes from the same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from promotion.serve.batching import score_in_thread
from promotion.serve.batchscore import Raw, Scored
from promotion.serve.protocol import RequestError
from promotion.serve.state import Served
from promotion.serve.workers import LOADED_PER_PROCESS, ScoringProcesses

COLUMNS = ["x1", "x2"]


def save_model(path: Path, coef: tuple[float, float]) -> Served:
    import mlflow.pyfunc
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.utils.autologging_utils import disable_autologging
    from sklearn.linear_model import LinearRegression

    x = pd.DataFrame(np.random.default_rng(0).normal(size=(20, 2)), columns=COLUMNS)
    with disable_autologging():  # another test may have turned it on for the whole process
        model = LinearRegression().fit(x, x.to_numpy() @ np.array(coef))
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(x, model.predict(x)),
                              pip_requirements=["scikit-learn"])  # not inferred: seconds each
    pyfunc = mlflow.pyfunc.load_model(str(path))
    return Served(version=path.name, model=pyfunc, loaded_at=time.time(), load_seconds=0.0,
                  input_schema=pyfunc.metadata.get_input_schema(), model_dir=str(path))


def body(rows: list[list[float]]) -> Raw:
    payload = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    return Raw(json.dumps(payload).encode(), "application/json")


def predictions(scored: Scored) -> list:
    return [json.loads(r.content)["predictions"] if r.error is None else r.error
            for r in scored.results]


def until_in_process(processes: ScoringProcesses, served: Served, raws: list[Raw]) -> Scored:
    """Score until a batch runs in a process (the first ones run on this thread while the
    processes load the version)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scored = processes.score(served, raws, 64)
        if scored.where == "process":
            return scored
        time.sleep(0.05)
    raise AssertionError("the scoring processes never held the version")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Served]:
    base = tmp_path_factory.mktemp("models")
    coefs = {"v1": (1.0, 2.0), "v2": (-3.0, 0.5)}
    coefs.update({f"m{i}": (float(i), 1.0) for i in range(LOADED_PER_PROCESS + 1)})
    return {name: save_model(base / name, coef) for name, coef in coefs.items()}


@pytest.fixture
def processes():
    made = ScoringProcesses(1)
    yield made
    made.close()
    for process in made.processes:
        # It exited on its own when its pipe closed (stop() kills only after a timeout).
        assert process.process.exitcode == 0


def test_a_batch_scores_the_same_in_a_process_as_on_a_thread(models, processes):
    served = models["v1"]
    raws = [body([[1.0, 1.0]]), body([[2.0, 0.0], [0.0, 3.0]]), body([[5.0, 5.0]])]
    first = processes.score(served, raws, 64)
    assert first.where == "thread"  # the process is still loading the version
    scored = until_in_process(processes, served, raws)
    assert predictions(scored) == predictions(score_in_thread(served, raws, 64))
    assert predictions(scored) == [[pytest.approx(3.0)], [pytest.approx(2.0), pytest.approx(6.0)],
                                   [pytest.approx(15.0)]]
    assert scored.calls == [(3, 4)]  # one predict call for the three requests


def test_errors_come_back_from_the_process_as_they_were_raised(models, processes):
    served = models["v1"]
    until_in_process(processes, served, [body([[1.0, 1.0]])])
    raws = [body([[1.0, 1.0]]), Raw(b'{"dataframe_split": ', "application/json"),
            Raw(b"x1,x2\n1,2\n", "text/plain")]
    scored = processes.score(served, raws, 64)
    assert scored.where == "process"
    ok, malformed, media = scored.results
    assert json.loads(ok.content)["predictions"] == [pytest.approx(3.0)]
    assert isinstance(malformed.error, RequestError) and malformed.error.status == 400
    assert "malformed JSON" in malformed.error.message
    assert isinstance(media.error, RequestError) and media.error.status == 415


def test_a_process_that_dies_is_replaced_and_its_batch_scored_on_the_thread(models, processes):
    served = models["v1"]
    raws = [body([[1.0, 1.0]])]
    until_in_process(processes, served, raws)
    dead = processes.processes[0].process
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(10)
    scored = processes.score(served, raws, 64)
    assert scored.where == "thread" and predictions(scored) == [[pytest.approx(3.0)]]
    assert processes.restarts == 1 and processes.processes[0].process.pid != dead.pid
    # The new process loads the version in turn.
    assert until_in_process(processes, served, raws).where == "process"


def test_a_version_a_process_cannot_load_is_scored_on_the_thread(models, processes, tmp_path):
    gone = tmp_path / "v3"
    shutil.copytree(models["v2"].model_dir, gone)
    served = Served(version="v3", model=models["v2"].model, loaded_at=time.time(),
                    load_seconds=0.0, input_schema=models["v2"].input_schema,
                    model_dir=str(gone))
    shutil.rmtree(gone)  # the endpoint holds it in memory; its directory is gone
    raws = [body([[1.0, 1.0]])]
    for _ in range(50):
        scored = processes.score(served, raws, 64)
        assert scored.where == "thread" and predictions(scored) == [[pytest.approx(-2.5)]]
        time.sleep(0.02)
    # The other versions are still scored in the process.
    assert until_in_process(processes, models["v1"], raws).where == "process"


def test_every_process_exits_when_the_endpoint_closes_its_pipe():
    # Each forked process closes the copies it inherited of the earlier processes' pipes: else
    # closing process 0's pipe would not end it while process 1 lives.
    made = ScoringProcesses(3)
    first = made.processes[0]
    first.conn.close()
    first.process.join(30)
    assert first.process.exitcode == 0
    made.close()
    assert [p.process.exitcode for p in made.processes] == [0, 0, 0]


def test_a_process_keeps_the_last_versions_it_was_asked_for(models, processes):
    versions = [models[f"m{i}"] for i in range(LOADED_PER_PROCESS + 1)]
    raws = [body([[1.0, 1.0]])]
    for i, served in enumerate(versions):
        scored = until_in_process(processes, served, raws)
        assert predictions(scored) == [[pytest.approx(i + 1.0)]]
    held = processes.processes[0].ready
    assert held == {v.model_dir for v in versions[1:]}  # the first one was let go


def test_the_default_is_one_scoring_process_for_one_model_on_two_cores_or_more(monkeypatch):
    from promotion.serve import server
    from promotion.serve.server import ServeOptions, scoring_processes_for

    monkeypatch.setattr(server, "usable_cores", lambda: 2)
    assert scoring_processes_for(ServeOptions(model="m")) == 1
    assert scoring_processes_for(ServeOptions(model="m", more=("n",))) == 0  # a fleet: threads
    assert scoring_processes_for(ServeOptions(model="m", max_batch_rows=0)) == 0  # no batching
    assert scoring_processes_for(ServeOptions(model="m", scoring_processes=3)) == 3
    assert scoring_processes_for(ServeOptions(model="m", more=("n",), scoring_processes=2)) == 2
    monkeypatch.setattr(server, "usable_cores", lambda: 1)
    assert scoring_processes_for(ServeOptions(model="m")) == 0


@pytest.mark.parametrize(("cpu_max", "bound"), [
    ("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None)])
def test_usable_cores_follow_a_container_cpu_quota(tmp_path, cpu_max, bound):
    from promotion.serve.server import usable_cores

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(path) == (cores if bound is None else min(cores, bound))
    assert usable_cores(tmp_path / "absent") == cores
