"""POST /hooks/mlflow: MLflow's registry webhooks wake the follower, in-process (fake models and
resolvers as in test_serve_app.py; no MLflow server). Deliveries are signed with
`engine.signing.sign`, and once with MLflow's own signer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from test_serve_app import PAYLOAD, SumModel, call, sample
from test_serve_canary import rollout_state

from promotion.engine.rollout import Route, route_of, state_tag
from promotion.engine.signing import sign
from promotion.serve.app import create_app
from promotion.serve.follower import AliasFollower, Served
from promotion.serve.hooks import HOOK_PATH, MAX_HOOK_BYTES, SECRET_ENV, secret_from_env
from promotion.serve.server import ServeOptions, poll_interval_for

SECRET = "whsec-correct-horse-battery-staple"
POLL = 60.0  # every reconcile these tests see comes from a webhook, never from the poll


class Models:
    """Where the alias points (or the route), the models behind the versions, the calls made.
    A version in `gated` does not finish loading until its gate is set."""

    def __init__(self) -> None:
        self.route: str | Route = "1"
        self.models = {"1": SumModel(1.0), "2": SumModel(10.0)}
        self.resolved: list[float] = []
        self.gated: dict[str, threading.Event] = {}
        self.loading = threading.Event()

    def resolve(self) -> str | Route:
        self.resolved.append(time.monotonic())
        return self.route

    def load(self, version: str) -> Served:
        self.loading.set()
        gate = self.gated.get(version)
        if gate is not None:
            assert gate.wait(20), "the test never released the load"
        return Served(version=version, model=self.models[version], loaded_at=time.time(),
                      load_seconds=0.0)


def until(condition, timeout: float = 10.0) -> bool:
    """Wait for `condition` (polled), at most `timeout` seconds; whether it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def alias_event(alias: str = "Production", version: str | None = "2", name: str = "m",
                action: str = "created") -> dict:
    data = {"name": name, "alias": alias} | ({"version": version} if version else {})
    return {"entity": "model_version_alias", "action": action,
            "timestamp": "2026-11-27T17:44:08.275000+00:00", "data": data}


def deliver(app, event: dict | bytes, *, secret: str = SECRET, delivery_id: str | None = None,
            timestamp: float | None = None, headers: dict | None = None):
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    signed = sign(secret, delivery_id or str(uuid.uuid4()),
                  int(time.time() if timestamp is None else timestamp), body)
    return call(app, "POST", HOOK_PATH, content=body,
                headers={"Content-Type": "application/json", **signed, **(headers or {})})


@pytest.fixture
def models() -> Models:
    return Models()


@pytest.fixture
def follower(models: Models) -> AliasFollower:
    return AliasFollower("m", "Production", POLL, models.resolve, models.load)


@pytest.fixture
def running(follower: AliasFollower) -> Iterator[AliasFollower]:
    """The follower's own thread, serving version 1 (its first check, trigger `start`)."""
    follower.start()
    try:
        assert follower.wait_until_serving(10) is not None
        yield follower
    finally:
        follower.stop()


@pytest.fixture
def app(follower):
    return create_app(follower, manage_follower=False, webhook_secret=SECRET)


@pytest.fixture
def nudges(follower, monkeypatch) -> list:
    """The follower refreshed once by hand (version 1), and every nudge recorded, not run."""
    follower.refresh()
    seen: list = []
    monkeypatch.setattr(follower, "nudge",
                        lambda reason, event=None: seen.append((reason, event)))
    return seen


def test_an_alias_event_swaps_at_once_without_waiting_for_the_poll(app, running, models):
    assert running.state.swaps_by_trigger.as_dict() == {"start": 1, "poll": 0, "webhook": 0}
    models.route = "2"  # the alias moved; the next poll is a minute away
    r = deliver(app, alias_event(version="2"), delivery_id="d-1")
    assert r.status_code == 202 and r.json()["checking"] == "m@Production"
    assert until(lambda: (s := running.state.served) is not None and s.version == "2")
    assert len(models.resolved) == 2
    state = running.state
    assert state.swaps_by_trigger.as_dict() == {"start": 1, "poll": 0, "webhook": 1}
    assert state.swaps == 1

    health = call(app, "GET", "/health").json()["events"]
    assert health["webhook"] == "on" and health["last_event_at"] and health["last_poll_at"]
    events = call(app, "GET", "/version").json()["events"]
    assert events["last_event"] | {"at": None} == {"delivery_id": "d-1", "alias": "Production",
                                                   "action": "created", "version": "2",
                                                   "at": None}
    assert events["deliveries"]["accepted"] == 1 and events["swaps_by_trigger"]["webhook"] == 1
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.headers["X-Model-Version"] == "2"
    labels = {"model": "m", "alias": "Production"}
    assert sample(app, "promote_serve_webhook_deliveries_total", **labels,
                  outcome="accepted") == 1
    assert sample(app, "promote_serve_swaps_by_trigger_total", **labels, trigger="webhook") == 1
    assert sample(app, "promote_serve_swaps_by_trigger_total", **labels, trigger="start") == 1
    assert state.last_event is not None
    assert sample(app, "promote_serve_last_event_timestamp_seconds", **labels) == \
        state.last_event.at
    assert sample(app, "promote_serve_last_poll_timestamp_seconds", **labels) == state.checked_at


