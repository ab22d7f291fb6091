"""The monitoring loop of the main job (`promote demo --watch`, which `make demo` runs).

After the gates, the job serves @Production over real HTTP with the inference log on, sends it
traffic and labels, then registers a candidate that is too good to be true: it was trained with a
column that is only known after the outcome (`followup`, the target plus noise), so its offline
metrics beat Production by far and the gate promotes it. Live, the column holds the upstream
system's default (the outcome is not known yet), so its predictions collapse; the endpoint
follows the alias to it, the same traffic arrives, and `promote watch` finds the breach
(drift on `followup`, drift of the predictions, live rmse far from its offline value) inside the
bake period and moves @Production back through the guarded rollback. The endpoint follows the
alias back. Every step is the real one: the endpoint, the log database, the gate, the watch.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from promotion.engine.results import GateResult, WatchResult
from promotion.gate import run_gate
from promotion.gate.watch import run_watch
from promotion.monitoring.logstore import LogStore, LogWriter
from promotion.policy.model import Candidate, Policy
from promotion.report import watch as watch_report
from promotion.serve.app import create_app
from promotion.serve.follower import AliasFollower, alias_resolver, scratch_dir, version_loader
from promotion.serve.server import listen
from promotion.training import PreparedData, TrainConfig, TrainResult, train_one
from promotion.training.data import Holdout

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

LEAKED = "followup"  # the column that is only known after the outcome
REQUESTS = 150  # per phase: above the shipped policy's min_requests
SWAP_TIMEOUT = 120.0  # seconds to wait for the endpoint to follow the alias


@dataclass(frozen=True)
class WatchLoop:
    production: str  # the version served first
    leaky: TrainResult  # the candidate trained with the leaked column
    gate: GateResult
    watch: WatchResult
    served_after: str | None  # what the endpoint serves once the watch is done


def leaky_data(data: PreparedData, seed: int = 0) -> PreparedData:
    """The same split with `followup` = target + noise (what a leak looks like offline)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h = data.holdout

    def leak(x: pd.DataFrame, y: pd.Series) -> pd.DataFrame:
        return x.assign(**{LEAKED: y.to_numpy() + rng.normal(0.0, 5.0, len(y))})

    holdout = Holdout(x_train=leak(h.x_train, h.y_train), x_test=leak(h.x_test, h.y_test),
                      y_train=h.y_train, y_test=h.y_test)
    return replace(data, holdout=holdout)


def live_rows(data: PreparedData) -> pd.DataFrame:
    """What the endpoint receives: the holdout's inputs, `followup` at its default (its
    training mean), since the outcome is not known when the prediction is asked for."""
    h = data.holdout
    return h.x_test.assign(**{LEAKED: float(h.y_train.mean())})


def run_watch_loop(client: MlflowClient, policy: Policy, config: TrainConfig,
                   data: PreparedData, log_uri: str, say: Callable[[str], None]) -> WatchLoop:
    """Serve, send traffic, promote the leaky candidate, watch it, roll it back."""
    store = LogStore(log_uri)
    store.migrate()
    rows, truth = live_rows(data), data.holdout.y_test
    with serving_endpoint(client, policy, store) as endpoint:
        production = endpoint.wait_for(None)
        say(f"Serving {policy.model}@{policy.alias} (version {production}) on {endpoint.url} "
            f"with the inference log at {store.where}.")
        endpoint.send(rows, truth, REQUESTS)
        say(f"  sent {REQUESTS} requests and their labels to version {production}")
        leaky = train_one(replace(config, description=f"{config.description} With the "
                                  f"'{LEAKED}' column."), leaky_data(data), client)
        gate = run_gate(client, policy, candidate=Candidate("version", leaky.version))
        say(f"Trained version {leaky.version} with '{LEAKED}' (offline rmse "
            f"{leaky.metrics['rmse']:.1f}): gate says {gate.outcome.upper()}")
        served = endpoint.wait_for(leaky.version if gate.applied else production)
        endpoint.send(rows, truth, REQUESTS)
        say(f"  the endpoint follows @{policy.alias} to version {served}; sent {REQUESTS} "
            "requests and their labels")
        result = run_watch(client, policy, store)
        say("")
        say(watch_report.table(result))
        after = result.rollback.restored_version if result.rollback else served
        served_after = endpoint.wait_for(after)
        say(f"\nThe endpoint serves version {served_after} again.")
    store.close()
    return WatchLoop(production, leaky, gate, result, served_after)


