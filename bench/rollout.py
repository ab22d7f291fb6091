"""Shadow mode's cost on Production: one `promote serve` endpoint, with and without a shadow canary.

One run, on this machine, loopback only, everything in a temporary directory:
  1. `promote train` trains the seed's random forest (train/candidates/random-forest.yaml) twice
     into a throwaway SQLite MLflow store: version A is Production, version B the candidate. The
     same config again by default, because a candidate is most often a retrain of the model it
     would replace and costs what it costs to score; `--candidate linear` mirrors to the linear
     baseline instead (a much cheaper candidate: a lower bound of the cost);
  2. ONE `promote serve` process serves Production (one uvicorn process, one scoring thread, its
     default inference log: a SQLite file in its working directory, the temporary one), polling
     the registry every 0.5 s;
  3. that endpoint is switched between two configurations through the registry, as a rollout
     does it, and alternating rounds (A B, B A, ...) measure each, so that the noise of a shared
     machine falls on both alike:
       no canary  no `Production-canary` alias, no rollout state on the model;
       shadow     `Production-canary` -> B and the rollout state `promotion.rollout.Production`
                  (mode shadow, one step of 100 %: every request is mirrored), written with
                  `registry.rollouts.write_state`;
     after each switch the endpoint's /health is polled until its `canary` shows the new
     configuration (absent; or shadow, version B, serving); before every round, until /version
     shows the inference log's queue empty and, before a no-canary round, the shadow queue too
     (the canary gone, what is left of it is dropped at once): no round pays for the log's or the
     shadow's backlog of another configuration. A shadow round that follows a shadow round
     starts with what the mirror still holds, as it would under continued load;
  4. each round is bench/serve.py's closed-loop load: CONCURRENCY keep-alive connections (stdlib
     http.client, one thread each, in this process) send 1-row `dataframe_split` requests for
     SECONDS (at most REQUESTS requests).
Printed: per configuration, requests/s (median of the rounds), p50 and p99 latency (over every
request of every round) and errors; the ratios shadow / no canary; whether the goals are met
(shadow's p50 at most 5 % and its p99 at most 10 % above no canary's); what the mirror did
during the shadow rounds (copies scored, failed, dropped; the most still queued when a round
ended) and the endpoint's own `canary_totals` from /version. Figures only: the exit code is 0
whether or not a goal is met.

    .venv/bin/python bench/rollout.py [--seconds 6] [--requests 5000] [--rounds 4]
                                      [--concurrency 8] [--candidate random-forest]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as serve_bench

from promotion.engine.rollout import ErrorGuard, RolloutState
from promotion.registry.client import connect, unless_missing
from promotion.registry.rollouts import write_state

BIN = serve_bench.BIN
MODEL = serve_bench.MODEL
PRIMARY = "random-forest"  # the seed's model
ALIAS, CANARY_ALIAS = "Production", "Production-canary"
POLL_INTERVAL = 0.5  # seconds: how often the endpoint reads the registry
SWITCH_TIMEOUT = 120.0  # seconds a switch (including loading the candidate) may take
QUIET_TIMEOUT = 120.0  # seconds the endpoint may take to empty its queues between rounds
GOAL_P50, GOAL_P99 = 0.05, 0.10  # shadow's latency over no canary's, at most
NONE, SHADOW = "no canary", "shadow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per configuration and round")
    parser.add_argument("--requests", type=int, default=5000,
                        help="per configuration and round, at most")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per configuration (even: each goes first as often)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--candidate", choices=sorted(serve_bench.CONFIGS), default=PRIMARY,
                        help="the shadow canary's config (default: the same as Production's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promote-bench-rollout-") as tmp:
        return run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> int:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONWARNINGS": "ignore"}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    primary, candidate = train(tmp, env, [PRIMARY, args.candidate])
    serve_bench.set_alias(env, primary)
    registry = Registry(env["MLFLOW_TRACKING_URI"], primary, candidate)
    payload = serve_bench.make_payload(1)
    measures = {NONE: serve_bench.Measure(), SHADOW: serve_bench.Measure()}
    mirrored = Mirrored()
    argv = [str(BIN / "promote"), "serve", MODEL, "--port", "{port}",
            "--poll-interval", str(POLL_INTERVAL)]
    with serve_bench.server(tmp, env, "promote", argv) as url:
        endpoint = Endpoint(url, primary, candidate)
        for config in (NONE, SHADOW):  # warm both up alike
            switch(registry, endpoint, config)
            serve_bench.load(url, payload, 2.0, 200, args.concurrency, serve_bench.Measure())
        for r in range(args.rounds):
            for config in (NONE, SHADOW) if r % 2 == 0 else (SHADOW, NONE):
                switch(registry, endpoint, config)
                endpoint.wait_quiet(shadow_too=config == NONE)
                before = endpoint.totals()
                serve_bench.load(url, payload, args.seconds, args.requests, args.concurrency,
                                 measures[config])
                if config == SHADOW:
                    mirrored.add(before, endpoint.totals())
        switch(registry, endpoint, NONE)
        endpoint.wait_quiet(shadow_too=True)
        totals = endpoint.totals()
    report(measures, mirrored, totals, args, primary, candidate)
    return 0


def train(tmp: Path, env: dict[str, str], labels: list[str]) -> list[str]:
    """Train the configs in order with the product's own trainer; their registered versions."""
    started = time.monotonic()
    out = subprocess.run([str(BIN / "promote"), "train",
                          *(str(serve_bench.REPO / serve_bench.CONFIGS[label])
                            for label in labels), "--json"],
                         cwd=tmp, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"promote train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    versions = [t["version"] for t in json.loads(out.stdout)["trained"]]
    print(f"trained {MODEL} version {versions[0]} ({labels[0]}, Production) and version "
          f"{versions[1]} ({labels[1]}, the shadow candidate) in "
          f"{time.monotonic() - started:.1f} s")
    return versions


class Registry:
    """The registry writes that put a shadow rollout of the candidate in force, or end it."""

    def __init__(self, tracking_uri: str, primary: str, candidate: str) -> None:
        self.client = connect(tracking_uri)
        self.primary, self.candidate = primary, candidate

    def shadow(self) -> None:
        """What a passing gate does for a policy with `rollout: {mode: shadow, steps: [100%]}`:
        the canary alias first, then the state (a new rollout each time: its step starts anew)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        state = RolloutState(alias=ALIAS, canary_alias=CANARY_ALIAS, version=self.candidate,
                             mode="shadow", steps=(1.0,), step=0, started_at=at,
                             step_started_at=at, production=self.primary,
                             guard=ErrorGuard(max=0.01))
        self.client.set_registered_model_alias(MODEL, CANARY_ALIAS, self.candidate)
        write_state(self.client, MODEL, ALIAS, state.to_json())

    def no_canary(self) -> None:
        """What an abort does: the canary alias removed, then the state."""
        unless_missing(partial(self.client.delete_registered_model_alias, MODEL, CANARY_ALIAS))
        write_state(self.client, MODEL, ALIAS, None)


class Endpoint:
    """What the running endpoint says about itself."""

    def __init__(self, url: str, primary: str, candidate: str) -> None:
        self.url, self.primary, self.candidate = url, primary, candidate
        self.config: str | None = None

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.url}{path}", timeout=5) as r:
            return json.loads(r.read())

    def shows(self, config: str) -> bool:
        health = self.get("/health")
        canary = health.get("canary")
        if health.get("version") != self.primary:
            return False
        if config == NONE:
            return canary is None
        return canary is not None and (canary["mode"], canary["version"], canary["status"]) == (
            "shadow", self.candidate, "serving")

    def totals(self) -> dict[str, int]:
        return self.get("/version")["canary_totals"]

    def wait_quiet(self, shadow_too: bool) -> None:
        """Until no record of a previous round waits for the inference log and, with
        `shadow_too`, no copy waits for the shadow canary."""
        def quiet() -> bool:
            version = self.get("/version")
            return version["log"]["queued"] == 0 and (
                not shadow_too or version["canary_totals"]["shadow_queued"] == 0)

        wait(quiet, QUIET_TIMEOUT, "the endpoint never emptied its shadow and log queues")


def switch(registry: Registry, endpoint: Endpoint, config: str) -> None:
    """Put `config` in force through the registry; return once the endpoint shows it."""
    if endpoint.config == config:
        return
    if config == SHADOW:
        registry.shadow()
    else:
        registry.no_canary()
    wait(lambda: endpoint.shows(config), SWITCH_TIMEOUT,
         f"the endpoint never showed the configuration {config!r}")
    endpoint.config = config


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    sys.exit(what)


class Mirrored:
    """What the mirror did with the copies of the measured shadow rounds."""

    def __init__(self) -> None:
        self.counts = {"scored": 0, "failed": 0, "dropped": 0, "queued": 0}

    def add(self, before: dict[str, int], after: dict[str, int]) -> None:
        for outcome in ("scored", "failed", "dropped"):
            key = f"shadow_{outcome}"
            self.counts[outcome] += after[key] - before[key]
        self.counts["queued"] = max(self.counts["queued"], after["shadow_queued"])


def report(measures: dict[str, serve_bench.Measure], mirrored: Mirrored, totals: dict[str, int],
           args: argparse.Namespace, primary: str, candidate: str) -> None:
    none, shadow = measures[NONE], measures[SHADOW]
    print(f"\nload: {args.concurrency} connections, {args.rounds} rounds of {args.seconds:g} s "
          f"(at most {args.requests} requests) per configuration, 1-row requests "
          f"(dataframe_split); {os.cpu_count()} cores")
    print(f"endpoint: one promote serve, Production = version {primary} ({PRIMARY}); shadow "
          f"canary = version {candidate} ({args.candidate}), 100 % of requests mirrored")
    print(f"{'configuration':14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} "
          f"{'errors':>7}")
    for name, m in measures.items():
        print(f"{name:14} {statistics.median(m.rates):8.1f} {m.p(0.50):8.2f} {m.p(0.99):8.2f} "
              f"{len(m.latencies):9d} {m.errors:7d}")
    throughput = statistics.median(shadow.rates) / statistics.median(none.rates)
    p50, p99 = shadow.p(0.5) / none.p(0.5), shadow.p(0.99) / none.p(0.99)
    print(f"\nshadow / no canary: throughput x{throughput:.2f} ({throughput - 1:+.1%}), "
          f"p50 x{p50:.2f} ({p50 - 1:+.1%}), p99 x{p99:.2f} ({p99 - 1:+.1%})")
    for name, ratio, goal in (("p50", p50, GOAL_P50), ("p99", p99, GOAL_P99)):
        print(f"goal: shadow's {name} at most {goal:+.0%} over no canary's: "
              f"{'met' if ratio - 1 <= goal else 'NOT met'} ({ratio - 1:+.1%})")
    c = mirrored.counts
    copies = len(shadow.latencies) - shadow.errors
    print(f"\nmirror during the shadow rounds: {copies} requests answered and mirrored; the "
          f"mirror scored {c['scored']} copies, failed {c['failed']}, dropped {c['dropped']} "
          f"(queue full); at most {c['queued']} still queued when a round ended")
    print(f"endpoint /version canary_totals (since start, warm-up and drains included): "
          f"scored {totals['shadow_scored']}, failed {totals['shadow_failed']}, dropped "
          f"{totals['shadow_dropped']}, queued {totals['shadow_queued']}")


if __name__ == "__main__":
    if re.search(r"(^|\s)-h|--help", " ".join(sys.argv[1:])) is None:
        print(__doc__.splitlines()[0])
    sys.exit(main())
