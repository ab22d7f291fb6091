"""The endpoint's Prometheus metrics: request counters and latency by served version, the
follower's state (served version, alias target, in sync, swaps, load failures), how it learns of
moves (webhook deliveries by outcome, swaps by trigger, the last event and check), the canary's
(version and mode, share in force, benched, fallbacks, shadow copies, shadow queue depth) and the
inference log's (records written, dropped by reason, queue depth, healthy), read at scrape time.

An endpoint that serves several models keeps one `Metrics` per model (its own registry, as with
one model) and renders them as one exposition (`merged_collector`): each family once, every
model's series in it with a `model` label. The memory budget's series (`memory_collector`: loads,
evictions, footprints, the budget) are the endpoint's, whatever the number of models.

prometheus_client is imported inside the functions: only a running endpoint needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from promotion.monitoring.logstore import LogWriter
from promotion.serve.batchscore import Scored
from promotion.serve.budget import MemoryBudget
from promotion.serve.canary import Canary
from promotion.serve.documents import registry_view
from promotion.serve.follower import AliasFollower

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Request metrics labelled by the version that served them, plus the follower's state."""

    def __init__(self, follower: AliasFollower, log: LogWriter | None = None,
                 canary: Canary | None = None,
                 deliveries: Callable[[], Mapping[str, int]] | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            disable_created_metrics,
        )

        # The *_created series double the output and no dashboard reads them.
        disable_created_metrics()
        # A registry of the app's own: several apps in one process (tests) never collide, and
        # nothing else in the process leaks into the endpoint's metrics.
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("promote_serve_requests", "Scoring requests, by served version "
                                "and HTTP status.", ["version", "status"], registry=self.registry)
        self.errors = Counter("promote_serve_request_errors", "Scoring requests that failed, by "
                              "served version and reason.", ["version", "reason"],
                              registry=self.registry)
        self.latency = Histogram("promote_serve_request_duration_seconds", "Time to answer a "
                                 "scoring request, by served version.", ["version"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("promote_serve_batch_rows", "Rows per predict call (with "
                                    "batching on), by version.", ["version"],
                                    buckets=BATCH_ROWS_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("promote_serve_batch_requests", "Requests per predict "
                                        "call (with batching on), by version.", ["version"],
                                        buckets=BATCH_REQUESTS_BUCKETS, registry=self.registry)
        self.batch_wait = Histogram("promote_serve_batch_wait_seconds", "Time a parsed request "
                                    "waited for its predict call (for a scoring thread, and for "
                                    "its batch to fill), by version.", ["version"],
                                    buckets=BATCH_WAIT_BUCKETS, registry=self.registry)
        self.batch_retries = Counter("promote_serve_batch_retries", "Batches scored again "
                                     "request by request (one request failed the call, or the "
                                     "predictions were not one per row), by version.",
                                     ["version"], registry=self.registry)
        self.batch_calls = Counter("promote_serve_batch_calls", "Predict calls of the batcher, "
                                   "by version and where they ran (process: a scoring process; "
                                   "thread: the endpoint's own, while the processes load a "
                                   "version or when they are off).", ["version", "where"],
                                   registry=self.registry)
        self.registry.register(_follower_collector(follower))
        self.registry.register(_events_collector(follower, deliveries))
        if canary is not None:
            self.registry.register(_canary_collector(follower, canary))
        if log is not None:
            self.registry.register(_log_collector(log))

    def observe_batch(self, version: str, scored: Scored, waits: Sequence[float]) -> None:
        """One batch of the batcher (serve.batching.BatchObserver): its predict calls, where
        they ran, the calls made again request by request, each request's wait."""
        rows, requests = self.batch_rows.labels(version), self.batch_requests.labels(version)
        for count, row_count in scored.calls:
            requests.observe(count)
            rows.observe(row_count)
        if scored.calls:
            self.batch_calls.labels(version, scored.where).inc(len(scored.calls))
        if scored.retried:
            self.batch_retries.labels(version).inc(scored.retried)
        wait = self.batch_wait.labels(version)
        for seconds in waits:
            wait.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _follower_collector(follower: AliasFollower) -> Collector:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model", "alias"]
    key = [follower.model, follower.alias]

    class FollowerCollector:
        def collect(self) -> Iterable[Any]:
            state = follower.state
            served = state.served
            info = GaugeMetricFamily("promote_serve_model_info", "The served version (value 1).",
                                     labels=[*labels, "version"])
            if served is not None:
                info.add_metric([*key, served.version], 1)
            yield info
            for name, doc, value in (
                ("promote_serve_model_version", "Version number served (0: none loaded yet).",
                 _number(served.version if served else None)),
                ("promote_serve_alias_version", "Version number the alias pointed at on the last "
                 "successful check.", _number(state.alias_version)),
                ("promote_serve_in_sync", "1 when the served version is the one the alias points "
                 "at.", float(state.in_sync)),
                ("promote_serve_model_loaded_timestamp_seconds", "When the served version was "
                 "loaded (Unix time).", served.loaded_at if served else 0.0),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric(key, value)
                yield gauge
            for name, doc, count in (
                ("promote_serve_swaps", "Versions swapped in after the first one.", state.swaps),
                ("promote_serve_load_failures", "Versions that could not be loaded.",
                 state.load_failures),
            ):
                counter = CounterMetricFamily(name, doc, labels=labels)
                counter.add_metric(key, count)
                yield counter

    return FollowerCollector()


def _events_collector(follower: AliasFollower,
                      deliveries: Callable[[], Mapping[str, int]] | None) -> Collector:
    """How the endpoint learns of moves: webhook deliveries by outcome, swaps by what triggered
    them, the last event and the last successful registry check."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model", "alias"]
    key = [follower.model, follower.alias]

    class EventsCollector:
        def collect(self) -> Iterable[Any]:
            state = follower.state
            received = CounterMetricFamily("promote_serve_webhook_deliveries", "Deliveries to "
                                           "POST /hooks/mlflow, by outcome.",
                                           labels=[*labels, "outcome"])
            for outcome, count in (deliveries() if deliveries else {}).items():
                received.add_metric([*key, outcome], count)
            yield received
            swaps = CounterMetricFamily("promote_serve_swaps_by_trigger", "Versions swapped in "
                                        "(the first included), by what made the endpoint look: "
                                        "start, poll or webhook.", labels=[*labels, "trigger"])
            for trigger, count in state.swaps_by_trigger.as_dict().items():
                swaps.add_metric([*key, trigger], count)
            yield swaps
            event = state.last_event
            view = registry_view(state, follower.poll_interval, time.time())
            for name, doc, value in (
                ("promote_serve_last_event_timestamp_seconds", "When the last registry event "
                 "that asked for a check arrived (Unix time; 0: none yet).",
                 event.at if event else 0.0),
                ("promote_serve_last_poll_timestamp_seconds", "When the registry was last read "
                 "successfully (Unix time; 0: not yet).", state.checked_at or 0.0),
                ("promote_serve_registry_reachable", "1 while the registry can be read for this "
                 "model; 0 when the last check failed or has hung for 3 poll intervals.",
                 float(view.reachable)),
                ("promote_serve_served_from_cache", "1 when the served version was loaded from "
                 "the local cache (the registry could not be read).",
                 float(view.served_from == "cache")),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric(key, value)
                yield gauge

    return EventsCollector()


def _canary_collector(follower: AliasFollower, canary: Canary) -> Collector:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model", "alias"]
    key = [follower.model, follower.alias]

    class CanaryCollector:
        def collect(self) -> Iterable[Any]:
            view = canary.view(follower.state)
            info = GaugeMetricFamily("promote_serve_canary_info", "The canary of a rollout in "
                                     "force (value 1), by version and mode.",
                                     labels=[*labels, "version", "mode"])
            if view is not None:
                info.add_metric([*key, view.route.version, view.route.mode], 1)
            yield info
            for name, doc, value in (
                ("promote_serve_canary_share", "Share of requests the canary answers (canary "
                 "mode) or is mirrored (shadow mode) here now: 0 when benched, loading or none.",
                 view.share_in_force if view else 0.0),
                ("promote_serve_canary_step", "The rollout's step in force (1-based; 0: none).",
                 float(view.route.step + 1) if view else 0.0),
                ("promote_serve_canary_benched", "1 when the canary gets no traffic here for the "
                 "rest of its step (it failed to load, or breached the error guard).",
                 float(view is not None and view.status == "benched")),
                ("promote_serve_shadow_queue_depth", "Request copies waiting for the shadow "
                 "canary.", float(canary.mirror.stats().queued)),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric(key, value)
                yield gauge
            fallbacks = CounterMetricFamily("promote_serve_canary_fallbacks", "Requests the "
                                            "canary failed and the primary answered.",
                                            labels=labels)
            fallbacks.add_metric(key, canary.fallbacks)
            yield fallbacks
            stats = canary.mirror.stats()
            copies = CounterMetricFamily("promote_serve_shadow_copies", "Request copies for the "
                                         "shadow canary, by outcome.",
                                         labels=[*labels, "outcome"])
            for outcome, count in (("scored", stats.scored), ("failed", stats.failed),
                                   ("dropped", stats.dropped)):
                copies.add_metric([*key, outcome], count)
            yield copies

    return CanaryCollector()


def deliveries_collector(deliveries: Callable[[], Mapping[str, int]]) -> Collector:
    """Webhook deliveries by outcome, for an endpoint of several models (one receiver)."""
    from prometheus_client.core import CounterMetricFamily

    class DeliveriesCollector:
        def collect(self) -> Iterable[Any]:
            received = CounterMetricFamily("promote_serve_webhook_deliveries", "Deliveries to "
                                           "POST /hooks/mlflow, by outcome.", labels=["outcome"])
            for outcome, count in deliveries().items():
                received.add_metric([outcome], count)
            yield received

    return DeliveriesCollector()


def log_collector(writer: LogWriter) -> Collector:
    return _log_collector(writer)


def _log_collector(writer: LogWriter) -> Collector:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class LogCollector:
        def collect(self) -> Iterable[Any]:
            stats = writer.stats()
            written = CounterMetricFamily("promote_serve_log_records", "Request records written "
                                          "to the inference log.")
            written.add_metric([], stats.written)
            yield written
            dropped = CounterMetricFamily("promote_serve_log_dropped", "Request records not "
                                          "written: the queue was full, or the database failed.",
                                          labels=["reason"])
            dropped.add_metric(["queue_full"], stats.dropped_queue_full)
            dropped.add_metric(["database"], stats.dropped_database)
            yield dropped
            for name, doc, value in (
                ("promote_serve_log_queue_depth", "Request records waiting to be written.",
                 stats.queued),
                ("promote_serve_log_healthy", "1 when the last write to the inference log "
                 "succeeded.", float(stats.healthy)),
            ):
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], value)
                yield gauge

    return LogCollector()


def _number(version: str | None) -> float:
    return float(version) if version and version.isdigit() else 0.0



def memory_collector(budget: MemoryBudget,
                     models: Callable[[], Sequence[tuple[str, int, bool]]]) -> Collector:
    """Loads, evictions, footprints and the budget. `models()`: (name, footprint, resident)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class MemoryCollector:
        def collect(self) -> Iterable[Any]:
            counts = budget.counts()
            held = models()
            loads = CounterMetricFamily("promote_serve_model_loads", "Versions loaded into "
                                        "memory, by model.", labels=["model"])
            evictions = CounterMetricFamily("promote_serve_model_evictions", "Times a lazy "
                                            "model was unloaded to keep within the memory "
                                            "budget.", labels=["model"])
            footprint = GaugeMetricFamily("promote_serve_model_footprint_bytes", "Estimated "
                                          "memory held by the model: its model directory's size "
                                          "on disk (0: not loaded).", labels=["model"])
            resident = GaugeMetricFamily("promote_serve_model_resident", "1 while a version of "
                                         "the model is in memory.", labels=["model"])
            for name, size, loaded in held:
                loaded_count, evicted = counts.get(name, (0, 0))
                loads.add_metric([name], loaded_count)
                evictions.add_metric([name], evicted)
                footprint.add_metric([name], size)
                resident.add_metric([name], float(loaded))
            limit = GaugeMetricFamily("promote_serve_memory_budget_bytes", "The memory budget "
                                      "(0: none).")
            limit.add_metric([], budget.limit or 0)
            yield from (loads, evictions, footprint, resident, limit)

    return MemoryCollector()


def merged_collector(parts: Sequence[tuple[str, CollectorRegistry]],
                     extra: Sequence[Collector] = ()) -> Collector:
    """Every model's registry as one exposition: each family once, each series of a model's
    registry labelled `model` (if it is not already); then the `extra` collectors' families
    (the endpoint's own), as they are."""
    from prometheus_client.metrics_core import Metric

    class MergedCollector:
        def collect(self) -> Iterable[Any]:
            families: dict[str, Metric] = {}

            def merge(family: Metric, model: str | None) -> None:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation,
                                                            family.type, family.unit)
                for sample in family.samples:
                    labels = sample.labels if model is None or "model" in sample.labels \
                        else {"model": model, **sample.labels}
                    merged.samples.append(sample._replace(labels=labels))

            for model, registry in parts:
                for family in registry.collect():
                    merge(family, model)
            for collector in extra:
                for family in collector.collect():
                    merge(family, None)
            yield from families.values()

    return MergedCollector()
