"""Canary and shadow traffic in `promote serve`: in-process (the app of test_serve_app.py with
fake models, and the routes the registry gives during a rollout), then once as a real process
against the real MLflow test server, across a restart and a step.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from test_logstore import sql, wait_for
from test_serve_app import PAYLOAD, SumModel, call, sample
from test_serve_log import settled

from promotion.engine.rollout import (
    GUARD_MIN_REQUESTS,
    ErrorGuard,
    RolloutState,
    Route,
    in_slice,
    route_of,
    state_tag,
)
from promotion.monitoring.logstore import LogStore, LogWriter
from promotion.serve.app import create_app
from promotion.serve.follower import AliasFollower, Served

CANARY = "Production-canary"
STARTED = "2026-01-05T10:00:00.000+00:00"
GUARD = ErrorGuard(max=0.1)
V1, V2 = [3, 7], [30, 70]  # what versions 1 and 2 predict for PAYLOAD


def rollout_state(version: str = "2", steps: tuple[float, ...] = (0.05, 0.25, 1.0),
                  step: int = 0, mode: str = "canary", guard: ErrorGuard | None = GUARD,
                  production: str = "1") -> RolloutState:
    return RolloutState(alias="Production", canary_alias=CANARY, version=version, mode=mode,
                        steps=steps, step=step, started_at=STARTED, step_started_at=STARTED,
                        production=production, guard=guard)


def rollout(*args, production: str = "1", **kwargs) -> Route:
    """The route an endpoint reads from the registry during this rollout."""
    state = rollout_state(*args, production=production, **kwargs)
    route = route_of({"Production": production, CANARY: state.version},
                     {state_tag("Production"): state.to_json()}, "Production")
    assert route is not None and route.canary is not None
    return route


class Registry:
    """The route the registry gives, the models behind the versions, the loads asked for."""

    def __init__(self) -> None:
        self.route = Route("1")
        self.models: dict[str, object] = {"1": SumModel(1.0), "2": SumModel(10.0)}
        self.broken: set[str] = set()
        self.loads: list[str] = []
        self.paths: dict[str, str] = {}

    def resolve(self) -> Route:
        return self.route

    def load(self, version: str) -> Served:
        self.loads.append(version)
        if version in self.broken:
            raise FileNotFoundError(f"model.skops of version {version}")
        return Served(version=version, model=self.models[version], loaded_at=time.time(),
                      load_seconds=0.0, path=self.paths.get(version))


class Hanging:
    """A model that does not answer until released (the test releases it at teardown)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, data, params=None):
        self.entered.set()
        self.release.wait(30)
        return (data.sum(axis=1) * 10.0).to_numpy()


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def follower(registry: Registry) -> AliasFollower:
    f = AliasFollower("m", "Production", 60, registry.resolve, registry.load)
    f.refresh()  # version 1 is served
    return f


@pytest.fixture
def apps() -> Iterator:
    made = []

    def make(follower: AliasFollower, **kwargs):
        kwargs.setdefault("request_timeout", 5.0)
        app = create_app(follower, manage_follower=False, max_body_bytes=10_000, **kwargs)
        made.append(app)
        return app

    yield make
    for app in made:
        app.state.canary.mirror.stop(timeout=1)


@pytest.fixture
def store(tmp_path) -> Iterator[LogStore]:
    s = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def writer(store) -> Iterator[LogWriter]:
    w = LogWriter(store, flush_interval=0.01)
    w.start()
    yield w
    w.close(timeout=5)


def send(app, headers: list[dict[str, str]], payload=PAYLOAD) -> list[httpx.Response]:
    """POST /invocations once per item of `headers`, one after the other, in one event loop."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [await http.post("/invocations", json=payload, headers=h) for h in headers]

    return asyncio.run(go())


def versions(answers: list[httpx.Response]) -> list[str]:
    """The version each answer names; each must be a 200 with that version's predictions."""
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == (V2 if r.headers["X-Model-Version"] == "2" else V1)
    return [r.headers["X-Model-Version"] for r in answers]


