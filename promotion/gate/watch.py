"""`promote watch`: judge the version behind an alias on its live traffic, and act on a breach.

    read     where @alias and @alias-previous point, and the version's last decision
    measure  the last window of the version's traffic from the inference log (promotion.gate.live)
    judge    every `watch:` rule, a pure function (promotion.engine.watch.judge)
    log      the window's figures as metrics of the version's run in `promotion-monitoring`
    act      a breach inside the bake period rolls the alias back through the same guarded path
             as `promote rollback` (lease, intent, re-read: an alias moved since the read is a
             conflict and nothing moves), recorded as a decision of kind `watch`; any other
             breach is recorded (kind `watch`, outcome `alert`) and moves nothing

A dry run reads and judges, and writes nothing anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from promotion import registry
from promotion.engine import records
from promotion.engine.facts import VersionFacts
from promotion.engine.records import Entry, Trigger
from promotion.engine.results import WatchNotApplied, WatchResult
from promotion.engine.watch import LiveFacts, WatchDecision, WatchFacts, judge
from promotion.errors import (
    ConflictError,
    InvalidInput,
    LogUnavailable,
    NothingMoved,
    RegistryError,
)
from promotion.gate import live
from promotion.gate.operation import nothing_moved_unless_said, writing
from promotion.gate.rollback import Why, run_rollback
from promotion.monitoring.logstore import LogStore
from promotion.policy.model import Policy, Watch
from promotion.registry import monitoring
from promotion.registry import records as store
from promotion.registry.client import describe_uri
from promotion.report.watch import chart_bounds, metrics_of, watch_files
from promotion.report.watch_chart import watch_chart_png

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

BASELINE_WINDOWS = 4  # the displaced version's traffic compared with: its last 4 windows
WATCH_TAG = "promotion.watch"  # the last breach the watch found on a version


def run_watch(client: MlflowClient, policy: Policy, log: LogStore, *, dry_run: bool = False,
              now: float | None = None) -> WatchResult:
    """Watch the version behind `policy.alias` over the window that ends `now` (default: now)."""
    watch = _watch_of(policy)
    end = time.time() if now is None else now
    window = live.Window(end - watch.window_seconds, end)
    empty = WatchResult(policy=policy, decision=None, facts=None, window_start=window.start,
                        window_end=window.end, dry_run=dry_run, log=log.where,
                        tracking_uri=describe_uri(client), trigger=Trigger.from_env())
    reads: list[Callable[[], Any]] = [
        partial(registry.alias_target, client, policy.model, policy.alias),
        partial(registry.alias_version, client, policy.model, f"{policy.alias}-previous")]
    with nothing_moved_unless_said(policy.alias):
        current, previous = registry.parallel(reads)
    if current is None:
        return replace(empty, note=f"no version holds @{policy.alias}: nothing to watch")
    version = str(current.version)
    with nothing_moved_unless_said(policy.alias, version):
        facts = _facts(client, policy, watch, log, current, previous, window, dry_run)
    decision = judge(watch, facts)
    result = replace(empty, decision=decision, facts=facts)
    if dry_run:
        return result
    with nothing_moved_unless_said(policy.alias, version):
        run_id, png, history = _log(client, result)
    result = replace(result, monitoring_run_id=run_id, chart_png=png, history=history)
    if decision.outcome != "breach":
        return result
    if decision.action == "rollback":
        return _roll_back(client, result, decision, previous)
    return _alert(client, result, decision)


def _watch_of(policy: Policy) -> Watch:
    if policy.watch is None:
        raise InvalidInput(f"{policy.path}: this policy has no 'watch:' block; add one to watch "
                           f"@{policy.alias} (docs/monitoring.md)")
    return policy.watch


def _facts(client: MlflowClient, policy: Policy, watch: Watch, log: LogStore,
           current: ModelVersion, previous: str | None, window: live.Window,
           dry_run: bool) -> WatchFacts:
    version = registry.version_facts(client, current)
    promoted_at, by_gate = _promotion(policy, version)
    reference = live.profile_for(client, policy, watch.rules, version, dry_run)
    quality = tuple(r.name for r in watch.rules if r.is_quality)
    try:
        log.migrate()  # a log written by an older Promote is brought up to this schema first
        since = max(promoted_at or window.start, window.end - live.MAX_LABEL_AGE)
        measured = live.measure(log, policy.model, version.version, window,
                                profile=reference.profile, profile_where=reference.where,
                                quality=quality, drift=reference.profile is not None,
                                labelled_since=since,
                                profile_problem=reference.problem)
        baseline = _baseline(log, policy, watch, previous, promoted_at, window, quality)
    except LogUnavailable as exc:
        raise LogUnavailable(f"@{policy.alias} still on version {version.version}; nothing "
                             f"moved: {exc}") from None
    return WatchFacts(model=policy.model, alias=policy.alias, now=window.end,
                      window_seconds=watch.window_seconds, live=measured,
                      previous_version=previous, promoted_at=promoted_at,
                      promoted_by_gate=by_gate, baseline=baseline,
                      offline=tuple(sorted(version.metrics.items())))


def _promotion(policy: Policy, version: VersionFacts) -> tuple[float | None, bool]:
    """When the alias took this version (from its decision tags), and whether a gate did it."""
    tags = version.tags
    decision = tags.get(records.DECISION)
    if decision not in ("promoted", "restored") or tags.get(records.ALIAS) != policy.alias:
        return None, False
    try:
        at = datetime.fromisoformat(tags.get(records.DECIDED_AT, "").replace("Z", "+00:00"))
    except ValueError:
        return None, False
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp(), decision == "promoted"


def _baseline(log: LogStore, policy: Policy, watch: Watch, previous: str | None,
              promoted_at: float | None, window: live.Window,
              quality: tuple[str, ...]) -> LiveFacts | None:
    """The displaced version's traffic just before it was displaced, when a rule compares."""
    wanted = any(r.max_increase is not None or (r.against == "previous" and r.max_regression)
                 for r in watch.rules)
    if previous is None or not wanted:
        return None
    end = promoted_at if promoted_at is not None else window.end
    span = live.Window(end - BASELINE_WINDOWS * watch.window_seconds, end)
    return live.measure(log, policy.model, previous, span, quality=quality, drift=False)


