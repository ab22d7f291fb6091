"""Serving speed: `promote serve` vs `mlflow models serve --env-manager local`, one model, one load.

One run, on this machine, loopback only:
  1. `promote train` trains the seed's random forest and the linear baseline
     (train/candidates/) into a throwaway SQLite store in a temporary directory;
  2. for each model in turn, `Production` is pointed at it; `promote serve` follows the alias there
     (it keeps polling every second during the measurement), `mlflow models serve -m
     models:/diabetes-regressor@Production --env-manager local` is started on it (it resolves the
     alias once). Both run one uvicorn process, as each does by default;
  3. the same closed-loop client load hits each server in alternating rounds (A B, B A, ...) so
     that the noise of a shared machine falls on both alike: CONCURRENCY connections (stdlib
     http.client, one thread each) send scoring requests of ROWS rows for SECONDS per round
     (at most REQUESTS requests).
Printed: requests/s (median of the rounds), p50 and p99 latency over all rounds, and the ratios.
Goal: promote serve at least on par with MLflow's own server (throughput ratio >= 1.0) while
following the alias.

    .venv/bin/python bench/serve.py [--seconds 6] [--requests 5000] [--rounds 3]
                                    [--concurrency 8] [--rows 5] [--model linear]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "diabetes-regressor"
CONFIGS = {"random-forest": "train/candidates/random-forest.yaml",  # the seed's model
           "linear": "train/candidates/linear.yaml"}
GOAL_RATIO = 1.0


@dataclass
class Measure:
    rates: list[float] = field(default_factory=list)  # requests/s of each round
    latencies: list[float] = field(default_factory=list)  # seconds, every request of every round
    errors: int = 0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per server and round")
    parser.add_argument("--requests", type=int, default=5000,
                        help="per server and round, at most")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=5, help="rows per scoring request")
    parser.add_argument("--model", action="append", choices=sorted(CONFIGS),
                        help="only these models (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promote-bench-serve-") as tmp:
        return run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> int:
    # mlflow models serve runs `uvicorn` from PATH: the venv's own, like everything else here.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONWARNINGS": "ignore"}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    versions = train(tmp, env, args.model or list(CONFIGS))
    payload = make_payload(args.rows)
    results: dict[str, tuple[Measure, Measure]] = {}
    set_alias(env, next(iter(versions.values())))  # promote serve refuses a missing alias
    with server(tmp, env, "promote", [str(BIN / "promote"), "serve", MODEL, "--port", "{port}",
                                      "--poll-interval", "1"]) as promote_url:
        for label, version in versions.items():
            set_alias(env, version)
            wait_for(lambda v=version: version_served(promote_url) == v, 120,
                     f"promote serve never followed Production to version {version}")
            with server(tmp, env, "mlflow", [str(BIN / "mlflow"), "models", "serve", "-m",
                                             f"models:/{MODEL}@Production", "--env-manager",
                                             "local", "--host", "127.0.0.1", "--port",
                                             "{port}"]) as mlflow_url:
                check_same_predictions(promote_url, mlflow_url, payload)
                results[label] = compare(promote_url, mlflow_url, payload, args)
    report(results, args)
    worst = min(statistics.median(p.rates) / statistics.median(m.rates)
                for p, m in results.values())
    print(f"goal: throughput ratio >= {GOAL_RATIO:.2f} for every model: "
          f"{'met' if worst >= GOAL_RATIO else 'NOT met'} (worst {worst:.2f})")
    return 0


def train(tmp: Path, env: dict[str, str], labels: list[str]) -> dict[str, str]:
    """Train the configs with the product's own trainer; label -> registered version."""
    started = time.monotonic()
    out = subprocess.run([str(BIN / "promote"), "train", *(str(REPO / CONFIGS[label])
                                                           for label in labels), "--json"],
                         cwd=tmp, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"promote train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    trained = json.loads(out.stdout)["trained"]
    print(f"trained {len(trained)} versions of {MODEL} in {time.monotonic() - started:.1f} s")
    return {label: t["version"] for label, t in zip(labels, trained, strict=True)}


def set_alias(env: dict[str, str], version: str) -> None:
    code = ("import mlflow, sys; mlflow.MlflowClient().set_registered_model_alias("
            f"{MODEL!r}, 'Production', {version!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def make_payload(rows: int) -> bytes:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.drop(columns="target").head(rows)
    return json.dumps({"dataframe_split": {"columns": list(frame.columns),
                                           "data": frame.to_numpy().tolist()}}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(tmp: Path, env: dict[str, str], name: str, argv: list[str]) -> Iterator[str]:
    port = free_port()
    log_path = tmp / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=tmp, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"127.0.0.1:{port}"
        try:
            wait_for(lambda: healthy(url), 180, f"{name} never became healthy",
                     alive=lambda: proc.poll() is None, log=log_path)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def version_served(url: str) -> str | None:
    with urllib.request.urlopen(f"http://{url}/version", timeout=5) as r:
        return json.loads(r.read())["version"]


def wait_for(condition, timeout: float, what: str, alive=lambda: True, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            break
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    sys.exit(f"{what}\n{tail}")


def post(conn: http.client.HTTPConnection, payload: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=payload,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def check_same_predictions(a: str, b: str, payload: bytes) -> None:
    answers = []
    for url in (a, b):
        conn = http.client.HTTPConnection(url, timeout=30)
        status, body = post(conn, payload)
        conn.close()
        if status != 200:
            sys.exit(f"{url} answered {status}: {body[:500]!r}")
        answers.append(json.loads(body)["predictions"])
    if answers[0] != answers[1]:
        sys.exit(f"the two servers disagree: {answers[0]} vs {answers[1]}")


def load(url: str, payload: bytes, seconds: float, requests: int, concurrency: int,
         into: Measure) -> None:
    """Scoring requests over `concurrency` keep-alive connections, closed loop, for `seconds`
    (at most `requests` of them)."""
    remaining = [requests]
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(url, timeout=60)
        mine: list[float] = []
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                status, _ = post(conn, payload)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(url, timeout=60)
            mine.append(time.perf_counter() - started)
            if status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    into.rates.append(len(latencies) / elapsed)
    into.latencies.extend(latencies)
    into.errors += errors[0]


def compare(promote: str, mlflow: str, payload: bytes,
            args: argparse.Namespace) -> tuple[Measure, Measure]:
    measures = {promote: Measure(), mlflow: Measure()}
    for url in measures:  # warm both up alike
        load(url, payload, 2.0, 200, args.concurrency, Measure())
    for r in range(args.rounds):
        order = (promote, mlflow) if r % 2 == 0 else (mlflow, promote)
        for url in order:
            load(url, payload, args.seconds, args.requests, args.concurrency, measures[url])
    return measures[promote], measures[mlflow]


def report(results: dict[str, tuple[Measure, Measure]], args: argparse.Namespace) -> None:
    print(f"\nload: {args.concurrency} connections, {args.rounds} rounds of {args.seconds:g} s "
          f"(at most {args.requests} requests) per server, {args.rows} rows per request "
          "(dataframe_split)")
    print(f"{'model':14} {'server':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, (p, m) in results.items():
        for name, measure in (("promote serve", p), ("mlflow models serve", m)):
            print(f"{label:14} {name:22} {statistics.median(measure.rates):8.1f} "
                  f"{measure.p(0.50):8.2f} {measure.p(0.99):8.2f} {measure.errors:7d}")
    print("\nratios, promote serve vs mlflow models serve "
          "(throughput: higher is better; latency: lower is better)")
    for label, (p, m) in results.items():
        throughput = statistics.median(p.rates) / statistics.median(m.rates)
        print(f"{label:14} throughput x{throughput:.2f}   p50 x{p.p(0.5) / m.p(0.5):.2f}   "
              f"p99 x{p.p(0.99) / m.p(0.99):.2f}")


if __name__ == "__main__":
    if re.search(r"(^|\s)-h|--help", " ".join(sys.argv[1:])) is None:
        print(__doc__.splitlines()[0])
    sys.exit(main())