def binomial_ok(count: int, n: int, share: float, sds: float = 4.5) -> bool:
    """`count` successes of `n` draws at `share`, within `sds` standard deviations (a false
    failure about once in 150,000 runs)."""
    return abs(count - n * share) <= sds * math.sqrt(n * share * (1 - share))


def canary_of(app) -> dict | None:
    return call(app, "GET", "/health").json()["canary"]


def gauge(app, name: str, **labels: str) -> float | None:
    return sample(app, name, model="m", alias="Production", **labels)


# -- canary mode: the share, the routing key ----------------------------------------------------


def test_the_canary_answers_its_share_of_requests(registry, follower, apps):
    registry.route = rollout(step=1)  # 25 %
    follower.refresh()
    app = apps(follower)
    ids = [f"req-{i}" for i in range(2000)]
    answered = versions(send(app, [{"X-Request-Id": rid} for rid in ids]))
    on_canary = [v == "2" for v in answered]
    # Without a routing key the request id decides, exactly as in_slice says ...
    salt = registry.route.canary.salt
    assert on_canary == [in_slice(rid, 0.25, salt) for rid in ids]
    # ... and the share is honoured.
    assert binomial_ok(sum(on_canary), len(ids), 0.25), sum(on_canary)
    assert sample(app, "promote_serve_requests_total", version="2", status="200") == sum(on_canary)
    assert canary_of(app) == {"alias": CANARY, "version": "2", "mode": "canary", "share": 0.25,
                              "step": 2, "steps": 3, "status": "serving", "reason": None}
    assert call(app, "GET", "/health").status_code == 200
    assert gauge(app, "promote_serve_canary_share") == 0.25
    assert gauge(app, "promote_serve_canary_step") == 2
    assert gauge(app, "promote_serve_canary_benched") == 0
    assert gauge(app, "promote_serve_canary_info", version="2", mode="canary") == 1
    doc = call(app, "GET", "/version").json()
    assert doc["canary"]["this_step"] == {
        "canary_requests": sum(on_canary), "canary_errors": 0,
        "primary_requests": len(ids) - sum(on_canary), "primary_errors": 0}


def test_a_routing_key_keeps_its_version_as_the_share_grows_and_the_route_changes(
        registry, follower, apps):
    registry.route = rollout(step=0)  # 5 %
    follower.refresh()
    app = apps(follower)
    keys = [f"client-{i}" for i in range(400)]
    first = versions(send(app, [{"X-Routing-Key": k} for k in keys]))
    # The key decides, whatever the request id.
    assert versions(send(app, [{"X-Routing-Key": k, "X-Request-Id": f"again-{k}"}
                               for k in keys])) == first
    at_5 = {k for k, v in zip(keys, first, strict=True) if v == "2"}
    assert at_5 and binomial_ok(len(at_5), len(keys), 0.05)

    # The next step is read with the alias at the next poll: no restart.
    registry.route = rollout(step=1)
    follower.refresh()
    assert canary_of(app)["share"] == 0.25 and canary_of(app)["step"] == 2
    later = versions(send(app, [{"X-Routing-Key": k} for k in keys]))
    at_25 = {k for k, v in zip(keys, later, strict=True) if v == "2"}
    assert at_5 <= at_25 and binomial_ok(len(at_25), len(keys), 0.25)

    # A routing key that is not usable is ignored: the request id decides.
    salt = registry.route.canary.salt
    inside = next(f"id-{i}" for i in range(100) if in_slice(f"id-{i}", 0.25, salt))
    outside = next(f"id-{i}" for i in range(100) if not in_slice(f"id-{i}", 0.25, salt))
    assert versions(send(app, [{"X-Routing-Key": "has space", "X-Request-Id": rid}
                               for rid in (inside, outside)])) == ["2", "1"]

    # Aborted: the route names no canary any more, and every request goes to version 1.
    registry.route = Route("1", note="the rollout of version 2 is not in force: "
                                     "@Production-canary points at nothing")
    follower.refresh()
    assert canary_of(app) is None and follower.state.canary is None
    assert set(versions(send(app, [{"X-Routing-Key": k} for k in sorted(at_25)]))) == {"1"}
    doc = call(app, "GET", "/version").json()
    assert doc["canary"] is None and "points at nothing" in doc["rollout_note"]
    assert gauge(app, "promote_serve_canary_share") == 0
    assert gauge(app, "promote_serve_canary_info", version="2", mode="canary") is None


