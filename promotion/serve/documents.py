"""What /health and /version say about a model, from the states the endpoint holds.

The registry's condition (`registry_view`, pure) is judged from the follower's state:
`unreachable` when the last check failed (or the registry could not be read at start-up and no
check has succeeded since: the model then serves what the local cache kept), or when the check in
progress has waited more than HUNG_POLLS poll intervals (a link that drops packets hangs a
request rather than failing it). A model's `status` (`model_status`, pure) is `ok`, `degraded`
(served, but the registry cannot be read), `loading` (nothing served yet) or `unloaded` (a lazy
model not in memory: it loads on its first request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from promotion.monitoring.logstore import LogWriter
from promotion.serve.state import FollowerState

if TYPE_CHECKING:
    from promotion.serve.follower import AliasFollower
    from promotion.serve.hooks import Webhooks

HUNG_POLLS = 3  # a check still waiting after this many poll intervals: the registry is unreachable


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RegistryView:
    """Whether the endpoint can read the registry for one model, and since when not."""

    status: str  # ok | unreachable
    since: float | None  # when it stopped answering (None: it answers)
    last_ok_at: float | None  # the last successful check
    served_from: str  # registry | cache: where the served version's files came from

    @property
    def reachable(self) -> bool:
        return self.status == "ok"


def registry_view(state: FollowerState, poll_interval: float, now: float) -> RegistryView:
    """The registry as one model's follower has seen it, at `now` (epoch seconds)."""
    since = state.unreachable_since
    hung = state.checking_since
    if since is None and hung is not None and now - hung > HUNG_POLLS * poll_interval:
        since = hung
    served_from = state.served.source if state.served is not None else "registry"
    return RegistryView("ok" if since is None else "unreachable", since, state.checked_at,
                        served_from)


def registry_document(view: RegistryView) -> dict[str, Any]:
    return {"status": view.status, "since": iso(view.since), "last_ok_at": iso(view.last_ok_at),
            "served_from": view.served_from}


def model_status(state: FollowerState, view: RegistryView, *, lazy: bool, active: bool) -> str:
    """ok, degraded, loading or unloaded (see the module's docstring)."""
    if state.served is None:
        return "unloaded" if lazy and not active else "loading"
    return "ok" if view.reachable else "degraded"


def version_document(follower: AliasFollower, state: FollowerState | None = None
                     ) -> dict[str, Any]:
    """What GET /version answers: enough to tell what is served and why."""
    state = state if state is not None else follower.state
    served = state.served
    error = state.last_error
    return {
        "model": follower.model,
        "alias": follower.alias,
        "version": served.version if served else None,
        "run_id": served.run_id if served else None,
        "loaded_at": iso(served.loaded_at) if served else None,
        "load_seconds": round(served.load_seconds, 3) if served else None,
        "serving_since": iso(state.serving_since),
        "alias_version": state.alias_version,
        "in_sync": state.in_sync,
        "checked_at": iso(state.checked_at),
        "poll_interval_seconds": follower.poll_interval,
        "swaps": state.swaps,
        "load_failures": state.load_failures,
        "last_error": None if error is None else {
            "message": error.message, "at": iso(error.at), "version": error.version},
        "rollout_note": state.note,
    }


def events_document(hooks: Webhooks, state: FollowerState, *, full: bool = False
                    ) -> dict[str, Any]:
    """How the endpoint learns of moves, for /health (and with `full`, for /version): webhooks
    on or off, the last event that asked for a check, the last successful registry check."""
    event = state.last_event
    document: dict[str, Any] = {"webhook": "on" if hooks.enabled else "off",
                                "last_event_at": iso(event.at) if event else None,
                                "last_poll_at": iso(state.checked_at)}
    if full:
        document.update({
            "last_event": None if event is None else {
                "delivery_id": event.delivery_id, "alias": event.alias, "action": event.action,
                "version": event.version, "at": iso(event.at)},
            "deliveries": hooks.counts(),
            "swaps_by_trigger": state.swaps_by_trigger.as_dict()})
    return document


def log_document(log: LogWriter | None, *, full: bool = False) -> dict[str, Any]:
    """The inference log's state, for /health (and with `full`, for /version)."""
    if log is None:
        return {"status": "off", "dropped": 0, "last_error": None,
                **({"uri": None} if full else {})}
    stats = log.stats()
    document: dict[str, Any] = {"status": "ok" if stats.healthy else "degraded",
                                "dropped": stats.dropped, "last_error": stats.last_error}
    if full:
        document.update({
            "uri": log.store.where, "written": stats.written, "queued": stats.queued,
            "sampled_rows": stats.sampled_rows, "dropped_queue_full": stats.dropped_queue_full,
            "dropped_database": stats.dropped_database,
            "last_error_at": stats.last_error_at.isoformat(timespec="milliseconds")
            if stats.last_error_at else None})
    return document