def _log(client: MlflowClient, result: WatchResult) -> tuple[str, bytes, Any]:
    """The window's figures on the version's monitoring run, and the chart of them over time
    (uploaded with the latest report, so the run's artifacts always show the last watch)."""
    assert result.facts is not None and result.decision is not None
    version = result.facts.live.version
    run_id = monitoring.version_run(client, result.policy.model, version)
    monitoring.log_window(client, run_id, metrics_of(result), at_seconds=result.window_end)
    bounds = chart_bounds(result)
    series = monitoring.history(client, run_id, tuple(bounds))
    png = watch_chart_png(series, bounds, f"{result.policy.model} version {version}: watched "
                                          f"signals (@{result.policy.alias})")
    history = tuple((name, tuple(points)) for name, points in series.items())
    monitoring.upload(client, run_id, {**watch_files(replace(result, history=history)),
                                       "chart.png": png})
    return run_id, png, history


def _roll_back(client: MlflowClient, result: WatchResult, decision: WatchDecision,
               previous: str | None) -> WatchResult:
    why = Why(kind="watch", reason=f"watch: {decision.summary}",
              files=watch_files(result), expected=(decision.version, previous))
    try:
        rolled = run_rollback(client, result.policy.model, result.policy.alias, why=why)
    except (NothingMoved, ConflictError) as exc:  # nothing moved: say so, with the table
        raise WatchNotApplied(result, exc) from exc
    return replace(result, rollback=rolled, record_run_id=rolled.record_run_id)


def _alert(client: MlflowClient, result: WatchResult, decision: WatchDecision) -> WatchResult:
    """Record the breach (kind `watch`, outcome `alert`) and tag the version; nothing moves."""
    policy, version = result.policy, decision.version
    reason = f"watch: {decision.summary}; not rolled back: {decision.why_not_rollback}"
    entry = Entry(kind="watch", model=policy.model, alias=policy.alias, outcome="alert",
                  candidate_version=version, compared_to=version, decided_at=records.utc_now(),
                  reason=reason, triggered_by=result.trigger.describe(), policy=policy.path,
                  policy_sha256=policy.sha256)
    try:
        with writing(client, policy.model, purpose=f"watch alert on @{policy.alias}") as session:
            entry = replace(entry, operation=session.operation)
            run = store.open_run(client, entry, result.trigger)
            session.run_id = run.run_id
            registry.set_tags(client, policy.model, version, {
                WATCH_TAG: records.clip(f"{entry.decided_at} breach: {decision.summary} "
                                        f"(record run {run.run_id})")})
            store.close_run(client, run, entry, result.trigger, files=watch_files(result),
                            retag=False)
    except RegistryError as exc:
        if isinstance(exc, NothingMoved):
            raise
        raise NothingMoved(f"@{policy.alias} still on version {version}; nothing moved (the "
                           f"breach is not recorded): {exc}") from exc
    return replace(result, record_run_id=run.run_id)