def test_bad_input_is_answered_by_the_canary_as_it_is(registry, follower, apps):
    registry.route = rollout(steps=(1.0,))
    follower.refresh()
    app = apps(follower)
    [r] = send(app, [{}], payload={"inputs": [1], "extra": 1})
    assert r.status_code == 400 and r.headers["X-Model-Version"] == "2"
    assert gauge(app, "promote_serve_canary_fallbacks_total") == 0


# -- canary mode: failures --------------------------------------------------------------------


def test_a_failing_canary_is_answered_for_by_the_primary_then_benched_for_its_step(
        registry, follower, apps, store, writer):
    failing = SumModel(10.0, fail=RuntimeError("CUDA out of memory"))
    registry.models["2"] = failing
    registry.route = rollout(steps=(0.5, 1.0), step=0)
    follower.refresh()
    app = apps(follower, log=writer)
    salt = registry.route.canary.salt
    keys = [k for k in (f"k{i}" for i in range(500)) if in_slice(k, 0.5, salt)]
    sent = GUARD_MIN_REQUESTS + 10
    answers = send(app, [{"X-Routing-Key": k, "X-Request-Id": f"r{i}"}
                         for i, k in enumerate(keys[:sent])])
    # Every client got version 1's answer ...
    assert versions(answers) == ["1"] * sent
    # ... the first GUARD_MIN_REQUESTS after the canary failed them; then the guard benched it
    # and no request went to it again in this step.
    assert gauge(app, "promote_serve_canary_fallbacks_total") == GUARD_MIN_REQUESTS
    assert sample(app, "promote_serve_request_errors_total", version="2",
                  reason="model_error") == GUARD_MIN_REQUESTS
    canary = canary_of(app)
    assert canary["status"] == "benched"
    assert canary["reason"] == (f"errors: error rate 1 over {GUARD_MIN_REQUESTS} requests "
                                "breaches max 0.1")
    assert gauge(app, "promote_serve_canary_benched") == 1
    assert gauge(app, "promote_serve_canary_share") == 0
    doc = call(app, "GET", "/version").json()
    assert doc["canary"]["this_step"] == {
        "canary_requests": GUARD_MIN_REQUESTS, "canary_errors": GUARD_MIN_REQUESTS,
        "primary_requests": sent, "primary_errors": 0}
    assert doc["canary_totals"]["fallbacks"] == GUARD_MIN_REQUESTS
    # Both attempts are in the log: the canary's failure, then the answer.
    settled(writer, sent + GUARD_MIN_REQUESTS)
    logged = sql(store, "SELECT request_id, alias, version, outcome, status, role "
                 "FROM inference_requests ORDER BY id")
    assert logged[:2] == [("r0", CANARY, "2", "model_error", 500, "attempt"),
                          ("r0", "Production", "1", "ok", 200, None)]
    assert len(logged) == sent + GUARD_MIN_REQUESTS

    # The next step starts the guard again, and the canary (fixed meanwhile) answers.
    failing.fail = None
    registry.route = rollout(steps=(0.5, 1.0), step=1)
    follower.refresh()
    assert canary_of(app)["status"] == "serving" and gauge(app, "promote_serve_canary_share") == 1
    assert versions(send(app, [{"X-Routing-Key": keys[0]}])) == ["2"]
    assert registry.loads == ["1", "2"]  # the same version: not loaded again


def test_a_canary_slower_than_half_the_timeout_is_answered_for_by_the_primary(
        registry, follower, apps):
    hanging = Hanging()
    registry.models["2"] = hanging
    registry.route = rollout(steps=(1.0,), guard=None)
    follower.refresh()
    app = apps(follower, request_timeout=0.4)
    try:
        answers = send(app, [{"X-Request-Id": "slow"}, {"X-Request-Id": "next"}])
        assert versions(answers) == ["1", "1"]
        # The first waited half the timeout for the canary, then version 1 answered it; the
        # second did not go to the canary at all: its thread is still stuck, so it gets no more.
        assert gauge(app, "promote_serve_canary_fallbacks_total") == 1
        assert sample(app, "promote_serve_requests_total", version="2", status="504") == 1
        assert sample(app, "promote_serve_requests_total", version="1", status="200") == 2
        assert sample(app, "promote_serve_request_errors_total", version="2",
                      reason="timeout") == 1
        canary = canary_of(app)
        assert canary["status"] == "benched" and canary["reason"].startswith("busy: 1 ")
    finally:
        hanging.release.set()
    wait_for(lambda: app.state.canary.late.count == 0, what="the canary's thread returned")
    assert canary_of(app)["status"] == "serving"
    assert versions(send(app, [{}])) == ["2"]


