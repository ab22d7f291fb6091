"""The alias follower's logic, with plain callables standing in for the registry and the loader."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from promotion.serve.follower import MAX_RETRY_DELAY, AliasFollower, Served, warm_up


class Registry:
    """Where the alias points, and which versions cannot be loaded."""

    def __init__(self, target: str = "1") -> None:
        self.target = target
        self.broken: set[str] = set()
        self.unreachable: str | None = None
        self.loads: list[str] = []
        self.paths: dict[str, Path] = {}

    def resolve(self) -> str:
        if self.unreachable:
            raise ConnectionError(self.unreachable)
        return self.target

    def load(self, version: str) -> Served:
        self.loads.append(version)
        if version in self.broken:
            raise FileNotFoundError(f"model.skops of version {version}")
        path = self.paths.get(version)
        return Served(version=version, model=f"model-{version}", loaded_at=1000.0,
                      load_seconds=0.1, path=str(path) if path else None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def follower(registry: Registry, clock: Clock) -> AliasFollower:
    return AliasFollower("m", "Production", 5.0, registry.resolve, registry.load, clock=clock)


def test_first_refresh_serves_what_the_alias_points_at(follower, registry):
    assert follower.state.served is None and not follower.state.in_sync
    assert follower.refresh() is True
    state = follower.state
    assert state.served.version == "1" and state.alias_version == "1" and state.in_sync
    assert state.swaps == 0 and state.last_error is None and state.serving_since == 1000.0
    assert follower.refresh() is False  # nothing moved: nothing is loaded again
    assert registry.loads == ["1"]


def test_a_moved_alias_is_loaded_then_swapped_in_whole(follower, registry, clock):
    follower.refresh()
    held = follower.state.served  # what a request in flight holds
    registry.target = "2"
    clock.now += 5
    assert follower.refresh() is True
    assert follower.state.served.version == "2" and follower.state.swaps == 1
    assert follower.state.serving_since == 1005.0
    # The request in flight still has the whole old version.
    assert held.version == "1" and held.model == "model-1"


def test_a_version_that_cannot_be_loaded_never_replaces_the_working_one(follower, registry,
                                                                        clock):
    follower.refresh()
    registry.target, registry.broken = "2", {"2"}
    assert follower.refresh() is False
    state = follower.state
    assert state.served.version == "1" and state.alias_version == "2" and not state.in_sync
    assert state.load_failures == 1 and state.last_error.version == "2"
    assert "cannot load m version 2" in state.last_error.message
    assert "FileNotFoundError" in state.last_error.message
    assert "still serving version 1" in state.last_error.message


def test_a_failed_version_is_retried_with_a_growing_delay(follower, registry, clock):
    registry.broken = {"1"}
    follower.refresh()
    assert registry.loads == ["1"] and follower.state.served is None
    assert "nothing to serve yet" in follower.state.last_error.message
    clock.now += 4.9  # retry after one poll interval (5 s), not before
    follower.refresh()
    assert registry.loads == ["1"]
    clock.now += 0.1
    follower.refresh()
    assert registry.loads == ["1", "1"]
    clock.now += 9.9  # the second failure doubles the delay
    follower.refresh()
    assert registry.loads == ["1", "1"]
    clock.now += 0.1
    registry.broken = set()  # the artifact store healed
    assert follower.refresh() is True
    assert follower.state.served.version == "1" and follower.state.load_failures == 2


def test_the_retry_delay_is_capped(registry, clock):
    follower = AliasFollower("m", "Production", 400.0, registry.resolve, registry.load,
                             clock=clock)
    registry.broken = {"1"}
    follower.refresh()
    clock.now += 400
    follower.refresh()
    assert "retry in 600 s" in follower.state.last_error.message
    assert MAX_RETRY_DELAY == 600


def test_a_good_version_promoted_after_a_broken_one_is_served(follower, registry, clock):
    follower.refresh()
    registry.target, registry.broken = "2", {"2"}
    follower.refresh()
    registry.target = "3"
    assert follower.refresh() is True
    assert follower.state.served.version == "3" and follower.state.in_sync


def test_a_registry_that_stops_answering_does_not_stop_serving(follower, registry):
    follower.refresh()
    registry.unreachable = "cannot reach http://alice:s3cret@mlflow:5001"
    assert follower.refresh() is False
    state = follower.state
    assert state.served.version == "1" and state.last_error.version is None
    assert "cannot resolve m@Production" in state.last_error.message
    assert "s3cret" not in state.last_error.message and "alice" not in state.last_error.message


def test_a_rollback_reloads_the_previous_version(follower, registry, clock):
    follower.refresh()
    registry.target = "2"
    follower.refresh()
    registry.target = "1"
    assert follower.refresh() is True
    assert follower.state.served.version == "1" and follower.state.swaps == 2
    assert registry.loads == ["1", "2", "1"]


def test_artifacts_of_a_swapped_out_version_are_removed_one_swap_later(follower, registry,
                                                                       tmp_path):
    for version in "123":
        registry.paths[version] = tmp_path / version
        registry.paths[version].mkdir()
    follower.refresh()
    registry.target = "2"
    follower.refresh()
    assert (tmp_path / "1").exists()  # requests in flight may still read version 1's files
    registry.target = "3"
    follower.refresh()
    assert not (tmp_path / "1").exists()
    assert (tmp_path / "2").exists() and (tmp_path / "3").exists()


def test_the_thread_follows_and_survives_an_unexpected_error(registry):
    calls = {"n": 0}

    def clock() -> float:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return time.time()

    follower = AliasFollower("m", "Production", 0.01, registry.resolve, registry.load,
                             clock=clock)
    follower.start()
    try:
        assert follower.wait_until_serving(10).version == "1"
        registry.target = "2"
        deadline = time.monotonic() + 10
        while follower.state.served.version != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.state.served.version == "2"
    finally:
        follower.stop()
    assert not any(t.name == "follow-m" for t in threading.enumerate())


def test_a_nudge_checks_at_once_and_counts_the_swap_under_its_trigger(registry):
    follower = AliasFollower("m", "Production", 60.0, registry.resolve, registry.load)
    with pytest.raises(ValueError):
        follower.nudge("start")
    follower.nudge("webhook")  # before start: the first check answers it
    follower.start()
    try:
        assert follower.wait_until_serving(10).version == "1"
        registry.target = "2"
        follower.nudge("webhook")  # the poll is a minute away
        deadline = time.monotonic() + 10
        while follower.state.served.version != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.state.served.version == "2"
        assert follower.state.swaps_by_trigger.as_dict() == {"start": 1, "poll": 0, "webhook": 1}
        assert follower.state.swaps == 1
    finally:
        started = time.monotonic()
        follower.stop()
    assert time.monotonic() - started < 5  # stopping wakes the thread too
    assert registry.loads == ["1", "2"]


def test_poll_interval_must_be_positive(registry):
    with pytest.raises(ValueError):
        AliasFollower("m", "Production", 0, registry.resolve, registry.load)


class Example:
    """A loaded model with (or without) an input example, as pyfunc exposes them."""

    def __init__(self, example, fail: bool = False) -> None:
        self.example, self.fail, self.scored = example, fail, []
        self.metadata = self

    def load_input_example(self, path):
        return self.example

    def predict(self, data):
        self.scored.append(data)
        if self.fail:
            raise ValueError("cannot score")


def test_warm_up_scores_the_input_example_and_fails_the_load_when_it_cannot():
    model = Example([[1.0, 2.0]])
    warm_up(model, "/nowhere")
    assert model.scored == [[[1.0, 2.0]]]
    with pytest.raises(ValueError):
        warm_up(Example([[1.0]], fail=True), "/nowhere")
    silent = Example(None)
    warm_up(silent, "/nowhere")  # no example logged: nothing to score
    assert silent.scored == []
