"""`promote demo`: the progress lines, the decision table, the explanation, the predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion.engine.results import DemoResult, GateResult, GateRow, Phase, Prediction
from promotion.errors import redact
from promotion.policy.model import Policy
from promotion.report.text import SCHEMA_VERSION, dumps, grid, version_or_none

if TYPE_CHECKING:
    from promotion.training import TrainResult

UI_PORT = 5000


def trained_line(name: str, result: TrainResult, seconds: float) -> str:
    return (f"trained  {name:<20} -> version {result.version:<4} "
            f"{metrics_line(result.metrics)}   {seconds:.1f} s")


def gated_line(gate: GateResult, seconds: float) -> str:
    return (f"gated    version {gate.candidate_version:<4} -> {gate.outcome:<12} "
            f"(vs {version_or_none(gate.production_version)})   {seconds:.1f} s")


def gate_reason(gate: GateResult) -> str:
    """Why, in one line: the first failed rule, or what a pass rested on."""
    d = gate.decision
    if d.outcome != "promoted":
        return d.summary
    if d.production_version is None:
        return f"first version for @{d.alias}: absolute bounds and required tags passed"
    gains = [f"{r.metric} {_num(r.candidate)} vs {_num(r.production)}" for r in d.rules
             if r.kind == "min_improvement" and r.passed]
    return f"all {len(d.rules)} checks passed" + (f" ({'; '.join(gains)})" if gains else "")


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def metrics_line(metrics: Any) -> str:
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in ("rmse", "mae", "r2") if k in metrics)


def decision_table(rows: Sequence[GateRow], trained: Sequence[TrainResult]) -> list[str]:
    metrics = {t.version: t.metrics for t in trained}
    body = []
    for r in rows:
        m = metrics.get(r.version, {})
        body.append([Path(r.config).name, r.version, *(f"{m[k]:.3f}" if k in m else "-"
                                                       for k in ("rmse", "mae", "r2")),
                     r.compared_to or "-", r.outcome.upper(), r.reason])
    return ["Decisions", *grid(["candidate", "version", "rmse", "mae", "r2", "vs", "decision",
                                  "reason"], body, right={1, 2, 3, 4, 5}, rule=True)]


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
    lines += grid(["row", "predicted", "actual", "error"], body, right={0, 1, 2, 3}, rule=True)
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


def opening(uri: str, model: str, policies: Sequence[Policy], *, first_run: bool) -> list[str]:
    lines = [f"Tracking: {redact(uri)}   model: {model}   policies: "
             f"{', '.join(p.path for p in policies)}"]
    if first_run:
        lines.append("First run here: creating the MLflow store mlflow.db (a few seconds).")
    return lines


def closing(demo: DemoResult, uri: str) -> list[str]:
    return ["", *ui_hint(uri, demo.model),
            f"Time: {demo.seconds:.1f} s  (" + ", ".join(
                f"{name} {secs:.1f}" for name, secs in summarize_phases(demo.phases)) + ")"]


def demo_json(demo: DemoResult) -> str:
    return dumps({"schema_version": SCHEMA_VERSION, **demo.to_dict()}, sort_keys=True,
                 ascii_only=True)


def summarize_phases(phases: Sequence[Phase]) -> list[tuple[str, float]]:
    """Phases grouped by kind (all trainings, all gates), in order of first appearance."""
    totals: dict[str, float] = {}
    for p in phases:
        kind = p.name.split(" ")[0] if p.name.startswith(("train ", "gate ")) else p.name
        totals[kind] = totals.get(kind, 0.0) + p.seconds
    return list(totals.items())
