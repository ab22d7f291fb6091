"""The rollout loop of the main job (`promote demo --rollout`, which `make demo` runs).

The shipped policy, given a `rollout:` block (`DEMO_ROLLOUT`: 5 %, then 50 %, judged against
Production on the same traffic): a candidate that passes the gate now goes on
`@Production-canary` and earns `@Production` one step at a time.

1. The candidate that is too good to be true (trained with `followup`, a column only known after
   the outcome: see promotion.demo_watch) passes offline and goes canary at 5 %. The endpoint
   gives it one request in twenty; live, the column holds its default and its predictions
   collapse onto a narrow band its reference profile never saw (prediction PSI about 8):
   `promote rollout` aborts. It never answered more than its 5 %, and `@Production` never moved.
2. A retrain of Production's own configuration (offline no better and no worse, which this
   policy accepts: the rollout, not the offline margin, decides) goes canary at 5 %, passes,
   goes to 50 %, passes, and `promote rollout` moves `@Production` to it.

Every step is the real one: the endpoint following the route, the log, the gate, the rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from promotion.demo_watch import LEAKED, leaky_data, live_rows, serving_endpoint
from promotion.engine.results import GateResult, RolloutResult
from promotion.gate import run_gate
from promotion.gate.rollout import run_rollout
from promotion.monitoring.logstore import LogStore
from promotion.policy.model import Candidate, Margin, Policy, Rollout, WatchRule
from promotion.report import rollout as rollout_report
from promotion.training import PreparedData, TrainConfig, TrainResult, train_one

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from promotion.demo_watch import Endpoint

REQUESTS = 500  # at 5 %, about 25 of them reach the canary
STEP_REQUESTS = 80  # at 50 %, about 40

# What the demo adds to the shipped policy, as it would read in YAML:
#   rollout:
#     steps: [5%, 50%]
#     step_after: 2s
#     min_requests: 15
#     rules:
#       error_rate:     {max: 1%}
#       latency_p95_ms: {max: 250}
#       prediction_psi: {max: 4}
# A step of the demo holds 25 to 40 of the canary's requests: too few to tell a live rmse 46 %
# worse from noise (its standard error at 30 rows is about 15 %), enough to see predictions
# collapse (PSI about 8, against 1 or less for an unchanged model at that size; a production
# rollout sizes min_requests for its quality rules: docs/rollout.md).
DEMO_ROLLOUT = Rollout(
    alias="Production-canary", steps=(0.05, 0.5), step_after_seconds=2.0, min_requests=15,
    rules=(WatchRule("error_rate", max=0.01), WatchRule("latency_p95_ms", max=250.0),
           WatchRule("prediction_psi", max=4.0)))


@dataclass(frozen=True)
class RolloutLoop:
    production: str  # the version served when the loop began
    leaky: TrainResult
    leaky_gate: GateResult
    aborted: RolloutResult
    retrain: TrainResult
    retrain_gate: GateResult
    steps: tuple[RolloutResult, ...]  # the retrain's: advanced, then promoted
    served_after: str


def rollout_policy(policy: Policy) -> Policy:
    """The policy with the demo's rollout, and non-inferiority offline (a retrain that is no
    worse may try; live traffic decides)."""
    metrics = tuple(replace(m, min_improvement=None,
                            max_regression=m.max_regression or Margin(0.02, relative=True))
                    if m.min_improvement is not None else m for m in policy.metrics)
    return replace(policy, metrics=metrics, rollout=DEMO_ROLLOUT)


def run_rollout_loop(client: MlflowClient, policy: Policy, leaky_config: TrainConfig,
                     production_config: TrainConfig, data: PreparedData, log_uri: str,
                     say: Callable[[str], None]) -> RolloutLoop:
    policy = rollout_policy(policy)
    store = LogStore(log_uri)
    store.migrate()
    rows, truth = live_rows(data), data.holdout.y_test
    with serving_endpoint(client, policy, store) as endpoint:
        production = endpoint.wait_for(None)
        say(f"Serving {policy.model}@{policy.alias} (version {production}) with a rollout: "
            f"steps 5% then 50%, judged against Production on the same traffic.")
        leaky = train_one(replace(leaky_config, description=f"{leaky_config.description} "
                                  f"With the '{LEAKED}' column."), leaky_data(data), client)
        leaky_gate = _start(client, policy, leaky, endpoint, say)
        _sent(endpoint.send(rows, truth, REQUESTS), say)
        aborted = _judged(run_rollout(client, policy, store), say)
        endpoint.wait_for_canary(None)
        retrain = train_one(replace(production_config, description=f"A retrain of "
                                    f"{production_config.name}."), data, client)
        retrain_gate = _start(client, policy, retrain, endpoint, say)
        steps = []
        for count, share in ((REQUESTS, 0.5), (STEP_REQUESTS, None)):
            _sent(endpoint.send(rows, truth, count), say)
            steps.append(_judged(_after_step(client, policy, store, endpoint), say))
            if share is not None:
                endpoint.wait_for_canary(retrain.version, share)
        served_after = endpoint.wait_for(retrain.version)
        say(f"\nThe endpoint serves version {served_after}: it earned @{policy.alias} on live "
            "traffic.")
    store.close()
    return RolloutLoop(production, leaky, leaky_gate, aborted, retrain, retrain_gate,
                       tuple(steps), served_after)


def _start(client: MlflowClient, policy: Policy, trained: TrainResult, endpoint: Endpoint,
           say: Callable[[str], None]) -> GateResult:
    gate = run_gate(client, policy, candidate=Candidate("version", trained.version))
    say(f"\nTrained version {trained.version} (offline rmse {trained.metrics['rmse']:.1f}): "
        f"gate says {gate.outcome.upper()}")
    if gate.outcome != "canary":
        raise RuntimeError(f"the demo expected version {trained.version} to start a rollout; "
                           f"the gate said {gate.outcome}: {gate.decision.summary}")
    endpoint.wait_for_canary(trained.version)
    share = gate.canary.state.share if gate.canary is not None else 0.0
    say(f"  the endpoint gives @{gate.moved_alias} (version {trained.version}) "
        f"{share * 100:g}% of the requests")
    return gate


def _after_step(client: MlflowClient, policy: Policy, store: LogStore,
                endpoint: Endpoint) -> RolloutResult:
    """Judge the step once it has lasted `step_after` (the demo's is seconds)."""
    result = run_rollout(client, policy, store)
    while result.action == "wait" and result.decision is not None and \
            result.decision.standing == "passing":
        time.sleep(max(0.1, result.decision.step_after_seconds -
                       result.decision.elapsed_seconds))
        result = run_rollout(client, policy, store)
    return result


def _sent(answered: dict[str, int], say: Callable[[str], None]) -> None:
    parts = ", ".join(f"{n} by version {v}" for v, n in sorted(answered.items()))
    say(f"  sent {sum(answered.values())} requests and their labels: answered {parts}")


def _judged(result: RolloutResult, say: Callable[[str], None]) -> RolloutResult:
    say("")
    say(rollout_report.table(result))
    return result
