"""Monitoring benchmarks: what the inference log costs the endpoint, and what reading it costs.

Part 1, the serving overhead of the inference log. One run, on this machine, loopback only:
  1. `promote train` trains the linear baseline (train/candidates/linear.yaml) into a throwaway
     SQLite store in a temporary directory, and Production is pointed at it;
  2. two `promote serve` processes follow it: one with `--log-uri none`, one with
     `--log-uri sqlite:///<tmp>/log.db --log-sample-rate 1.0` (every request and its row logged);
  3. the same closed-loop load (bench/serve.py's: CONCURRENCY keep-alive connections, one thread
     each, 1-row `dataframe_split` requests) hits each in alternating rounds (A B, B A, ...), so
     the noise of a shared machine falls on both alike.
Printed: requests/s (median of the rounds) and p50/p99 latency of each, the % difference, and
what the logging endpoint wrote and dropped. No goal is asserted: the figures are the result.

Part 2, `promote watch` over a large window. `fill_log` writes --rows logged rows (default
1,000,000, 20 features, 10 rows per request: 100,000 requests) of one version into a SQLite log
within the last 15 minutes; the version is registered in a throwaway local MLflow store with a
reference profile on its run and promoted by the gate. Then `run_watch` (a dry run: it reads and
judges, writes nothing) is timed twice in this process, the first time including what it
imports, and once as its own `promote watch --dry-run` process; peak memory (max RSS) of each.

`fill_log(store, n_rows, n_features, ...)` writes synthetic logged rows quickly (batched writes
through LogStore.write), for benchmarks that read a large log.

    .venv/bin/python bench/monitoring.py [--seconds 6] [--requests 5000] [--rounds 3]
                                         [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as serve_bench

from promotion.monitoring.logstore import LogStore, RequestRecord

BIN = serve_bench.BIN
MODEL = serve_bench.MODEL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per server and round")
    parser.add_argument("--requests", type=int, default=5000,
                        help="per server and round, at most")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000_000, help="part 2: logged rows")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="promote-bench-monitoring-") as tmp:
        if args.part in ("1", "all"):
            serving_overhead(Path(tmp) / "serve", args)
        if args.part in ("2", "all"):
            watch_window(Path(tmp) / "watch", args.rows)
    return 0


# -- part 1: the serving overhead of the log -----------------------------------------------------


def serving_overhead(tmp: Path, args: argparse.Namespace) -> None:
    """Part 1: `promote serve` with the log off vs logging every request and row to SQLite."""
    tmp.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONWARNINGS": "ignore"}
    version = serve_bench.train(tmp, env, ["linear"])["linear"]
    serve_bench.set_alias(env, version)
    payload = serve_bench.make_payload(1)
    log_uri = f"sqlite:///{tmp / 'log.db'}"
    base = [str(BIN / "promote"), "serve", MODEL, "--port", "{port}", "--poll-interval", "5"]
    with serve_bench.server(tmp, env, "log-off", [*base, "--log-uri", "none"]) as off, \
            serve_bench.server(tmp, env, "log-on", [*base, "--log-uri", log_uri,
                                                    "--log-sample-rate", "1.0"]) as on:
        serve_bench.check_same_predictions(off, on, payload)
        measures = {off: serve_bench.Measure(), on: serve_bench.Measure()}
        for url in measures:  # warm both up alike
            serve_bench.load(url, payload, 2.0, 200, args.concurrency, serve_bench.Measure())
        for r in range(args.rounds):
            for url in (off, on) if r % 2 == 0 else (on, off):
                serve_bench.load(url, payload, args.seconds, args.requests, args.concurrency,
                                 measures[url])
        log_state = _wait_flushed(on)
    _report(measures[off], measures[on], log_state, args)
    store = LogStore(log_uri)
    end = datetime.now(UTC) + timedelta(minutes=1)
    logged = store.versions(MODEL, end - timedelta(days=1), end)
    store.close()
    print(f"log database: {sum(logged.values())} requests of version(s) "
          f"{', '.join(logged) or 'none'}")


def _wait_flushed(url: str, timeout: float = 30.0) -> dict:
    """The logging endpoint's /version "log" document once its queue is empty and the last
    batch is written (two reads a second apart agree)."""
    deadline = time.monotonic() + timeout
    previous: dict | None = None
    while True:
        with urllib.request.urlopen(f"http://{url}/version", timeout=5) as r:
            state = json.loads(r.read())["log"]
        settled = previous is not None and state["written"] == previous["written"]
        if (state["queued"] == 0 and settled) or time.monotonic() > deadline:
            return state
        previous = state
        time.sleep(1.0)


def _report(off: serve_bench.Measure, on: serve_bench.Measure, log_state: dict,
            args: argparse.Namespace) -> None:
    print(f"\npart 1: serving overhead of the inference log ({args.concurrency} connections, "
          f"{args.rounds} rounds of {args.seconds:g} s per server, 1-row requests)")
    print(f"{'endpoint':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, m in (("--log-uri none", off), ("--log-uri sqlite (sample rate 1)", on)):
        print(f"{name:34} {statistics.median(m.rates):8.1f} {m.p(0.50):8.2f} {m.p(0.99):8.2f} "
              f"{m.errors:7d}")
    throughput = statistics.median(on.rates) / statistics.median(off.rates) - 1
    print(f"difference with the log: throughput {throughput:+.1%}, "
          f"p50 {on.p(0.5) / off.p(0.5) - 1:+.1%}, p99 {on.p(0.99) / off.p(0.99) - 1:+.1%}")
    print(f"logging endpoint: {log_state['written']} records written, "
          f"{log_state['sampled_rows']} rows, {log_state['dropped']} dropped "
          f"({log_state['dropped_queue_full']} queue full, {log_state['dropped_database']} "
          f"database), status {log_state['status']}")


# -- part 2: a watch over a large window ---------------------------------------------------------


WATCH_SCRIPT = """
import resource, sys, time
from promotion.gate.watch import run_watch
from promotion.monitoring.logstore import LogStore
from promotion.policy.load import load_policy
from promotion.registry.client import connect
policy, log_uri = load_policy(sys.argv[1]), sys.argv[2]
client, store = connect(None), LogStore(log_uri)
for attempt in ("first (imports included)", "second"):
    started = time.perf_counter()
    result = run_watch(client, policy, store, dry_run=True)
    took = time.perf_counter() - started
    live = result.facts.live
    print(f"  run_watch, {attempt}: {took:.2f} s  ({live.requests} requests, {live.rows} rows, "
          f"{live.drift_rows} rows profiled; outcome {result.outcome})")
