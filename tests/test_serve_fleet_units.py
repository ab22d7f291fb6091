"""The pieces of a multi-model endpoint that need no registry: specs, sizes, the eviction plan, the
memory budget, the local cache's pointers, the registry's condition, the follower's lazy, pinned
and cache behaviours, and the routes of an app of several models (in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest

from promotion.errors import InvalidInput, RegistryError
from promotion.serve.app import fleet_app
from promotion.serve.budget import MemoryBudget, Resident, plan_evictions
from promotion.serve.cache import ServeCache, default_cache_dir, registry_key
from promotion.serve.documents import HUNG_POLLS, model_status, registry_view
from promotion.serve.fleet import build_fleet
from promotion.serve.follower import AliasFollower, Served
from promotion.serve.loading import RegistryCheck, probe_timeout
from promotion.serve.specs import ModelSpec, format_size, parse_size, parse_specs
from promotion.serve.state import FollowerState

# -- specs and sizes -----------------------------------------------------------------------------


def test_specs_follow_an_alias_or_pin_a_version():
    specs = parse_specs(["a", "b@Staging", "c/007"], "Production", lazy=["c"])
    assert specs == (ModelSpec("a", "Production"), ModelSpec("b", "Staging"),
                     ModelSpec("c", version="7", lazy=True))
    assert [str(s) for s in specs] == ["a@Production", "b@Staging", "c/7"]
    assert [s.label for s in specs] == ["Production", "Staging", "v7"]
    assert specs[2].pinned and not specs[0].pinned


@pytest.mark.parametrize(("specs", "lazy", "words"), [
    ([""], [], "'': the model name is empty"),
    (["a@"], [], "'a@': the alias after @ is empty"),
    (["a/x"], [], "'a/x': the version after / must be a positive integer"),
    (["a/0"], [], "'a/0': the version"),
    (["a/"], [], "'a/': the version"),
    (["@b"], [], "'@b': the model name is empty"),
    (["a@b@c"], [], "'a@b@c': one @ at most"),
    (["a@b/1"], [], "'a@b/1': use NAME, NAME@ALIAS or NAME/VERSION"),
    (["a", "b", "a@Staging"], [], "'a@Staging': model 'a' is named twice"),
    (["a", "a/1"], [], "model 'a' is named twice"),
    (["a"], ["b"], "--lazy b: no model spec names 'b'"),
    ([], [], "name at least one model"),
])
def test_a_bad_spec_is_one_line_naming_it(specs, lazy, words):
    with pytest.raises(InvalidInput) as refused:
        parse_specs(specs, "Production", lazy)
    message = str(refused.value)
    assert words in message and "\n" not in message


@pytest.mark.parametrize(("text", "size"), [
    ("1000", 1000), ("2GiB", 2 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5GB", 1_500_000_000),
    ("800M", 800_000_000), ("64 kib", 65536), ("3Gi", 3 * 1024**3), ("1tb", 10**12),
])
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "2 GiBs", "-1", "0", "0.1", "1e9", "2 G B"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_print_as_people_read_them():
    assert [format_size(n) for n in (512, 8085, 3 * 1024**3)] == ["512 B", "7.9 KiB", "3.0 GiB"]


# -- the eviction plan and the budget -------------------------------------------------------------


def resident(name: str, footprint: int, evictable: bool = True, used: float = 0.0) -> Resident:
    return Resident(name, footprint, evictable, used)


def test_nothing_is_evicted_while_the_load_fits_or_without_a_budget():
    residents = [resident("a", 40, False), resident("b", 30)]
    assert plan_evictions(residents, "c", 30, 100).evict == ()
    plan = plan_evictions(residents, "c", 1000, None)
    assert plan.evict == () and plan.fits and plan.used == 1070


def test_the_least_recently_used_lazy_models_go_first_and_only_as_many_as_needed():
    residents = [resident("req", 50, False, used=0.0), resident("old", 20, used=1.0),
                 resident("older", 20, used=0.5), resident("new", 20, used=9.0)]
    plan = plan_evictions(residents, "x", 20, 115)  # 130 held: 15 too many
    assert plan.evict == ("older",) and plan.fits and plan.used == 110
    plan = plan_evictions(residents, "x", 40, 115)
    assert plan.evict == ("older", "old") and plan.fits


def test_required_models_are_never_evicted_even_when_the_load_does_not_fit():
    residents = [resident("req", 90, False), resident("lazy", 20, used=5.0)]
    plan = plan_evictions(residents, "x", 30, 100)
    assert plan.evict == ("lazy",) and not plan.fits and plan.used == 120


def test_the_loading_models_own_footprint_is_replaced_not_added():
    residents = [resident("x", 60), resident("y", 30, used=1.0)]
    assert plan_evictions(residents, "x", 70, 100).evict == ()


def test_the_budget_evicts_counts_and_holds_room_for_loads_in_progress():
    held = {"a": 50, "b": 30}
    evicted: list[str] = []
    budget = MemoryBudget(100, evictable=["b", "c", "d"], clock=iter(range(100)).__next__)
    budget.attach(lambda: [Resident(n, size, n != "a", budget.last_used(n) or 0.0)
                           for n, size in held.items()],
                  lambda name: (evicted.append(name), held.pop(name)))
    budget.touch("b")
    # c fits (100); while it loads its room is held, so d's load evicts b, the least recently
    # used.
    with budget.admit("c", 20), budget.admit("d", 20):
        assert evicted == ["b"]
    held.update(c=20, d=20)
    assert budget.counts() == {"b": (0, 1), "c": (1, 0), "d": (1, 0)}
    with pytest.raises(RuntimeError), budget.admit("c", 20):
        raise RuntimeError("the load failed")
    assert budget.counts()["c"] == (1, 0)  # a failed load is not counted


def test_the_budget_warns_once_when_the_models_never_evicted_exceed_it(caplog):
    budget = MemoryBudget(100, evictable=["z"])
    held: dict[str, int] = {}
    budget.attach(lambda: [Resident(n, s, False) for n, s in held.items()], lambda n: None)
    caplog.set_level(logging.WARNING, "promotion.serving")
    for name in ("a", "b", "c"):
        with budget.admit(name, 60):
            held[name] = 60
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "never evicted need 120 B" in warnings[0]


# -- the local cache -----------------------------------------------------------------------------


def model_dir(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "MLmodel").write_text(text)
    (root / "model.skops").write_text("weights " + text)
    return root


def served(version: str, directory: Path, run_id: str = "r1") -> Served:
    return Served(version=version, model=None, loaded_at=0.0, load_seconds=0.0, run_id=run_id,
                  model_dir=str(directory))


def test_the_cache_keeps_a_version_and_points_at_it_atomically(tmp_path):
    cache = ServeCache(tmp_path / "cache", "http://alice:s3cret@mlflow.internal:5000/")
    entry = cache.keep("my model", "Production", served("3", model_dir(tmp_path / "v3", "m3")))
    assert entry.version == "3" and (entry.path / "MLmodel").read_text() == "m3"
    pointer = cache.pointer("my model", "Production")
    document = json.loads(pointer.read_text())
    assert {k: document[k] for k in ("schema_version", "model", "alias", "version", "run_id",
                                     "previous_version")} == {
        "schema_version": 1, "model": "my model", "alias": "Production", "version": "3",
        "run_id": "r1", "previous_version": None}
    assert document["path"] == str(entry.path) and document["cached_at"]
    assert [p.name for p in pointer.parent.iterdir() if p.name.startswith(".tmp")] == []
    assert cache.read("my model", "Production") == entry
    every_file = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert "s3cret" not in every_file and "alice" not in every_file


def test_the_cache_keeps_the_current_and_the_previous_version_only(tmp_path):
    cache = ServeCache(tmp_path / "cache", "http://mlflow:5000")
    for version in "1234":
        cache.keep("m", "Production", served(version, model_dir(tmp_path / version, version)))
    versions = cache.pointer("m", "Production").parent / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["3", "4"]
    assert json.loads(cache.pointer("m", "Production").read_text())["previous_version"] == "3"
    # Another alias of the same model (another endpoint sharing the cache) keeps its own.
    cache.keep("m", "Staging", served("1", model_dir(tmp_path / "s1", "1")))
    assert sorted(p.name for p in versions.iterdir()) == ["1", "3", "4"]


def test_a_registry_is_known_by_its_uri_without_credentials():
    assert registry_key("http://alice:s3cret@mlflow:5000/") == registry_key("http://mlflow:5000")
    assert registry_key("http://mlflow:5000?token=x") == registry_key("http://mlflow:5000")
    assert registry_key("http://mlflow:5000") != registry_key("http://mlflow:5001")


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "Expecting property name"),
    ("[1, 2]", "not a JSON object"),
    ('{"schema_version": 9}', "schema_version is not 1"),
    ('{"schema_version": 1, "model": "other", "alias": "Production", "version": "1"}',
     "does not name m@Production"),
    ('{"schema_version": 1, "model": "m", "alias": "Production", "version": "one"}',
     "no version number"),
    ('{"schema_version": 1, "model": "m", "alias": "Production", "version": "8"}',
     "the directory of version 8 is gone"),
])
def test_a_bad_pointer_is_a_warning_and_is_ignored(tmp_path, caplog, content, why):
    cache = ServeCache(tmp_path, "http://mlflow:5000")
    assert cache.read("m", "Production") is None  # no pointer: silently nothing
    pointer = cache.pointer("m", "Production")
    pointer.parent.mkdir(parents=True)
    pointer.write_text(content)
    caplog.set_level(logging.WARNING, "promotion.serving")
    assert cache.read("m", "Production") is None
    assert "ignoring the cache pointer" in caplog.text and why in caplog.text


def test_the_default_cache_dir_follows_xdg(tmp_path):
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "promote" / "serve"
    assert default_cache_dir({}).parts[-3:] == (".cache", "promote", "serve")


# -- the registry's condition --------------------------------------------------------------------


def test_the_registry_is_unreachable_when_the_last_check_failed_or_one_hangs():
    ok = FollowerState(checked_at=100.0)
    assert registry_view(ok, 1.0, 200.0).status == "ok"
    failed = FollowerState(checked_at=100.0, unreachable_since=101.0)
    view = registry_view(failed, 1.0, 102.0)
    assert (view.status, view.since, view.last_ok_at) == ("unreachable", 101.0, 100.0)
    hung = FollowerState(checked_at=100.0, checking_since=101.0)
    assert registry_view(hung, 1.0, 101.0 + HUNG_POLLS).status == "ok"
    view = registry_view(hung, 1.0, 101.1 + HUNG_POLLS)
    assert (view.status, view.since) == ("unreachable", 101.0)


def test_a_models_status_says_what_it_serves_and_whether_the_registry_answers():
    from_cache = Served(version="1", model=None, loaded_at=0, load_seconds=0, source="cache")
    state = FollowerState(served=from_cache, unreachable_since=5.0)
    view = registry_view(state, 1.0, 6.0)
    assert view.served_from == "cache"
    assert model_status(state, view, lazy=False, active=True) == "degraded"
    empty = FollowerState()
    view = registry_view(empty, 1.0, 6.0)
    assert model_status(empty, view, lazy=True, active=False) == "unloaded"
    assert model_status(empty, view, lazy=True, active=True) == "loading"
    assert model_status(empty, view, lazy=False, active=True) == "loading"


def test_once_a_check_fails_the_next_ones_are_short_probes_and_sometimes_a_full_one():
    answers: list[Exception | str] = []
    bounds: list[float] = []

    def read(bound: float) -> str:
        bounds.append(bound)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    check = RegistryCheck(read, timeout=10.0, probe=probe_timeout(0.5))
    answers += ["1", RegistryError("no answer within 10 s")] + [RegistryError("down")] * 6
    answers += ["1", InvalidInput("alias gone"), "1"]
    for _ in answers[:]:
        with contextlib.suppress(RegistryError, InvalidInput):
            check()
    assert bounds == [10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 10.0, 1.0, 1.0, 10.0, 10.0]
    assert RegistryCheck(read, 10.0, 30.0).probe == 10.0  # never longer than the timeout
    assert RegistryCheck(read, 10.0, 2.0, failed=True).bound() == 2.0


def test_a_bounded_read_fails_fast_through_the_mlflow_internals_it_relies_on():
    """promotion.registry.internals.read_within uses MLflow's REST store and request function:
    an upgrade that moves them fails here."""
    import mlflow

    from promotion.registry.bounded import route_within, version_within

    client = mlflow.MlflowClient("http://127.0.0.1:9", "http://127.0.0.1:9")
    for read in (lambda: route_within(client, "m", "Production", timeout=1.0),
                 lambda: version_within(client, "m", "1", timeout=1.0)):
        with pytest.raises(RegistryError) as refused:
            read()
        assert "127.0.0.1:9" in str(refused.value)


# -- the follower: lazy, pinned, cached ----------------------------------------------------------


class Registry:
    def __init__(self) -> None:
        self.target = "1"
        self.down = False
        self.checks = 0
        self.loads: list[str] = []
        self.during_load = lambda: None

    def resolve(self) -> str:
        self.checks += 1
        if self.down:
            raise ConnectionError("no route to host")
        return self.target

    def load(self, version: str) -> Served:
        self.loads.append(version)
        self.during_load()
        return Served(version=version, model=SumModel(float(version)), loaded_at=time.time(),
                      load_seconds=0.0, footprint=100, model_dir=f"/models/{version}")

    def cached(self) -> Served:
        self.loads.append("cache")
        return Served(version="1", model=SumModel(1.0), loaded_at=time.time(), load_seconds=0.0,
                      source="cache", footprint=100)


class SumModel:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, data, params=None):
        return (data.sum(axis=1) * self.factor).to_numpy()


def test_a_lazy_follower_only_checks_until_activated_and_loads_nothing_after_an_unload():
    registry = Registry()
    follower = AliasFollower("m", "Production", 1.0, registry.resolve, registry.load, lazy=True)
    assert follower.refresh() is False and registry.loads == []
    assert follower.state.alias_version == "1" and not follower.active
    follower.activate()
    assert follower.refresh("start") is True and registry.loads == ["1"]
    assert follower.unload().version == "1"
    assert follower.state.served is None and not follower.active
    registry.target = "2"
    assert follower.refresh() is False and registry.loads == ["1"]


def test_a_load_that_ends_after_an_unload_is_dropped():
    registry = Registry()
    follower = AliasFollower("m", "Production", 1.0, registry.resolve, registry.load, lazy=True)
    follower.activate()
    registry.during_load = follower.unload  # evicted while it loads
    assert follower.refresh("start") is False
    assert follower.state.served is None and registry.loads == ["1"]


def test_a_pinned_version_is_not_polled_once_served():
    registry = Registry()
    follower = AliasFollower("m", "v1", 0.01, registry.resolve, registry.load, pinned=True)
    follower.start()
    try:
        assert follower.wait_until_serving(10).version == "1"
        time.sleep(0.2)  # twenty poll intervals: no check
        assert registry.checks == 1
    finally:
        follower.stop()
    assert follower.what == "m/1"


def test_with_the_registry_down_the_cached_version_is_served_and_the_registry_followed_later():
    registry = Registry()
    registry.down = True
    kept: list[str] = []
    follower = AliasFollower("m", "Production", 1.0, registry.resolve, registry.load,
                             fallback=registry.cached,
                             kept=lambda s: kept.append(s.version), unreachable_since=50.0)
    assert follower.refresh("start") is True
    state = follower.state
    assert state.served.source == "cache" and state.unreachable_since == 50.0
    assert registry.loads == ["cache"] and kept == []  # a cached version is not kept again
    assert "cannot resolve m@Production" in state.last_error.message
    registry.down, registry.target = False, "2"
    assert follower.refresh() is True
    assert follower.state.served.version == "2" and follower.state.unreachable_since is None
    assert kept == ["2"]


def test_a_missing_alias_is_no_unreachable_registry():
    def gone() -> str:
        raise InvalidInput("resolving m@Production: Registered model alias Production not found.")

    follower = AliasFollower("m", "Production", 1.0, gone, Registry().load)
    follower.refresh()
    assert follower.state.unreachable_since is None and follower.state.last_error is not None


# -- an app of several models (in-process) -------------------------------------------------------

PAYLOAD = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def fleet_of(registries: dict[str, Registry], lazy=(), pinned=(), request_timeout=5.0,
             budget: MemoryBudget | None = None, secret: str | None = None):
    followers = [AliasFollower(name, "v1" if name in pinned else "Production", 60,
                               r.resolve, r.load, lazy=name in lazy, pinned=name in pinned)
                 for name, r in registries.items()]
    fleet = build_fleet(followers, budget=budget, sample_rate=1.0, max_rows=10,
                        max_body_bytes=10_000, request_timeout=request_timeout,
                        scoring_threads=1, shadow_queue=10, webhook_secret=secret)
    return fleet, fleet_app(fleet, manage_follower=False)


def test_several_models_answer_under_their_names_and_the_root_names_them():
    registries = {"a": Registry(), "b": Registry()}
    registries["b"].target = "2"
    fleet, app = fleet_of(registries)
    assert call(app, "GET", "/health").status_code == 503
    for slot in fleet.slots.values():
        slot.follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 404 and "/models/<name>/invocations" in r.json()["message"]
    assert "a, b" in r.json()["message"]
    assert call(app, "POST", "/models/a/invocations", json=PAYLOAD).json() == {
        "predictions": [3.0]}
    r = call(app, "POST", "/models/b/invocations", json=PAYLOAD)
    assert r.json() == {"predictions": [6.0]} and r.headers["X-Model-Version"] == "2"
    assert call(app, "POST", "/models/zz/invocations", json=PAYLOAD).status_code == 404
    health = call(app, "GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["models"]) == {"a", "b"}
    assert call(app, "GET", "/models/b/health").json()["version"] == "2"
    version = call(app, "GET", "/version").json()
    assert version["models"]["b"]["version"] == "2" and version["memory"]["used_bytes"] == 200


def test_the_root_metrics_are_one_exposition_with_a_model_label():
    fleet, app = fleet_of({"a": Registry(), "b": Registry()})
    for slot in fleet.slots.values():
        slot.follower.refresh()
    call(app, "POST", "/models/a/invocations", json=PAYLOAD)
    text = call(app, "GET", "/metrics").text
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # each family once
    assert 'promote_serve_requests_total{model="a",status="200",version="1"} 1.0' in text
    assert 'promote_serve_model_version{alias="Production",model="b"} 1.0' in text
    assert 'promote_serve_model_loads_total{model="a"} 0.0' in text  # fake loads bypass it
    assert 'promote_serve_registry_reachable{alias="Production",model="a"} 1.0' in text


def test_a_lazy_model_loads_on_its_first_request_and_readiness_ignores_it():
    registries = {"req": Registry(), "lazy": Registry()}
    fleet, app = fleet_of(registries, lazy=["lazy"])
    fleet.slots["req"].follower.refresh()
    health = call(app, "GET", "/health")
    assert health.status_code == 200 and health.json()["models"]["lazy"]["status"] == "unloaded"
    lazy = fleet.slots["lazy"].follower
    lazy.start()
    try:
        r = call(app, "POST", "/models/lazy/invocations", json=PAYLOAD)
        assert r.status_code == 200 and registries["lazy"].loads == ["1"]
    finally:
        lazy.stop()


def test_a_lazy_model_still_loading_after_the_request_timeout_is_503_with_retry_after():
    registries = {"req": Registry(), "slow": Registry()}
    loaded = threading.Event()
    registries["slow"].during_load = lambda: loaded.wait(5)
    fleet, app = fleet_of(registries, lazy=["slow"], request_timeout=0.3)
    fleet.slots["req"].follower.refresh()
    slow = fleet.slots["slow"].follower
    slow.start()
    try:
        r = call(app, "POST", "/models/slow/invocations", json=PAYLOAD)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "is loading" in r.json()["message"]
        # Its neighbour answers meanwhile.
        assert call(app, "POST", "/models/req/invocations", json=PAYLOAD).status_code == 200
        loaded.set()
        assert slow.wait_until_serving(5) is not None
        assert call(app, "POST", "/models/slow/invocations", json=PAYLOAD).status_code == 200
    finally:
        loaded.set()
        slow.stop()


def test_a_delivery_wakes_the_model_it_names_and_a_pinned_one_is_ignored():
    from promotion.engine.signing import sign

    fleet, app = fleet_of({"a": Registry(), "b": Registry(), "p": Registry()}, pinned=["p"],
                          secret="s" * 32)
    woken: list[str] = []
    for slot in fleet.slots.values():
        slot.follower.nudge = lambda reason, event=None, name=slot.name: woken.append(name)
    for i, name in enumerate(("b", "p", "zz")):
        body = json.dumps({"entity": "model_version_alias", "action": "created",
                           "timestamp": 0, "data": {"name": name, "alias": "Production"}
                           if name != "p" else {"name": "p", "alias": "v1"}}).encode()
        headers = sign("s" * 32, f"d-{i}", int(time.time()), body)
        status = call(app, "POST", "/hooks/mlflow", content=body, headers=headers).status_code
        assert status == (202 if name == "b" else 204)
    assert woken == ["b"]