def test_a_canary_that_cannot_be_loaded_is_benched_for_its_step(registry, follower, apps):
    registry.broken = {"2"}
    registry.route = rollout(steps=(0.5, 1.0), step=0)
    follower.refresh()
    state = follower.state
    # The primary is untouched ...
    assert state.served.version == "1" and state.in_sync
    assert state.last_error is None and state.load_failures == 0
    # ... and the canary gets no traffic for the rest of the step.
    assert state.canary.status == "benched"
    assert state.canary.benched.startswith("load failed: FileNotFoundError: model.skops")
    app = apps(follower)
    assert set(versions(send(app, [{"X-Routing-Key": f"k{i}"} for i in range(50)]))) == {"1"}
    canary = canary_of(app)
    assert canary["status"] == "benched" and canary["reason"].startswith("load failed")
    assert gauge(app, "promote_serve_canary_benched") == 1
    assert gauge(app, "promote_serve_canary_share") == 0
    follower.refresh()  # the same step: not tried again
    assert registry.loads == ["1", "2"]

    registry.broken = set()
    registry.route = rollout(steps=(0.5, 1.0), step=1)
    follower.refresh()  # the next step: tried again
    assert registry.loads == ["1", "2", "2"] and follower.state.canary.status == "serving"
    assert versions(send(app, [{}])) == ["2"]


def test_a_promoted_canary_is_swapped_in_as_it_is_and_an_aborted_one_is_dropped(
        registry, tmp_path):
    for version in "123":
        registry.paths[version] = str(tmp_path / version)
        (tmp_path / version).mkdir()
    registry.models["3"] = SumModel(3.0)
    follower = AliasFollower("m", "Production", 60, registry.resolve, registry.load)
    registry.route = rollout(step=0)
    follower.refresh()
    assert registry.loads == ["1", "2"]  # the primary first, then the canary
    canary = follower.state.canary.served
    assert follower.state.served.version == "1" and canary.version == "2"

    registry.route = Route("2")  # promoted: @Production on 2, the rollout cleared
    assert follower.refresh() is True
    assert follower.state.served is canary and follower.state.canary is None
    assert registry.loads == ["1", "2"]  # taken as it was, not loaded again
    assert (tmp_path / "2").exists()

    registry.route = rollout(version="3", production="2")
    follower.refresh()
    assert follower.state.canary.served.version == "3"
    registry.route = Route("2")  # aborted
    follower.refresh()
    assert follower.state.canary is None and follower.state.served is canary
    # Files go one retirement later: version 1's now, version 3's with the next one.
    assert not (tmp_path / "1").exists()
    assert (tmp_path / "2").exists() and (tmp_path / "3").exists()


# -- shadow mode --------------------------------------------------------------------------------


def test_shadow_copies_never_change_the_answer_and_their_failures_bench_the_canary(
        registry, follower, apps):
    registry.models["2"] = SumModel(fail=RuntimeError("boom"))
    registry.route = rollout(steps=(1.0,), mode="shadow")
    follower.refresh()
    app = apps(follower)
    mirror = app.state.canary.mirror
    for i in range(GUARD_MIN_REQUESTS + 5):
        assert versions(send(app, [{"X-Request-Id": f"r{i}"}])) == ["1"]
        expected = min(i + 1, GUARD_MIN_REQUESTS)  # benched after that: no more copies
        wait_for(lambda n=expected: mirror.stats().failed == n, what=f"{expected} copies")
    stats = mirror.stats()
    assert (stats.scored, stats.failed, stats.dropped, stats.queued) == (0, GUARD_MIN_REQUESTS,
                                                                        0, 0)
    canary = canary_of(app)
    assert canary["mode"] == "shadow" and canary["status"] == "benched"
    assert canary["reason"].startswith("errors: error rate 1 over")
    assert gauge(app, "promote_serve_shadow_copies_total", outcome="failed") == GUARD_MIN_REQUESTS
    assert sample(app, "promote_serve_requests_total", version="1", status="200") == \
        GUARD_MIN_REQUESTS + 5