print(f"  peak memory (max RSS) of that process: "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
"""


def watch_window(tmp: Path, rows: int, features: int = 20) -> None:
    """Part 2: `run_watch` over `rows` logged rows of the window."""
    tmp.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "PYTHONWARNINGS": "ignore"}
    policy = tmp / "watch.yaml"
    policy.write_text(WATCH_POLICY.format(model=MODEL))
    # Version 1, its run holding a reference profile, promoted to Production by the gate.
    subprocess.run([sys.executable, "-c", REGISTER_SCRIPT, str(policy), str(features)],
                   env=env, check=True, capture_output=True)
    store = LogStore(f"sqlite:///{tmp / 'log.db'}")
    store.migrate()
    end = datetime.now(UTC)
    started = time.perf_counter()
    # Ten minutes of traffic ending now: the watch's 15-minute window still holds all of it
    # when it runs, however long the writing took.
    fill_log(store, rows, features, start=end - timedelta(minutes=10), end=end,
             rows_per_request=10, requests_per_write=500)
    print(f"\npart 2: promote watch over {rows:,} logged rows x {features} features "
          f"({rows // 10:,} requests; written in {time.perf_counter() - started:.0f} s, "
          f"log database {os.path.getsize(tmp / 'log.db') / 2**20:.0f} MiB)")
    store.close()
    subprocess.run([sys.executable, "-c", WATCH_SCRIPT, str(policy), store.uri], env=env,
                   check=True)
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "promote"), "watch", str(policy), "--dry-run",
                           "--log-uri", store.uri], env=env, capture_output=True, text=True,
                          check=False)
    print(f"  promote watch --dry-run as a process: {time.perf_counter() - started:.2f} s, "
          f"exit {proc.returncode}")


WATCH_POLICY = """model: {model}
metrics: {{rmse: {{goal: minimize, max: 1000}}}}
watch:
  min_requests: 100
  rules:
    error_rate: {{max: 1%}}
    latency_p95_ms: {{max: 250}}
    prediction_psi: {{max: 0.25}}
    feature_psi: {{max: 0.25}}
    feature_ks: {{max: 0.2}}
"""


REGISTER_SCRIPT = """
import sys
import numpy as np, pandas as pd
from promotion.gate import run_gate
from promotion.monitoring.profile import build_profile
from promotion.policy.load import load_policy
from promotion.registry import profiles
from promotion.registry.client import connect
policy, features = load_policy(sys.argv[1]), int(sys.argv[2])
client = connect(None)
rng = np.random.default_rng(1)
reference = pd.DataFrame(rng.normal(0.0, 1.0, (2000, features)),
                         columns=[f"f{i}" for i in range(features)])
run = client.create_run(client.create_experiment("bench"))
client.log_metric(run.info.run_id, "rmse", 1.0)
profiles.save_profile(client, run.info.run_id, build_profile(
    reference, reference.sum(axis=1).to_numpy(), source="bench reference").to_json())
client.create_registered_model(policy.model)
client.create_model_version(policy.model, run.info.artifact_uri + "/model",
                            run_id=run.info.run_id)
run_gate(client, policy, candidate=None)
"""


# -- a large synthetic log, for the benchmarks that read one ---------------------------------


def fill_log(store: LogStore, n_rows: int, n_features: int, *, model: str = MODEL,
             version: str = "1", start: datetime | None = None, end: datetime | None = None,
             rows_per_request: int = 100, requests_per_write: int = 100, shift: float = 0.0,
             seed: int = 0) -> int:
    """Write `n_rows` synthetic logged rows of `model` version `version`: features f0..f{n-1}
    drawn from N(shift, 1), predictions their sum, requests of `rows_per_request` rows spread
    evenly over [start, end) (default: the last hour), `requests_per_write` requests per
    transaction. The number of rows written."""
    import numpy as np
    import pandas as pd

    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=1)
    rng = np.random.default_rng(seed)
    n_requests = -(-n_rows // rows_per_request)
    step = (end - start) / max(1, n_requests)
    columns = [f"f{i}" for i in range(n_features)]
    written = 0
    batch: list[RequestRecord] = []
    for r in range(n_requests):
        rows = min(rows_per_request, n_rows - written)
        values = rng.normal(shift, 1.0, size=(rows, n_features))
        batch.append(RequestRecord(
            request_id=uuid.uuid4().hex, at=start + r * step, model=model, alias="Production",
            version=version, rows=rows, latency_ms=float(rng.gamma(2.0, 2.0)), outcome="ok",
            status=200, inputs=pd.DataFrame(values, columns=columns),
            predictions=values.sum(axis=1)))
        written += rows
        if len(batch) == requests_per_write:
            store.write(batch)
            batch = []
    store.write(batch)
    return written


if __name__ == "__main__":
    sys.exit(main())
