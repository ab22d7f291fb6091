"""Gate cost vs registry size: REST calls and wall time per decision with 1, 100 and 1,000 versions.

For each size, one model whose versions all point at one shared run (creating a version is one
call; nothing is logged per version). Version 1 holds Production; the candidate is `latest`, so
the gate must find the highest version number among N (for N = 1 the candidate already holds the
alias). Measured in-process, warm (client and imports ready), median of several interleaved runs:

  decision   `run_gate(dry_run=True)`: every read the gate makes, and the decision itself;
  rejected   a full gate that rejects (record run + version tags; nothing moves);
  promoted   a full gate that moves the alias (write-ahead protocol + record).

REST calls are counted at the HTTP adapter (every request the process sends, artifact uploads
included). Goals: the call count does not grow with N; wall(1,000)/wall(1) <= 1.2 for the
decision; a warm decision <= 150 ms. Prints figures, asserts nothing. Registry round trips
dominate, so the figures follow the server's load (printed).

    .venv/bin/python bench/gate.py [--tracking-uri URI] [--runs 7]

Without --tracking-uri (or MLFLOW_TRACKING_URI) it starts a throwaway local `mlflow server` on
SQLite in a temporary directory, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

SIZES = (1, 100, 1000)
RUNS = 7
GOAL_RATIO = 1.2
GOAL_WARM_MS = 150.0


class RequestCounter:
    """Counts HTTP requests sent by this process (thread-safe: the gate reads in parallel)."""

    def __init__(self) -> None:
        import requests.adapters

        self.count = 0
        self._lock = threading.Lock()
        adapter = requests.adapters.HTTPAdapter
        original = adapter.send
        counter = self

        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            with counter._lock:
                counter.count += 1
            return original(self, request, **kwargs)

        adapter.send = send  # type: ignore[method-assign]

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int]]:
        box: list[int] = []
        start = self.count
        yield box
        box.append(self.count - start)


def build(client, size: int, tag: str) -> str:
    """A model with `size` versions of one shared run; version 1 holds Production."""
    from mlflow.entities import Metric

    name = f"bench-gate-{tag}-{size}"
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("promote-bench")
    exp_id = exp.experiment_id if exp else client.create_experiment("promote-bench")
    run = client.create_run(exp_id)
    client.log_batch(run.info.run_id, metrics=[Metric("rmse", 0.5, int(time.time() * 1000), 0)])
    source = f"{run.info.artifact_uri}/model"

    def one(_: int) -> None:
        client.create_model_version(name, source, run_id=run.info.run_id, await_creation_for=0)

    client.create_model_version(name, source, run_id=run.info.run_id, await_creation_for=0)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(size - 1)))
    client.set_registered_model_alias(name, "Production", "1")
    return name


def interleaved(counter: RequestCounter, steps: dict[tuple[int, str], Callable[[], object]],
                runs: int) -> dict[tuple[int, str], tuple[float, int, str]]:
    """Median seconds, REST calls (last run) and outcome of each step, after one warm-up each.

    Rounds visit every (size, step) once, so a change in the server's load during the bench
    affects every size alike instead of skewing one of them.
    """
    times: dict[tuple[int, str], list[float]] = {key: [] for key in steps}
    last: dict[tuple[int, str], tuple[int, str]] = {}
    for fn in steps.values():
        fn()
    for _ in range(runs):
        for key, fn in steps.items():
            with counter.measure() as box:
                t0 = time.perf_counter()
                result = fn()
                times[key].append(time.perf_counter() - t0)
            last[key] = (box[0], str(getattr(result, "outcome", result)))
    return {key: (statistics.median(times[key]), *last[key]) for key in steps}


def bench(uri: str, runs: int) -> None:
    from promotion.engine.decision import decide
    from promotion.gate import run_gate
    from promotion.policy.model import Candidate, Margin, MetricRule, Policy
    from promotion.registry.client import connect

    counter = RequestCounter()
    client = connect(uri)
    tag = uuid.uuid4().hex[:8]

    def policy(model: str, rule: MetricRule) -> Policy:
        return Policy(path="bench/gate.py", sha256="0" * 64, model=model, metrics=(rule,))

    better = MetricRule("rmse", "minimize", max=1.0, min_improvement=Margin(0.01, True))
    not_worse = MetricRule("rmse", "minimize", max=1.0, max_regression=Margin(0.0))

    models = {}
    for size in SIZES:
        t0 = time.perf_counter()
        models[size] = build(client, size, tag)
        print(f"built a model with {size} versions in {time.perf_counter() - t0:.1f} s")

    steps: dict[tuple[int, str], Callable[[], object]] = {}
    for size, model in models.items():
        steps[(size, "decision")] = partial(run_gate, client, policy(model, better),
                                            dry_run=True)
        if size > 1:
            steps[(size, "rejected")] = partial(run_gate, client, policy(model, better))
            # Alternate two candidates that are never worse: every run moves the alias.
            flip = itertools.cycle(["2", "3"])
            steps[(size, "promoted")] = lambda m=model, f=flip: run_gate(
                client, policy(m, not_worse), candidate=Candidate.parse(next(f)))
    results = interleaved(counter, steps, runs)

    print(f"\nserver {uri}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"median of {runs} interleaved runs after one warm-up\n")
    header = f"{'versions':>8}  {'step':<9} {'outcome':<9} {'REST calls':>10} {'wall ms':>8}"
    print(header)
    print("-" * len(header))
    calls_by_step: dict[str, set[int]] = {}
    for (size, step), (seconds, calls, outcome) in sorted(results.items()):
        calls_by_step.setdefault(step, set()).add(calls)
        print(f"{size:>8}  {step:<9} {outcome:<9} {calls:>10} {seconds * 1000:>8.0f}")

    first, last = results[(SIZES[0], "decision")][0], results[(SIZES[-1], "decision")][0]
    ratio = last / first
    facts = run_gate(client, policy(models[SIZES[-1]], better), dry_run=True)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        decide(facts.policy, facts.candidate, facts.production)
    pure_us = (time.perf_counter() - t0) / n * 1e6

    print()
    for step, counts in calls_by_step.items():
        verdict = "constant" if len(counts) == 1 else f"varies: {sorted(counts)}"
        print(f"REST calls per {step:<9} {verdict}")
    print(f"decision wall({SIZES[-1]})/wall({SIZES[0]}) = {ratio:.2f} "
          f"(goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'NOT met'})")
    print(f"warm in-process decision at {SIZES[-1]} versions: {last * 1000:.0f} ms "
          f"(goal <= {GOAL_WARM_MS:.0f} ms: {'met' if last * 1000 <= GOAL_WARM_MS else 'NOT met'})"
          f"; decide() alone: {pure_us:.0f} us")


# ---------------------------------------------------------------------------------------------
# A throwaway server when none is given


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    scratch = Path(tempfile.mkdtemp(prefix="promote-bench-mlflow-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = open(scratch / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", f"sqlite:///{scratch}/mlflow.db",
         "--artifacts-destination", str(scratch / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((scratch / "server.log").read_text()[-2000:])
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if args.tracking_uri:
        bench(args.tracking_uri, args.runs)
        return 0
    print("no --tracking-uri: starting a throwaway local mlflow server (SQLite)")
    with local_server() as url:
        bench(url, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