def test_a_hanging_shadow_canary_blocks_only_its_own_thread(registry, follower, apps,
                                                             monkeypatch):
    monkeypatch.setattr("promotion.serve.app.SHADOW_STOP_TIMEOUT", 0.1)
    hanging = Hanging()
    registry.models["2"] = hanging
    registry.route = rollout(steps=(1.0,), mode="shadow", guard=None)
    follower.refresh()
    app = apps(follower, shadow_queue=3)
    mirror = app.state.canary.mirror

    async def scenario() -> float:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                first = await http.post("/invocations", json=PAYLOAD)
                assert await asyncio.to_thread(hanging.entered.wait, 10)
                # The canary is stuck on the first copy; the primary answers everything.
                rest = [await http.post("/invocations", json=PAYLOAD) for _ in range(9)]
                assert versions([first, *rest]) == ["1"] * 10
                stats = mirror.stats()
                assert (stats.queued, stats.dropped, stats.scored) == (3, 6, 0)
                assert gauge(app, "promote_serve_shadow_queue_depth") == 3
                assert gauge(app, "promote_serve_shadow_copies_total", outcome="dropped") == 6
                version = (await http.get("/version")).json()
                assert version["canary_totals"] == {
                    "fallbacks": 0, "shadow_scored": 0, "shadow_failed": 0,
                    "shadow_dropped": 6, "shadow_queued": 3, "shadow_batches": 0}
            stopping = time.monotonic()
        return time.monotonic() - stopping

    try:
        # Shutting down does not wait for the hung canary (a bounded join of a daemon thread).
        assert asyncio.run(scenario()) < 2.0
        assert mirror.stats().dropped == 9  # what was still queued is dropped
    finally:
        hanging.release.set()


