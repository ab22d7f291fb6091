"""How fast an alias move reaches traffic: MLflow webhook push vs polling, one run.

One run, on this machine, loopback only, everything in a temporary directory:
  1. a local `mlflow server` (SQLite backend, one worker) with what webhook delivery needs:
     `MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true` (the endpoints are on loopback), a fixed
     `MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY` and `MLFLOW_WEBHOOK_CACHE_TTL=1`;
  2. `promote train` trains the seed's random forest twice (versions 1 and 2), Production -> 1;
  3. two `promote serve` endpoints of the model, as shipped: POLL without a webhook secret
     (it polls every 10 s, the default), PUSH with `PROMOTE_WEBHOOK_SECRET` (it polls every 60 s,
     the default then, and `promote webhooks ensure` points the server's webhook at its
     `/hooks/mlflow`);
  4. MOVES times: Production is moved to the other version (`set_registered_model_alias`, the
     write a gate or a rollback makes), and from the moment the write returns, each endpoint is
     asked (POST /invocations, 1 row, every 20 ms) until its answer comes from the new version
     (`X-Model-Version`): the time to the first response from it, the load of the version
     included (the endpoint downloads and loads it when it learns of the move). Each move waits
     a random part of the poll interval first (seeded), as a user's move falls anywhere in it.
Printed: every move's two times, then median, 90th percentile and worst of each, and the goals:
push's median at most 1 s, and at least 10 times faster than polling's. Figures only: the exit
code is 0 whether or not a goal is met.

    .venv/bin/python bench/events.py [--moves 10]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as serve_bench

BIN = serve_bench.BIN
MODEL = serve_bench.MODEL
POLL_INTERVAL = 10.0  # promote serve's default without a webhook secret
PROBE_EVERY = 0.02  # seconds between two asks of one endpoint
GIVE_UP = 60.0  # seconds a move may take to reach an endpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promote-bench-events-") as tmp:
        return run(Path(tmp), args.moves)


def run(tmp: Path, moves: int) -> int:
    secret = secrets.token_urlsafe(32)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PROMOTE_"))}
    base.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    server_env = {**base, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                  "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                  "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": key, "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    with ExitStack() as stack:
        mlflow_url = stack.enter_context(serve_bench.server(tmp, server_env, "mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", "{port}",
            "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination",
            str(tmp / "artifacts"), "--workers", "1"]))
        env = {**base, "MLFLOW_TRACKING_URI": f"http://{mlflow_url}",
               "PROMOTE_LOG_URI": f"sqlite:///{tmp}/promote-log.db"}
        versions = serve_bench.train(tmp, env, ["random-forest", "random-forest"])
        one, two = versions.values() if len(set(versions.values())) == 2 else ("1", "2")
        serve_bench.set_alias(env, one)
        argv = [str(BIN / "promote"), "serve", MODEL, "--port", "{port}", "--log-uri", "none"]
        poll = stack.enter_context(serve_bench.server(tmp, env, "poll", argv))
        push_env = {**env, "PROMOTE_WEBHOOK_SECRET": secret}
        push = stack.enter_context(serve_bench.server(tmp, push_env, "push", argv))
        subprocess.run([str(BIN / "promote"), "webhooks", "ensure",
                        f"http://{push}/hooks/mlflow"], env=push_env, check=True,
                       capture_output=True, text=True)
        time.sleep(2)  # the server's webhook list is cached for 1 s (MLFLOW_WEBHOOK_CACHE_TTL)
        payload = serve_bench.make_payload(1)
        print(f"endpoints: POLL http://{poll} (default poll interval), PUSH http://{push} "
              "(webhook)\n\nmove  to   poll s  push s")
        times: dict[str, list[float]] = {"poll": [], "push": []}
        target = one
        rng = random.Random(0)
        for n in range(1, moves + 1):
            target = two if target == one else one
            # A move right after the last one converged would come just after a poll, the worst
            # phase for polling; a user's move comes at any moment of the interval.
            time.sleep(rng.uniform(0, POLL_INTERVAL))
            reached = move(env, target, {"poll": poll, "push": push}, payload)
            for name in times:
                times[name].append(reached[name])
            print(f"{n:>4}  v{target}  {reached['poll']:6.2f}  {reached['push']:6.2f}")
        report(times)
    return 0


def move(env: dict[str, str], version: str, endpoints: dict[str, str],
         payload: bytes) -> dict[str, float]:
    """Move Production to `version`; seconds until each endpoint first answers from it."""
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    reached: dict[str, float] = {}
    started = threading.Event()
    t0: list[float] = []

    def probe(name: str, url: str) -> None:
        started.wait()
        conn = http.client.HTTPConnection(url, timeout=10)
        while time.monotonic() - t0[0] < GIVE_UP:
            conn.request("POST", "/invocations", body=payload,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.getheader("X-Model-Version") == version:
                reached[name] = time.monotonic() - t0[0]
                break
            time.sleep(PROBE_EVERY)
        else:
            reached[name] = float("inf")
        conn.close()

    threads = [threading.Thread(target=probe, args=item) for item in endpoints.items()]
    for thread in threads:
        thread.start()
    client.set_registered_model_alias(MODEL, "Production", version)
    t0.append(time.monotonic())
    started.set()
    for thread in threads:
        thread.join()
    return reached


def report(times: dict[str, list[float]]) -> None:
    print()
    for name, values in times.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(f"{name}: median {statistics.median(values):.2f} s, p90 {p90:.2f} s, "
              f"worst {ordered[-1]:.2f} s over {len(values)} moves")
    push, poll = statistics.median(times["push"]), statistics.median(times["poll"])
    print(f"goal: push median <= 1 s: {'met' if push <= 1.0 else 'NOT met'} ({push:.2f} s)")
    ratio = poll / push if push > 0 else float("inf")
    print(f"goal: push >= 10x faster than polling (medians): "
          f"{'met' if ratio >= 10 else 'NOT met'} ({ratio:.1f}x)")


if __name__ == "__main__":
    sys.exit(main())
