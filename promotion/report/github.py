"""GitHub Actions: step outputs and the job summary."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from promotion.engine.results import GateResult, RolloutResult, WatchResult
from promotion.report.decision import markdown
from promotion.report.rollout import markdown as rollout_markdown
from promotion.report.text import md
from promotion.report.watch import markdown as watch_markdown


def github_outputs(result: GateResult) -> dict[str, str]:
    # A move whose record is incomplete is told apart from one that is complete: a workflow
    # can stop on it (the next command completes it).
    decision = f"{result.outcome}-incomplete" if result.missing else result.outcome
    return {"decision": decision, "candidate_version": result.candidate_version,
            "production_version": result.production_version or "",
            "dry_run": "true" if result.dry_run else "false"}


def write_github(result: GateResult, env: Mapping[str, str] | None = None) -> None:
    """Inside GitHub Actions: append the Markdown report to the step summary, write outputs."""
    _write(env, markdown(result), github_outputs(result))


def _write(env: Mapping[str, str] | None, summary_text: str, values: Mapping[str, str]) -> None:
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(summary_text + "\n")
    outputs = env.get("GITHUB_OUTPUT")
    if outputs:
        with open(outputs, "a", encoding="utf-8") as f:
            f.write(output_lines(values))


def output_lines(values: Mapping[str, str]) -> str:
    """`name<<DELIMITER` blocks: safe for any value, even one holding newlines."""
    text = []
    for name, value in values.items():
        delimiter = f"promote_{uuid.uuid4().hex}"
        text.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(text)


def write_github_watch(result: WatchResult, env: Mapping[str, str] | None = None) -> None:
    """Inside GitHub Actions: the watch table in the job summary; outcome/action as outputs."""
    _write(env, watch_markdown(result), {
        "outcome": result.outcome, "action": result.action,
        "version": result.decision.version if result.decision else "",
        "dry_run": "true" if result.dry_run else "false"})


def write_github_rollout(result: RolloutResult, env: Mapping[str, str] | None = None) -> None:
    """Inside GitHub Actions: the step's table in the job summary; the action as outputs."""
    state = result.advanced_to or result.state
    _write(env, rollout_markdown(result), {
        "action": f"{result.action}-incomplete" if result.missing else result.action,
        "version": result.state.version if result.state else "",
        "step": str(state.step + 1) if state else "",
        "share": f"{state.share:g}" if state else "",
        "dry_run": "true" if result.dry_run else "false"})


def write_github_events(line: str, env: Mapping[str, str] | None = None) -> None:
    """Inside GitHub Actions: what a decision's events became, in the job summary (`line` holds
    no URL and no secret: promotion.notify says endpoints and targets by number)."""
    _write(env, f"{md(line)}\n", {})
