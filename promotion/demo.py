"""The main job (`make demo`): train every candidate, gate each, serve predictions from Production.

It runs on MLflow's embedded default unless told otherwise: a SQLite store `mlflow.db` in the
current directory (artifacts in `./mlruns`), no server. Every step is the real one: candidates are
trained and registered as `promote train` does, each new version is gated as `promote gate` does
(decision records included), and the predictions come from `models:/<name>@Production` as a
serving endpoint would load it. Running it again is meaningful: retrained candidates are identical
to what is already registered, and the policy says whether that is enough (it is not: a candidate
must beat Production).

Progress is reported through `say`, so the CLI prints as it goes; the returned DemoResult holds
everything (also as JSON) including where the time went.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from promotion import registry
from promotion.demo_rollout import RolloutLoop, run_rollout_loop
from promotion.demo_watch import WatchLoop, run_watch_loop
from promotion.engine.results import DemoResult, GateResult, GateRow, Phase, Prediction
from promotion.errors import InvalidInput, redact
from promotion.gate import run_gate
from promotion.policy.files import policy_files
from promotion.policy.load import load_policy
from promotion.policy.model import Candidate, Policy
from promotion.registry.client import quiet_mlflow_logs, registry_errors
from promotion.report import demo as render
from promotion.report.decision import table
from promotion.serve.follower import version_loader
from promotion.training import (
    PreparedData,
    TrainConfig,
    TrainResult,
    holdout_metrics,
    lineage,
    load_configs,
    prepare_data,
    train_one,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_CANDIDATES = "train/candidates"
DEFAULT_POLICIES = "policies"
CONFIG_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------------------------
# Inputs: candidates and the policies that gate them, all validated before anything runs


def candidate_paths(directory: str | Path) -> list[Path]:
    path = Path(directory)
    if not path.is_dir():
        raise InvalidInput(f"{directory}: no such directory of candidate configs (run from the "
                           "repository root, or pass --candidates DIR)")
    found = _yaml_files(path)
    if not found:
        raise InvalidInput(f"{directory}: no candidate configs (*.yaml) in it")
    return found


def policies_for(model: str, directory: str | Path) -> list[Policy]:
    """Every policy in `directory` that gates `model` (each file fully validated).

    The files are the ones `promote policy validate DIR` checks (promotion.policy.files).
    """
    if not Path(directory).is_dir():
        raise InvalidInput(f"{directory}: no such directory of policies (pass --policies DIR)")
    policies = [p for p in (load_policy(f) for f in policy_files([directory]))
                if p.model == model]
    if not policies:
        raise InvalidInput(f"{directory}: no policy gates model {model!r}: nothing could be "
                           "promoted")
    return policies


def _yaml_files(directory: Path) -> list[Path]:
    """The candidate configs in `directory` (policies are found by promotion.policy.files)."""
    return sorted(p for p in directory.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())


def _one_model(configs: Sequence[TrainConfig]) -> str:
    models = sorted({c.declared_model for c in configs})
    if len(models) != 1:
        raise InvalidInput(f"the demo trains one model; the candidate configs name {models}")
    return models[0]


def _one_holdout(configs: Sequence[TrainConfig]) -> None:
    """Gating compares logged holdout metrics: they must come from the same rows."""
    keys = {c.holdout_key for c in configs}
    if len(keys) != 1:
        described = ", ".join(f"{c.path} ({c.data}, test_size {c.test_size}, seed {c.seed})"
                              for c in configs)
        raise InvalidInput("candidates must share data and split to be compared on the same "
                           f"holdout: {described}")


# --------------------------------------------------------------------------------------------
# The job


class _Clock:
    def __init__(self) -> None:
        self.phases: list[Phase] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append(Phase(name, round(time.perf_counter() - start, 3)))

    def last(self) -> float:
        return self.phases[-1].seconds


def run_demo(client: MlflowClient, *, candidates: str | Path = DEFAULT_CANDIDATES,
             policies: str | Path = DEFAULT_POLICIES, model_name: str | None = None,
             rows: int = 5, details: bool = False, say: Callable[[str], None] = print,
             watch_log: str | None = None, rollout_log: str | None = None) -> DemoResult:
    """Train every candidate config, gate each new version, load the alias and predict.

    `details` also prints each gate's full report (what `promote gate` prints). With
    `watch_log` (an inference log URI), the monitoring loop follows (promotion.demo_watch);
    with `rollout_log`, the rollout loop (promotion.demo_rollout).
    """
    uri = str(client.tracking_uri)
    clock = _Clock()
    with clock.phase("validate configs and policies"):
        configs = load_configs(candidate_paths(candidates))
        declared = _one_model(configs)
        _one_holdout(configs)
        gate_policies = policies_for(declared, policies)
        model = model_name or declared
        if model_name:
            configs = tuple(_renamed(c, model_name) for c in configs)
            gate_policies = [replace(p, model=model_name) for p in gate_policies]
    alias = gate_policies[0].alias
    for line in render.opening(uri, model, gate_policies,
                               first_run=uri == DEFAULT_TRACKING_URI
                               and not Path("mlflow.db").exists()):
        say(line)

    with ExitStack() as stack:
        with clock.phase("start mlflow, load data"):
            stack.enter_context(quiet_mlflow_logs())
            data = prepare_data(configs[0])
            before = _alias_version(client, model, alias)
        say(f"@{alias} before: {render.version_or_none(before)}\n")
        trained = _train_all(configs, data, client, clock, say)
        gates = _gate_all(trained, gate_policies, client, clock, say, details)
        say("")
        for line in [*render.decision_table(gates, trained),
                     *render.explain(gates, gate_policies)]:
            say(line)
        after, predictions, served_rmse = _serve_step(client, model, alias, data, rows, clock,
                                                      say)
        loop = _watch_step(client, gate_policies[0], configs, data, watch_log, clock, say) \
            if watch_log and after is not None else None
        rolled = _rollout_step(client, gate_policies[0], configs, trained, data, rollout_log,
                               clock, say) if rollout_log and after is not None else None

    demo = DemoResult(tracking_uri=redact(uri), model=model, alias=alias,
                      trained=tuple(trained), gates=gates, production_before=before,
                      production_after=after, predictions=predictions,
                      served_rmse=served_rmse, phases=tuple(clock.phases), watch_loop=loop,
                      rollout_loop=rolled)
    for line in render.closing(demo, uri):
        say(line)
    return demo


def _watch_step(client: MlflowClient, policy: Policy, configs: Sequence[TrainConfig],
                data: PreparedData, log_uri: str, clock: _Clock,
                say: Callable[[str], None]) -> WatchLoop | None:
    """Serve, promote a candidate that is bad live, and let the watch roll it back."""
    if policy.watch is None:
        say(f"\n{policy.path} has no watch: block: no monitoring loop to show.")
        return None
    say("\nMonitoring: serve Production, promote a candidate that is bad on live data, watch.")
    config = next((c for c in configs if c.estimator == "linear"), configs[0])
    with clock.phase("monitoring loop"):
        return run_watch_loop(client, policy, config, data, log_uri, say)


def _rollout_step(client: MlflowClient, policy: Policy, configs: Sequence[TrainConfig],
                  trained: Sequence[TrainResult], data: PreparedData, log_uri: str,
                  clock: _Clock, say: Callable[[str], None]) -> RolloutLoop:
    """Serve with a rollout: a bad candidate aborted at 5 %, a good one promoted step by
    step."""
    say("\nRollout: a candidate earns @Production on a slice of live traffic first.")
    production = _alias_version(client, policy.model, policy.alias)
    paths = {t.version: t.config for t in trained}
    production_config = next((c for c in configs if c.path == paths.get(production or "")),
                             configs[0])
    leaky_config = next((c for c in configs if c.estimator == "linear"), configs[0])
    with clock.phase("rollout loop"):
        return run_rollout_loop(client, policy, leaky_config, production_config, data, log_uri,
                                say)


def _renamed(config: TrainConfig, model: str) -> TrainConfig:
    experiment = model if config.experiment == config.declared_model else config.experiment
    return replace(config, model=model, experiment=experiment)


def _train_all(configs: Sequence[TrainConfig], data: PreparedData, client: MlflowClient,
               clock: _Clock, say: Callable[[str], None]) -> tuple[TrainResult, ...]:
    trained = []
    for config in configs:
        with clock.phase(f"train {config.name}"):
            result = train_one(config, data, client)
        trained.append(result)
        say(render.trained_line(config.name, result, clock.last()))
    return tuple(trained)


def _gate_all(trained: Sequence[TrainResult], policies: Sequence[Policy], client: MlflowClient,
              clock: _Clock, say: Callable[[str], None], details: bool) -> tuple[GateRow, ...]:
    """Gate each new version with each policy, in training order, as `promote gate` does."""
    rows = []
    for result in trained:
        for policy in policies:
            with clock.phase(f"gate v{result.version}"):
                gate = run_gate(client, policy, candidate=Candidate("version", result.version))
            rows.append(_row(result, policy, gate))
            say(render.gated_line(gate, clock.last()))
            if details:
                say(f"\n{table(gate)}\n")
    return tuple(rows)


def _alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return registry.alias_version(client, model, alias)
    except InvalidInput:  # the model does not exist yet: nothing is behind the alias
        return None


def _row(trained: TrainResult, policy: Policy, gate: GateResult) -> GateRow:
    prod = gate.production
    same = prod is not None and prod.version != gate.candidate_version and all(
        gate.candidate.tags.get(k) is not None and
        gate.candidate.tags.get(k) == prod.tags.get(k)
        for k in (lineage.CONFIG_SHA256, lineage.DATA_SHA256))
    return GateRow(config=trained.config, version=gate.candidate_version, policy=policy.path,
                   outcome=gate.outcome, compared_to=gate.production_version,
                   reason=render.gate_reason(gate), same_as_production=same)


def _serve_step(client: MlflowClient, model: str, alias: str, data: PreparedData, rows: int,
                clock: _Clock, say: Callable[[str], None]
                ) -> tuple[str | None, tuple[Prediction, ...], float | None]:
    """Where the alias points now, and what the model behind it predicts."""
    after = _alias_version(client, model, alias)
    if after is None:
        say(f"\nNo version holds @{alias}: there is nothing to serve yet.")
        return None, (), None
    with clock.phase("load + predict"):
        predictions, served_rmse = _serve(client, model, after, data, rows)
    say("")
    for line in render.prediction_table(model, alias, after, predictions, served_rmse,
                                        _logged_rmse(client, model, after), clock.last()):
        say(line)
    return after, predictions, served_rmse


def _logged_rmse(client: MlflowClient, model: str, version: str) -> float | None:
    run_id = registry.get_version(client, model, version).run_id
    metrics = registry.run_metrics(client, run_id) if run_id else None
    rmse = (metrics or {}).get("rmse")
    return float(rmse) if rmse is not None else None


def _serve(client: MlflowClient, model: str, version: str, data: PreparedData, rows: int
           ) -> tuple[tuple[Prediction, ...], float]:
    """Load the version behind the alias exactly as `promote serve` does, and predict."""
    scratch = tempfile.mkdtemp(prefix="promote-demo-")
    try:
        with registry_errors(f"loading version {version} of model {model!r}"):
            served = version_loader(client, model, scratch)(version)
        x, y = data.holdout.x_test, data.holdout.y_test
        predicted = served.model.predict(x)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shown = tuple(Prediction(int(i), float(p), float(a))
                  for i, p, a in zip(x.index[:rows], predicted[:rows], y.iloc[:rows], strict=True))
    return shown, holdout_metrics(y, predicted)["rmse"]