class Counting(Hanging):
    """Blocks its first call until released; then answers at once. Counts rows per call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def predict(self, data, params=None):
        self.calls.append(len(data))
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait(30)
        return (data.sum(axis=1) * 10.0).to_numpy()


def test_copies_queued_while_the_canary_scores_are_scored_together_each_its_own_rows(
        registry, follower, apps, store, writer):
    canary = Counting()
    registry.models["2"] = canary
    registry.route = rollout(steps=(1.0,), mode="shadow", guard=None)
    follower.refresh()
    app = apps(follower, log=writer, rng=random.Random(1))
    rows = [[[i, 1], [i, 2]] if i % 3 else [[i, 5]] for i in range(20)]  # 1 or 2 rows each
    answers = send(app, [{"X-Request-Id": "r0"}], payload={
        "dataframe_split": {"columns": ["a", "b"], "data": rows[0]}})
    assert canary.entered.wait(10)
    for i in range(1, 20):  # queued while the canary is busy with the first copy
        answers += send(app, [{"X-Request-Id": f"r{i}"}], payload={
            "dataframe_split": {"columns": ["a", "b"], "data": rows[i]}})
    canary.release.set()
    assert [(a.status_code, a.headers["X-Model-Version"], a.json()["predictions"])
            for a in answers] == [(200, "1", [float(sum(r)) for r in rows[i]])
                                  for i in range(20)]
    mirror = app.state.canary.mirror
    wait_for(lambda: mirror.stats().scored == 20, what="every copy scored")
    assert canary.calls == [1, sum(len(r) for r in rows[1:])]  # the first alone, then one call
    assert mirror.stats().batches == 1
    settled(writer, 40)
    shadow = {(rid, row): p for rid, row, p in sql(
        store, "SELECT request_id, row, prediction FROM inference_rows WHERE version = '2'")}
    assert shadow == {(f"r{i}", j): 10.0 * sum(r) for i in range(20)
                      for j, r in enumerate(rows[i])}


def test_the_log_pairs_a_request_and_its_shadow_copy_by_request_id_and_row(
        registry, follower, apps, store, writer):
    registry.route = rollout(steps=(0.5, 1.0), mode="shadow")
    follower.refresh()
    app = apps(follower, log=writer, sample_rate=0.5, rng=random.Random(3))
    ids = [f"r{i}" for i in range(40)]
    assert set(versions(send(app, [{"X-Request-Id": rid} for rid in ids]))) == {"1"}
    mirrored = [rid for rid in ids if in_slice(rid, 0.5, registry.route.canary.salt)]
    wait_for(lambda: app.state.canary.mirror.stats().scored == len(mirrored),
             what="the copies scored")
    settled(writer, len(ids) + len(mirrored))

    logged = sql(store, "SELECT request_id, alias, version, at, outcome, sampled_rows "
                 "FROM inference_requests")
    primary = {r[0]: r for r in logged if r[1] == "Production"}
    shadow = {r[0]: r for r in logged if r[1] == CANARY}
    assert set(primary) == set(ids) and set(shadow) == set(mirrored)
    for rid, copy in shadow.items():
        # The same request: its id, its arrival, its sampling; the canary's version.
        assert copy[2] == "2" and primary[rid][2] == "1" and copy[4] == "ok"
        assert copy[3] == primary[rid][3] and copy[5] == primary[rid][5]
    sampled = [rid for rid in mirrored if shadow[rid][5]]
    assert 0 < len(sampled) < len(mirrored)
    predictions: dict[tuple[str, int], dict[str, float]] = {}
    for rid, row, version, prediction in sql(
            store, "SELECT request_id, row, version, prediction FROM inference_rows"):
        predictions.setdefault((rid, row), {})[version] = prediction
    for rid in sampled:
        assert predictions[(rid, 0)] == {"1": 3.0, "2": 30.0}
        assert predictions[(rid, 1)] == {"1": 7.0, "2": 70.0}
    roles = {r[0]: r[1] for r in sql(store, "SELECT alias, role FROM inference_requests")}
    assert roles == {"Production": None, CANARY: "shadow"}
    # A label for a mirrored request is about one request: accepted, and it joins both
    # versions' predictions of its row.
    answer = call(app, "POST", "/feedback", json={"labels": [
        {"request_id": sampled[0], "row": 1, "label": 8.0}]})
    assert answer.status_code == 200 and answer.json()["by_version"] == {"1": 1}


# -- a real `promote serve` ------------------------------------------------------------------------


@pytest.mark.mlflow
def test_a_real_endpoint_keeps_each_routing_key_on_its_version_across_a_restart_and_a_step(
        tracking_uri, client, model_name, tmp_path):
    """... and then, in shadow mode, its worker process scores the copies in batches and logs
    them beside the answers."""
    from test_serve import _wait_until, expected, log_version, serving, split_payload

    from promotion.registry.rollouts import read_route, write_state

    v1, v2 = log_version(model_name, "a"), log_version(model_name, "b")
    client.set_registered_model_alias(model_name, "Production", v1)
    client.set_registered_model_alias(model_name, CANARY, v2)
    state = rollout_state(version=v2, steps=(0.3, 0.6, 1.0), production=v1, guard=None)
    write_state(client, model_name, "Production", state.to_json())
    salt = read_route(client, model_name, "Production").canary.salt
    keys = [f"client-{i}" for i in range(300)]
    kinds = {v1: "a", v2: "b"}

    def route_all(endpoint) -> dict[str, str]:
        async def go() -> list[httpx.Response]:
            limit = asyncio.Semaphore(8)
            async with httpx.AsyncClient(timeout=30) as http:
                async def one(key: str) -> httpx.Response:
                    async with limit:
                        return await http.post(endpoint.url + "/invocations",
                                               json=split_payload(),
                                               headers={"X-Routing-Key": key})
                return await asyncio.gather(*(one(k) for k in keys))

        found = {}
        for key, r in zip(keys, asyncio.run(go()), strict=True):
            assert r.status_code == 200, r.text
            found[key] = r.headers["X-Model-Version"]
            assert r.json()["predictions"] == pytest.approx(expected(kinds[found[key]]))
        return found

    def canary_ready(endpoint, share: float) -> None:
        def ready() -> bool:
            canary = endpoint.get("/health").json()["canary"] or {}
            return canary.get("status") == "serving" and canary.get("share") == share
        _wait_until(ready, 60, lambda: f"{endpoint.get('/version').text}\n"
                                       f"{endpoint.log()[-3000:]}")

    with serving(tracking_uri, model_name, "--poll-interval", "0.5") as endpoint:
        canary_ready(endpoint, 0.3)
        first = route_all(endpoint)
    on_canary = {k for k, v in first.items() if v == v2}
    assert on_canary == {k for k in keys if in_slice(k, 0.3, salt)}
    assert binomial_ok(len(on_canary), len(keys), 0.3), len(on_canary)

    # A replica restarted mid-step remembers nothing, and sends every key where it went before.
    log = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    with serving(tracking_uri, model_name, "--poll-interval", "0.5", "--log-uri",
                 log.uri) as endpoint:
        canary_ready(endpoint, 0.3)
        assert route_all(endpoint) == first
        # The next step, followed without a restart.
        write_state(client, model_name, "Production", state.advanced(STARTED).to_json())
        canary_ready(endpoint, 0.6)
        later = route_all(endpoint)
        # Shadow mode: every answer from Production; every copy scored by the worker process.
        shadow = replace(rollout_state(version=v2, steps=(1.0,), production=v1, guard=None,
                                       mode="shadow"),  # another rollout: another start
                         started_at="2026-12-02T00:00:00.000Z",
                         step_started_at="2026-12-02T00:00:00.000Z")
        write_state(client, model_name, "Production", shadow.to_json())
        canary_ready(endpoint, 1.0)
        assert set(route_all(endpoint).values()) == {v1}
        _wait_until(lambda: endpoint.get("/version").json()["canary_totals"]["shadow_scored"]
                    == len(keys), 120, lambda: f"{endpoint.get('/version').text}\n"
                                               f"{endpoint.log()[-3000:]}")
        totals = endpoint.get("/version").json()["canary_totals"]
        assert totals["shadow_failed"] == 0 and 0 < totals["shadow_batches"] < len(keys)
    on_canary_later = {k for k, v in later.items() if v == v2}
    assert on_canary <= on_canary_later
    assert binomial_ok(len(on_canary_later), len(keys), 0.6), len(on_canary_later)
    shadow_rows = sql(log, "SELECT COUNT(*) FROM inference_requests WHERE role = 'shadow'")
    assert shadow_rows == [(len(keys),)]
    ours, theirs = log.paired(model_name, v1, v2, datetime(2000, 1, 1, tzinfo=UTC),
                              datetime(2100, 1, 1, tzinfo=UTC))
    assert len(ours) == len(keys) * len(expected("a"))  # every row of every copy, paired
    assert theirs.tolist() == pytest.approx(expected("b") * len(keys))
    log.close()


def test_split_cuts_one_calls_predictions_back_into_each_requests_own():
    import numpy as np
    import pandas as pd

    from promotion.serve.shadowscore import split

    assert [p.tolist() for p in split(np.arange(5), [2, 1, 2])] == [[0, 1], [2], [3, 4]]
    assert split([7, 8, 9], [1, 2]) == [[7], [8, 9]]
    series = split(pd.Series([1.0, 2.0, 3.0], index=[10, 11, 12]), [2, 1])
    assert [s.tolist() for s in series] == [[1.0, 2.0], [3.0]] and series[1].index[0] == 0
    frames = split(pd.DataFrame({"p": [1, 2, 3], "q": [4, 5, 6]}), [1, 2])
    assert frames[1].to_dict("list") == {"p": [2, 3], "q": [5, 6]}
    parts = split({"label": np.array(["a", "b", "c"])}, [2, 1])
    assert [p["label"].tolist() for p in parts] == [["a", "b"], ["c"]]
    with pytest.raises(ValueError):
        split(np.arange(4), [2, 1])  # one prediction too many: not ours to guess
    with pytest.raises(ValueError):
        split("positive", [1])