class Endpoint:
    def __init__(self, url: str, follower: AliasFollower, writer: LogWriter) -> None:
        import requests

        self.url, self.follower, self.writer = url, follower, writer
        self.http = requests.Session()
        self.sent = 0  # scoring requests sent, each of which the log must hold

    def wait_for(self, version: str | None) -> str:
        """Wait until the endpoint serves `version` (None: any), then name what it serves."""
        deadline = time.monotonic() + SWAP_TIMEOUT
        while time.monotonic() < deadline:
            served = self.follower.state.served
            if served is not None and version in (None, served.version):
                return served.version
            time.sleep(0.05)
        raise RuntimeError(f"the endpoint did not serve version {version} within "
                           f"{SWAP_TIMEOUT:g} s")

    def wait_for_canary(self, version: str | None, share: float | None = None) -> None:
        """Wait until the endpoint gives `version` canary traffic at `share` (None: any), or,
        with `version` None, until it has no canary."""
        deadline = time.monotonic() + SWAP_TIMEOUT
        while time.monotonic() < deadline:
            canary = self.follower.state.canary
            if version is None and canary is None:
                return
            if canary is not None and canary.served is not None and \
                    canary.served.version == version and share in (None, canary.route.share):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the endpoint did not take canary version {version} within "
                           f"{SWAP_TIMEOUT:g} s")

    def send(self, rows: pd.DataFrame, truth: pd.Series, count: int) -> dict[str, int]:
        """`count` one-row requests, then their labels in one POST /feedback; how many each
        version answered."""
        labels: list[dict[str, object]] = []
        answered: dict[str, int] = {}
        for i in range(count):
            k = i % len(rows)
            row = rows.iloc[[k]]
            answer = self.http.post(f"{self.url}/invocations", json={
                "dataframe_split": {"columns": list(row.columns),
                                    "data": row.to_numpy().tolist()}}, timeout=30)
            answer.raise_for_status()
            version = answer.headers["X-Model-Version"]
            answered[version] = answered.get(version, 0) + 1
            labels.append({"request_id": answer.headers["X-Request-Id"], "row": 0,
                           "label": float(truth.iloc[k])})
        self.sent += count
        self.logged()
        payload: dict[str, Any] = {"labels": labels}
        self.http.post(f"{self.url}/feedback", json=payload,
                       timeout=60).raise_for_status()
        return answered

    def logged(self) -> None:
        """Wait until the log holds every request sent (feedback joins logged rows), and the
        canary attempts and shadow copies written about them."""
        deadline = time.monotonic() + SWAP_TIMEOUT
        while time.monotonic() < deadline:
            stats = self.writer.stats()
            if stats.written + stats.dropped >= self.sent and not stats.queued:
                if stats.dropped:
                    raise RuntimeError(f"the inference log dropped {stats.dropped} records: "
                                       f"{stats.last_error}")
                return
            time.sleep(0.02)
        raise RuntimeError("the inference log did not catch up")


@contextmanager
def serving_endpoint(client: MlflowClient, policy: Policy, store: LogStore) -> Iterator[Endpoint]:
    """`promote serve` in a thread of this process, on a free loopback port."""
    import uvicorn

    scratch = scratch_dir()
    follower = AliasFollower(policy.model, policy.alias, 0.2,
                             resolve=alias_resolver(client, policy.model, policy.alias),
                             load=version_loader(client, policy.model, scratch))
    writer = LogWriter(store, flush_interval=0.02)
    app = create_app(follower, log=writer)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    # The live rows carry `followup`, which the versions without it do not take: MLflow warns
    # about the extra column on every request, which would bury the story.
    extra_inputs = logging.getLogger("mlflow.models.utils")
    level = extra_inputs.level
    extra_inputs.setLevel(logging.ERROR)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield Endpoint(url, follower, writer)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        extra_inputs.setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)

