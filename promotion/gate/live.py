"""What the watch measures: one version's live window, read from the inference log.

Requests, errors and latency are aggregated in the log database; drift streams the window's
logged rows in chunks through the version's reference profile (at most `MAX_DRIFT_ROWS`, a
systematic sample spread over the window, so a busy endpoint costs the same as a quiet one);
quality joins the labels that have arrived to the predictions they are about. The reference
profile is the one `promote train` stored on the version's run, else the one an earlier watch
computed on the policy's evaluation set (stored on the version's monitoring run), else it is
computed now from that set.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion import evaluation as rescoring
from promotion.engine.facts import VersionFacts
from promotion.engine.step import Agreed
from promotion.engine.watch import LiveFacts
from promotion.errors import InvalidInput
from promotion.monitoring.drift import DriftAccumulator
from promotion.monitoring.logstore import LogStore
from promotion.monitoring.profile import Profile, build_profile
from promotion.policy.model import Margin, Policy, WatchRule
from promotion.registry import monitoring, profiles

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_DRIFT_ROWS = 50_000
MAX_LABEL_AGE = 7 * 86400  # quality reads labels of requests at most this old
LIVE_METRICS = ("rmse", "mae", "r2", "accuracy", "f1")  # computable from predictions alone


@dataclass(frozen=True)
class Window:
    start: float  # epoch seconds, inclusive
    end: float  # exclusive

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        return (datetime.fromtimestamp(self.start, UTC), datetime.fromtimestamp(self.end, UTC))


@dataclass(frozen=True)
class ReferenceProfile:
    profile: Profile | None
    where: str | None  # "run <id>", "monitoring run <id>", or "computed now on <data>"
    computed: bool = False  # made by this watch (to be stored unless it is a dry run)
    problem: str | None = None  # why a stored profile could not be used


def measure(store: LogStore, model: str, version: str, window: Window, *,
            profile: Profile | None = None, profile_where: str | None = None,
            quality: tuple[str, ...] = (), drift: bool = True,
            labelled_since: float | None = None, profile_problem: str | None = None
            ) -> LiveFacts:
    """The facts of one version over one window.

    Quality reads the labelled rows of requests since `labelled_since` (default: the window's
    start), as labels arrive late: a watch judges every label that has come in for the version.
    """
    start, end = window.bounds
    summary = store.request_summary(model, version, start, end)
    facts: dict[str, Any] = {
        "version": version, "requests": summary.requests, "rows": summary.rows,
        "error_rate": summary.error_rate, "latency_p50_ms": summary.latency_p50_ms,
        "latency_p95_ms": summary.latency_p95_ms, "profile": profile_where,
        "profile_problem": profile_problem}
    if drift and profile is not None and summary.requests:
        facts.update(_drift(store, model, version, window, profile))
    if quality:
        since = window.start if labelled_since is None else min(labelled_since, window.start)
        facts.update(_quality(store, model, version, Window(since, window.end), quality))
    return LiveFacts(**facts)


def _drift(store: LogStore, model: str, version: str, window: Window,
           profile: Profile) -> dict[str, Any]:
    start, end = window.bounds
    accumulator = DriftAccumulator(profile)
    for inputs, predictions in store.iter_rows(model, version, start, end,
                                               max_rows=MAX_DRIFT_ROWS):
        accumulator.add(inputs, predictions)
    drift = accumulator.result()
    features = [f for f in drift.features if not f.missing]
    return {
        "drift_rows": drift.rows,
        "prediction_psi": drift.prediction.psi, "prediction_ks": drift.prediction.ks,
        "feature_psi": tuple((f.name, f.psi) for f in features if f.psi is not None),
        "feature_ks": tuple((f.name, f.ks) for f in features if f.ks is not None),
        "missing_features": tuple(f.name for f in drift.features if f.missing)
        if drift.rows else (),
    }


def _quality(store: LogStore, model: str, version: str, window: Window,
             metrics: tuple[str, ...]) -> dict[str, Any]:
    import numpy as np

    start, end = window.bounds
    predictions, labels = store.labelled(model, version, start, end)
    wanted = [m for m in metrics if m in LIVE_METRICS]
    values: list[tuple[str, float]] = []
    if len(labels) and wanted:
        outputs = rescoring.Outputs(np.asarray(predictions))
        for name in wanted:
            try:
                value = rescoring.score([name], labels, outputs)[name]
            except (ValueError, TypeError):  # labels that do not fit the metric (text for rmse)
                continue
            if np.isfinite(value):
                values.append((name, float(value)))
    return {"labels": len(labels), "quality": tuple(values)}


def agreement(store: LogStore, model: str, production: str, candidate: str, window: Window,
              tolerance: Margin, max_rows: int = MAX_DRIFT_ROWS) -> Agreed:
    """How many rows Production and the candidate both scored in the window (a request and its
    shadow copy, paired by request id and row), and on how many they agree: equal class labels,
    or numbers within `tolerance` (absolute, or relative to |Production's prediction|)."""
    import numpy as np

    start, end = window.bounds
    ours, theirs = store.paired(model, production, candidate, start, end, max_rows=max_rows)
    if not len(ours):
        return Agreed(0, 0)
    if ours.dtype == np.float64 and theirs.dtype == np.float64:
        allowed = tolerance.value * np.abs(ours) if tolerance.relative else tolerance.value
        with np.errstate(invalid="ignore"):
            same = np.abs(ours - theirs) <= allowed + 1e-12 * np.abs(ours)
        same |= np.isnan(ours) & np.isnan(theirs)
    else:
        same = np.array([str(a) == str(b) for a, b in zip(ours, theirs, strict=True)])
    return Agreed(len(ours), int(np.count_nonzero(same)))


def profile_for(client: MlflowClient, policy: Policy, rules: Sequence[WatchRule],
                version: VersionFacts, dry_run: bool) -> ReferenceProfile:
    """The version's reference profile when a drift rule needs one (kept on its monitoring run
    when it had to be computed now, unless this is a dry run)."""
    if not any(r.name.startswith(("prediction_", "feature_")) for r in rules):
        return ReferenceProfile(None, None)
    reference = reference_profile(client, policy, version, version.run_id)
    if reference.computed and reference.profile is not None and not dry_run:
        store_profile(client, policy.model, version.version, reference.profile)
    return reference


def reference_profile(client: MlflowClient, policy: Policy, version: VersionFacts,
                      run_id: str | None) -> ReferenceProfile:
    """The version's reference profile: stored at training, by an earlier watch, or made now."""
    where = f"version {version.version}"
    stored = [(run_id, f"run {run_id}", f"{where}'s run profile")] if run_id else []
    monitoring_run = monitoring.find_run(client, policy.model, version.version)
    if monitoring_run:
        stored.append((monitoring_run, f"monitoring run {monitoring_run}",
                       f"{where}'s watch profile"))
    for run, found_at, name in stored:
        data = profiles.load_profile(client, run)
        if data is None:
            continue
        try:
            return ReferenceProfile(Profile.from_json(data, where=name), found_at)
        except InvalidInput as exc:  # the drift rules cannot judge; the others still do
            return ReferenceProfile(None, None, problem=f"its reference profile cannot be "
                                                        f"read ({exc})")
    if policy.evaluation is None:
        return ReferenceProfile(None, None)
    return ReferenceProfile(_profile_from_evaluation(client, policy, version),
                            f"computed on {policy.evaluation.data}", computed=True)


def _profile_from_evaluation(client: MlflowClient, policy: Policy,
                             version: VersionFacts) -> Profile:
    data = rescoring.load_evaluation_set(policy)
    with tempfile.TemporaryDirectory(prefix="promote-watch-") as tmp:
        loaded = rescoring.load_version(client, version, Path(tmp) / "version")
        predictions = rescoring.call_predict(policy, loaded, data, data.features)
    try:
        return build_profile(data.features, predictions,
                             source=f"evaluation: {data.source}")
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot profile version {version.version} on {data.source}: "
                           f"{exc}") from None


def store_profile(client: MlflowClient, model: str, version: str, profile: Profile) -> str:
    """Keep a profile the watch computed on the version's monitoring run; returns the run."""
    run_id = monitoring.version_run(client, model, version)
    profiles.save_profile(client, run_id, profile.to_json())
    return run_id
