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

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion import lineage
from promotion.errors import ExitCode, InvalidInput, redact
from promotion.policy import Candidate, Policy

if TYPE_CHECKING:
    from promotion.gate import GateResult
    from promotion.training import PreparedData, TrainConfig, TrainResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_CANDIDATES = "train/candidates"
DEFAULT_POLICIES = "policies"
CONFIG_SUFFIXES = (".yaml", ".yml")
UI_PORT = 5000


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float


@dataclass(frozen=True)
class Prediction:
    row: int  # the row of the dataset (its index), so anyone can look it up
    predicted: float
    actual: float


@dataclass(frozen=True)
class GateRow:
    """One gated candidate, as the decision table shows it."""

    config: str
    version: str
    policy: str
    outcome: str
    compared_to: str | None
    reason: str
    same_as_production: bool  # same config and data fingerprints as the version it was compared to


@dataclass(frozen=True)
class DemoResult:
    tracking_uri: str  # redacted
    model: str
    alias: str
    trained: tuple[TrainResult, ...]
    gates: tuple[GateRow, ...]
    production_before: str | None
    production_after: str | None
    predictions: tuple[Prediction, ...]
    served_rmse: float | None  # of the loaded alias on the whole holdout
    phases: tuple[Phase, ...] = field(default_factory=tuple)

    @property
    def return_code(self) -> int:
        # The job ran: whatever each gate decided is a result, not a failure of the demo.
        return int(ExitCode.OK)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri, "model": self.model, "alias": self.alias,
            "trained": [t.to_dict() for t in self.trained],
            "gates": [asdict(g) for g in self.gates],
            "production_before": self.production_before,
            "production_after": self.production_after,
            "predictions": [asdict(p) for p in self.predictions],
            "served_rmse": self.served_rmse,
            "phases": [asdict(p) for p in self.phases], "seconds": self.seconds,
        }


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
    """Every policy in `directory` that gates `model` (each file fully validated)."""
    from promotion.policies import load_policy

    path = Path(directory)
    if not path.is_dir():
        raise InvalidInput(f"{directory}: no such directory of policies (pass --policies DIR)")
    policies = [p for p in (load_policy(f) for f in _yaml_files(path)) if p.model == model]
    if not policies:
        raise InvalidInput(f"{directory}: no policy gates model {model!r}: nothing could be "
                           "promoted")
    return policies