def _chunks(size: int) -> Iterator[bytes]:
    async def body():
        for _ in range(size // 1024):
            yield b" " * 1024
    return body()


@pytest.mark.parametrize(("how", "status", "reason", "outcome"), [
    ("wrong secret", 401, "bad_signature", "bad_signature"),
    ("stale", 401, "stale", "stale"),
    ("from the future", 401, "stale", "stale"),
    ("missing headers", 401, "missing_headers", "bad_signature"),
    ("timestamp not a number", 400, "malformed_headers", "malformed"),
    ("malformed JSON", 400, "malformed", "malformed"),
    ("JSON not an event", 400, "malformed", "malformed"),
    ("declared too large", 413, "too_large", "too_large"),
    ("chunked too large", 413, "too_large", "too_large"),
])
def test_a_refused_delivery_changes_nothing(app, models, nudges, how, status, reason, outcome):
    event = alias_event()
    if how == "wrong secret":
        r = deliver(app, event, secret="not-the-secret")
    elif how == "stale":
        r = deliver(app, event, timestamp=time.time() - 301)
    elif how == "from the future":
        r = deliver(app, event, timestamp=time.time() + 301)
    elif how == "missing headers":
        r = call(app, "POST", HOOK_PATH, json=event,
                 headers={"X-MLflow-Delivery-Id": "d", "X-MLflow-Timestamp": "1"})
    elif how == "timestamp not a number":
        r = deliver(app, event, headers={"X-MLflow-Timestamp": "yesterday"})
    elif how == "malformed JSON":
        r = deliver(app, b'{"entity": "model_version_alias", ')  # signed, but cut short
    elif how == "JSON not an event":
        r = deliver(app, b'["model_version_alias"]')
    elif how == "declared too large":
        r = deliver(app, b"{" + b" " * MAX_HOOK_BYTES + b"}")
    else:
        r = call(app, "POST", HOOK_PATH, content=_chunks(2 * MAX_HOOK_BYTES),
                 headers=sign(SECRET, "d", int(time.time()), b"{}"))
        assert "content-length" not in r.request.headers
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason
    assert nudges == [] and len(models.resolved) == 1  # the hand refresh, nothing since
    assert app.state.follower.state.last_event is None
    counts = app.state.hooks.counts()
    assert counts[outcome] == 1 and sum(counts.values()) == 1


def test_a_replayed_delivery_is_409_and_applied_once(app, nudges):
    event = alias_event()
    assert deliver(app, event, delivery_id="same").status_code == 202
    r = deliver(app, event, delivery_id="same")
    assert r.status_code == 409 and r.json()["reason"] == "replayed"
    assert len(nudges) == 1
    counts = app.state.hooks.counts()
    assert counts["accepted"] == 1 and counts["replayed"] == 1 and sum(counts.values()) == 2


@pytest.mark.parametrize("event", [
    alias_event(name="another-model"),
    alias_event(alias="Staging"),
    alias_event(alias="Production-previous"),
    {"entity": "model_version", "action": "created", "timestamp": "t",
     "data": {"name": "m", "version": "3", "source": "models:/m/3"}},
    {"entity": "model_version_tag", "action": "set", "timestamp": "t",
     "data": {"name": "m", "version": "1", "key": "k", "value": "v"}},
])
def test_a_valid_delivery_about_nothing_followed_is_204_and_ignored(app, models, nudges, event):
    r = deliver(app, event)
    assert r.status_code == 204 and r.content == b""
    assert nudges == [] and len(models.resolved) == 1
    assert app.state.hooks.counts()["ignored"] == 1


def test_the_canary_aliases_are_followed_and_a_deletion_too(app, follower, models, nudges):
    # The default canary alias: its creation starts a rollout, before any canary is held.
    assert deliver(app, alias_event(alias="Production-canary")).status_code == 202
    assert deliver(app, alias_event(alias="Production-canary", version=None,
                                    action="deleted")).status_code == 202
    assert nudges[-1] == ("webhook", nudges[-1][1]) and nudges[-1][1].version is None
    # A rollout in force on an alias of its own choosing.
    state = replace(rollout_state(), canary_alias="blue")
    route = route_of({"Production": "1", "blue": "2"}, {state_tag("Production"): state.to_json()},
                     "Production")
    assert route is not None and route.canary is not None
    assert deliver(app, alias_event(alias="blue")).status_code == 204  # not followed yet
    models.route = route
    follower.refresh()
    assert follower.state.canary is not None and follower.state.canary.route.alias == "blue"
    assert deliver(app, alias_event(alias="blue")).status_code == 202
    assert len(nudges) == 3


def test_a_flood_of_events_during_a_load_coalesces_into_one_more_check(app, follower, models):
    models.gated["1"] = gate = threading.Event()
    follower.start()  # its first check resolves (1 call), then hangs in the load of version 1
    try:
        assert models.loading.wait(10)
        replies = [deliver(app, alias_event(version="1")).status_code for _ in range(50)]
        assert replies == [202] * 50
        assert len(models.resolved) == 1  # the load is still running: nothing checked yet
        gate.set()
        assert until(lambda: len(models.resolved) >= 2)
        # One check answers all 50; a further one would follow at once (the poll is 60 s away).
        assert not until(lambda: len(models.resolved) > 2, timeout=0.5)
        assert follower.state.served is not None and follower.state.served.version == "1"
        assert app.state.hooks.counts()["accepted"] == 50
    finally:
        gate.set()
        follower.stop()


def test_without_a_secret_every_delivery_is_refused(follower, nudges, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    app = create_app(follower, manage_follower=False, webhook_secret=secret_from_env())
    r = deliver(app, alias_event())
    assert r.status_code == 401 and r.json()["reason"] == "no_secret"
    assert "no webhook secret configured" in r.json()["message"]
    assert nudges == [] and app.state.hooks.counts()["no_secret"] == 1
    assert call(app, "GET", "/health").json()["events"]["webhook"] == "off"
    monkeypatch.setenv(SECRET_ENV, "  ")
    assert secret_from_env() is None
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert secret_from_env() == SECRET


def test_the_poll_interval_defaults_to_a_minute_with_webhooks_on():
    assert poll_interval_for(ServeOptions("m"), webhooks=True) == 60
    assert poll_interval_for(ServeOptions("m"), webhooks=False) == 10
    assert poll_interval_for(ServeOptions("m", poll_interval=2.5), webhooks=True) == 2.5


def test_the_secret_is_never_shown(app, running, models, caplog):
    caplog.set_level("DEBUG")
    models.route = "2"
    assert deliver(app, alias_event(), delivery_id="d-1").status_code == 202
    assert until(lambda: running.state.served.version == "2")
    for wrong in ({"secret": SECRET + "x"}, {"timestamp": 1}, {"delivery_id": "d-1"}):
        assert deliver(app, alias_event(), **wrong).status_code in (401, 409)
    shown = [call(app, "GET", path).text for path in ("/health", "/version", "/metrics")]
    shown += [caplog.text, repr(app.state.hooks), repr(vars(app.state.hooks).keys())]
    assert "d-1" in caplog.text and "refused (stale)" in caplog.text  # the log speaks of the
    assert "refused (bad_signature)" in caplog.text  # deliveries ...
    assert not any(SECRET in text for text in shown)  # ... never of the secret


def test_a_delivery_signed_by_mlflow_itself_is_accepted(app, nudges):
    from mlflow.webhooks.delivery import _generate_hmac_signature

    # As mlflow.webhooks.delivery._send_webhook_request builds and sends it.
    payload = json.dumps({"entity": "model_version_alias", "action": "created",
                          "timestamp": "2026-11-27T17:44:08.275000+00:00",
                          "data": {"name": "m", "alias": "Production", "version": "2"}})
    delivery_id, stamp = str(uuid.uuid4()), str(int(time.time()))
    r = call(app, "POST", HOOK_PATH, content=payload.encode("utf-8"), headers={
        "Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, delivery_id, stamp, payload)})
    assert r.status_code == 202, r.text
    assert nudges[0][1].delivery_id == delivery_id