def _yaml_files(directory: Path) -> list[Path]:
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


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO chatter (schema migrations, "waiting for model version") hides the story."""
    import mlflow  # noqa: F401 - configures its loggers on import: set the level after that

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_demo(*, tracking_uri: str | None = None, candidates: str | Path = DEFAULT_CANDIDATES,
             policies: str | Path = DEFAULT_POLICIES, model_name: str | None = None,
             rows: int = 5, details: bool = False, say: Callable[[str], None] = print
             ) -> DemoResult:
    """Train every candidate config, gate each new version, load the alias and predict.

    `details` also prints each gate's full report (what `promote gate` prints).
    """
    uri = tracking_uri or DEFAULT_TRACKING_URI
    clock = _Clock()
    with clock.phase("validate configs and policies"):
        from promotion.clientlib import apply_retry_defaults
        from promotion.training import load_configs

        apply_retry_defaults()  # before anything imports mlflow: telemetry off, no run links
        configs = load_configs(candidate_paths(candidates))
        declared = _one_model(configs)
        _one_holdout(configs)
        gate_policies = policies_for(declared, policies)
        model = model_name or declared
        if model_name:
            configs = tuple(_renamed(c, model_name) for c in configs)
            gate_policies = [replace(p, model=model_name) for p in gate_policies]
    alias = gate_policies[0].alias
    say(f"Tracking: {redact(uri)}   model: {model}   policies: "
        f"{', '.join(p.path for p in gate_policies)}")
    if uri == DEFAULT_TRACKING_URI and not Path("mlflow.db").exists():
        say("First run here: creating the MLflow store mlflow.db (a few seconds).")

    with ExitStack() as stack:
        with clock.phase("start mlflow, load data"):
            stack.enter_context(_quiet_mlflow())
            client, data, before = _start(uri, configs[0], model, alias)
        say(f"@{alias} before: {_v(before)}\n")
        trained = _train_all(configs, data, client, clock, say)
        gates = _gate_all(trained, gate_policies, uri, clock, say, details)
        say("")
        for line in [*decision_table(gates, trained), *explain(gates, gate_policies)]:
            say(line)
        after, predictions, served_rmse = _serve_step(client, model, alias, data, rows, clock,
                                                      say)

    demo = DemoResult(tracking_uri=redact(uri), model=model, alias=alias,
                      trained=tuple(trained), gates=gates, production_before=before,
                      production_after=after, predictions=predictions,
                      served_rmse=served_rmse, phases=tuple(clock.phases))
    say("")
    for line in ui_hint(uri, model):
        say(line)
    say(f"Time: {demo.seconds:.1f} s  (" + ", ".join(
        f"{name} {secs:.1f}" for name, secs in summarize_phases(demo.phases)) + ")")
    return demo


def _renamed(config: TrainConfig, model: str) -> TrainConfig:
    experiment = model if config.experiment == config.declared_model else config.experiment
    return replace(config, model=model, experiment=experiment)


def _train_all(configs: Sequence[TrainConfig], data: PreparedData, client: Any, clock: _Clock,
               say: Callable[[str], None]) -> tuple[TrainResult, ...]:
    from promotion.training import train_one

    trained = []
    for config in configs:
        with clock.phase(f"train {config.name}"):
            result = train_one(config, data, client)
        trained.append(result)
        say(f"trained  {config.name:<20} -> version {result.version:<4} "
            f"{_metrics(result.metrics)}   {clock.last():.1f} s")
    return tuple(trained)


def _gate_all(trained: Sequence[TrainResult], policies: Sequence[Policy], uri: str,
              clock: _Clock, say: Callable[[str], None], details: bool) -> tuple[GateRow, ...]:
    """Gate each new version with each policy, in training order, as `promote gate` does."""
    from promotion.gate import run_gate
    from promotion.report import table

    rows = []
    for result in trained:
        for policy in policies:
            with clock.phase(f"gate v{result.version}"):
                gate = run_gate(policy, tracking_uri=uri,
                                candidate=Candidate("version", result.version))
            rows.append(_row(result, policy, gate))
            say(f"gated    version {result.version:<4} -> {gate.outcome:<12} "
                f"(vs {_v(gate.production_version)})   {clock.last():.1f} s")
            if details:
                say(f"\n{table(gate)}\n")
    return tuple(rows)


def _start(uri: str, config: TrainConfig, model: str, alias: str) -> tuple[Any, PreparedData,
                                                                          str | None]:
    from promotion.clientlib import connect
    from promotion.training import prepare_data

    client = connect(uri)
    data = prepare_data(config)
    return client, data, _alias_version(client, model, alias)


def _alias_version(client: Any, model: str, alias: str) -> str | None:
    from promotion.registry import alias_version

    try:
        return alias_version(client, model, alias)
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
                   reason=_reason(gate), same_as_production=same)


def _reason(gate: GateResult) -> str:
    """Why, in one line: the first failed rule, or what a pass rested on."""
    d = gate.decision
    if d.outcome != "promoted":
        return d.summary
    if d.production_version is None:
        return f"first version for @{d.alias}: absolute bounds and required tags passed"
    gains = [f"{r.metric} {_num(r.candidate)} vs {_num(r.production)}" for r in d.rules
             if r.kind == "min_improvement" and r.passed]
    return f"all {len(d.rules)} checks passed" + (f" ({'; '.join(gains)})" if gains else "")


def _serve_step(client: Any, model: str, alias: str, data: PreparedData, rows: int,
                clock: _Clock, say: Callable[[str], None]
                ) -> tuple[str | None, tuple[Prediction, ...], float | None]:
    """Where the alias points now, and what the model behind it predicts."""
    after = _alias_version(client, model, alias)
    if after is None:
        say(f"\nNo version holds @{alias}: there is nothing to serve yet.")
        return None, (), None
    with clock.phase("load + predict"):
        predictions, served_rmse = _serve(model, alias, data, rows)
    say("")
    for line in prediction_table(model, alias, after, predictions, served_rmse,
                                 _logged_rmse(client, model, after), clock.last()):
        say(line)
    return after, predictions, served_rmse


def _logged_rmse(client: Any, model: str, version: str) -> float | None:
    from promotion.clientlib import registry_errors

    with registry_errors(f"reading version {version} of {model!r}"):
        run_id = client.get_model_version(model, version).run_id
        rmse = client.get_run(run_id).data.metrics.get("rmse") if run_id else None
    return float(rmse) if rmse is not None else None


def _serve(model: str, alias: str, data: PreparedData, rows: int
           ) -> tuple[tuple[Prediction, ...], float]:
    """Load the alias exactly as a serving endpoint does, and predict the holdout."""
    import mlflow

    from promotion.clientlib import registry_errors
    from promotion.training import holdout_metrics

    with registry_errors(f"loading models:/{model}@{alias}"):
        served = mlflow.pyfunc.load_model(f"models:/{model}@{alias}")
    x, y = data.holdout.x_test, data.holdout.y_test
    predicted = served.predict(x)
    shown = tuple(Prediction(int(i), float(p), float(a))
                  for i, p, a in zip(x.index[:rows], predicted[:rows], y.iloc[:rows], strict=True))
    return shown, holdout_metrics(y, predicted)["rmse"]


# --------------------------------------------------------------------------------------------
# Rendering (plain text lines; the CLI prints them)


def _v(version: str | None) -> str:
    return f"version {version}" if version else "no version"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _metrics(metrics: Any) -> str:
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in ("rmse", "mae", "r2") if k in metrics)


def _table(header: Sequence[str], body: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in body)]


def decision_table(rows: Sequence[GateRow], trained: Sequence[TrainResult]) -> list[str]:
    metrics = {t.version: t.metrics for t in trained}
    body = []
    for r in rows:
        m = metrics.get(r.version, {})
        body.append([Path(r.config).name, r.version, *(f"{m[k]:.3f}" if k in m else "-"
                                                       for k in ("rmse", "mae", "r2")),
                     r.compared_to or "-", r.outcome.upper(), r.reason])
    return ["Decisions", *_table(["candidate", "version", "rmse", "mae", "r2", "vs", "decision",
                                  "reason"], body, right={1, 2, 3, 4, 5})]


def explain(rows: Sequence[GateRow], policies: Sequence[Policy]) -> list[str]:
    """Sentences that say what happened, true by construction (derived from the decisions)."""
    lines = []
    required = "; ".join(f"{r.name} better by {r.min_improvement}" for p in policies
                         for r in p.metrics if r.min_improvement is not None)
    for r in rows:
        if r.same_as_production and r.outcome != "promoted":
            lines.append(
                f"Version {r.version} was retrained from the same config and data as Production "
                f"version {r.compared_to} (same config_sha256 and data_sha256), so it scores the "
                f"same: an identical model is not an improvement"
                + (f" (the policy asks for {required})" if required else "") + ", so "
                + ("it was rejected." if r.outcome == "rejected" else f"it is {r.outcome}."))
    promoted = [r.version for r in rows if r.outcome == "promoted"]
    if promoted:
        lines.append(f"Promoted in this run: version{'s' if len(promoted) > 1 else ''} "
                     f"{', '.join(promoted)}.")
    else:
        lines.append("Nothing was promoted in this run: Production is unchanged.")
    return ["", *lines] if lines else lines


def prediction_table(model: str, alias: str, version: str, predictions: Sequence[Prediction],
                     served_rmse: float | None, logged_rmse: float | None,
                     seconds: float) -> list[str]:
    lines = [f"Predictions from models:/{model}@{alias} (version {version}), holdout rows, "
             f"loaded in {seconds:.1f} s"]
    body = [[str(p.row), f"{p.predicted:.1f}", f"{p.actual:.1f}", f"{p.predicted - p.actual:+.1f}"]
            for p in predictions]
    lines += _table(["row", "predicted", "actual", "error"], body, right={0, 1, 2, 3})
    if served_rmse is not None:
        note = f" (logged at training: {logged_rmse:.3f})" if logged_rmse is not None else ""
        lines.append(f"rmse of the served model on all holdout rows: {served_rmse:.3f}{note}")
    return lines


def ui_hint(uri: str, model: str) -> list[str]:
    if uri.startswith("sqlite:"):
        return ["Look at it in the MLflow UI (runs, the model registry, the decision records):",
                f"  mlflow ui --backend-store-uri {uri} --port {UI_PORT}",
                f"  then open http://127.0.0.1:{UI_PORT} (run it from this directory; artifacts "
                "are in ./mlruns)"]
    if uri.startswith(("http://", "https://")):
        return [f"Look at it in the MLflow UI: {redact(uri)} (model {model!r}, experiments "
                f"{model!r} and 'promotion-decisions')"]
    return [f"Look at it in the MLflow UI: mlflow ui --backend-store-uri {redact(uri)}"]


def summarize_phases(phases: Sequence[Phase]) -> list[tuple[str, float]]:
    """Phases grouped by kind (all trainings, all gates), in order of first appearance."""
    totals: dict[str, float] = {}
    for p in phases:
        kind = p.name.split(" ")[0] if p.name.startswith(("train ", "gate ")) else p.name
        totals[kind] = totals.get(kind, 0.0) + p.seconds
    return list(totals.items())
