"""Adaptive micro-batching in `promote serve`: in-process, with models that record their calls.

A gate holds the model's first call, so the requests sent meanwhile are queued behind it, and the
next call shows exactly which of them were merged. The real-server side (real HTTP, a registered
sklearn model, a swap under load) is in test_serve.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from promotion.serve.app import create_app
from promotion.serve.batching import BatchLimits
from promotion.serve.batchscore import Unsplittable, merge_key, split
from promotion.serve.follower import AliasFollower, Served


class GatedModel:
    """Predicts row sums times `factor`; every call is recorded; the first call waits for
    `gate`; a negative value makes it fail (as a model rejecting its input would)."""

    def __init__(self, factor: float, gate: threading.Event | None = None) -> None:
        self.factor = factor
        self.gate = gate
        self.calls: list[tuple[tuple[str, ...], int, dict | None]] = []
        self.entered = threading.Event()

    def predict(self, data, params=None):
        self.calls.append((tuple(map(str, data.columns)), len(data), params))
        if len(self.calls) == 1 and self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if (data.to_numpy() < 0).any():
            raise ValueError("negative values are not accepted")
        return (data.sum(axis=1) * self.factor * (params or {}).get("scale", 1)).to_numpy()


class Registry:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.target = "1"
        self.models = {"1": GatedModel(1.0, gate), "2": GatedModel(10.0)}

    def resolve(self) -> str:
        return self.target

    def load(self, version: str) -> Served:
        return Served(version=version, model=self.models[version], loaded_at=time.time(),
                      load_seconds=0.0)


def frame(rows: list[list[float]], columns=("a", "b")) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": rows}}


def sums(rows: list[list[float]], factor: float = 1.0) -> list[float]:
    return [sum(row) * factor for row in rows]


def rows_of(i: int) -> list[list[float]]:
    """Request i's rows: 1 to 4 of them, distinct from every other request's."""
    return [[float(i), float(k)] for k in range(1 + i % 4)]


@pytest.fixture
def gate() -> threading.Event:
    gate = threading.Event()
    yield gate
    gate.set()  # never leave a scoring thread waiting


def endpoint(registry: Registry, **kwargs):
    follower = AliasFollower("m", "Production", 60, registry.resolve, registry.load)
    follower.refresh()
    options = {"request_timeout": 30.0, "batching": BatchLimits(64, 0.002), **kwargs}
    return create_app(follower, manage_follower=False, **options), follower


async def _queued(app, count: int) -> None:
    """Wait until `count` parsed requests are queued behind the held call."""
    batcher = app.state.fleet.first.batcher
    for _ in range(3000):
        if batcher.queued >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {batcher.queued} of {count} requests were queued")


def held_then_released(app, model: GatedModel, gate: threading.Event, bodies: list,
                       between=None) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send one request that holds the model's first call, then `bodies` at once; release the
    call once they are all queued (after `between()`). (the first answer, the others')"""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/invocations", json=frame([[0.0, 1.0]])))
            await asyncio.to_thread(model.entered.wait, 30)
            rest = [asyncio.ensure_future(http.post("/invocations", **body)) for body in bodies]
            await _queued(app, len(bodies))
            if between is not None:
                await asyncio.to_thread(between)
            gate.set()
            return await first, list(await asyncio.gather(*rest))

    return asyncio.run(go())


def sample(app, name: str, **labels: str) -> float | None:
    return app.state.metrics.registry.get_sample_value(name, labels)


# -- merging and splitting -----------------------------------------------------------------------


def test_every_client_gets_its_own_rows_in_order_from_one_merged_call(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry)
    model = registry.models["1"]
    bodies = [{"json": frame(rows_of(i))} for i in range(12)]
    first, answers = held_then_released(app, model, gate, bodies)
    assert first.status_code == 200 and first.json()["predictions"] == [1.0]
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "1"
        assert answer.json()["predictions"] == sums(rows_of(i)), i
    # The held call, then the twelve requests (30 rows) in one call.
    assert [rows for _, rows, _ in model.calls] == [1, sum(len(rows_of(i)) for i in range(12))]
    assert sample(app, "promote_serve_batch_requests_sum", version="1") == 13
    assert sample(app, "promote_serve_batch_requests_count", version="1") == 2
    assert sample(app, "promote_serve_batch_rows_sum", version="1") == 31
    assert sample(app, "promote_serve_batch_wait_seconds_count", version="1") == 13


def test_a_batch_holds_at_most_max_batch_rows(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry, batching=BatchLimits(5, 0.002))
    model = registry.models["1"]
    bodies = [{"json": frame([[float(i), 1.0], [float(i), 2.0]])} for i in range(6)]
    _, answers = held_then_released(app, model, gate, bodies)
    assert [a.json()["predictions"] for a in answers] == [[i + 1.0, i + 2.0] for i in range(6)]
    # A batch takes at most 5 requests; 2 + 2 rows fit in a call of 5, a third request does not.
    assert [rows for _, rows, _ in model.calls] == [1, 4, 4, 2, 2]


def test_a_malformed_request_gets_its_4xx_and_its_neighbours_their_200s(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry)
    model = registry.models["1"]
    bodies = [{"json": frame(rows_of(i))} for i in range(4)]
    bodies.insert(2, {"json": frame([[1.0, -5.0]])})  # the model refuses it: it fails the batch
    bodies.append({"content": b'{"dataframe_split": ', "headers": {
        "Content-Type": "application/json"}})  # cannot be parsed: never reaches the model
    _, answers = held_then_released(app, model, gate, bodies)
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 400, 200, 200, 400]
    assert "negative values" in answers[2].json()["message"]
    assert "malformed JSON" in answers[5].json()["message"]
    good = [a for i, a in enumerate(answers) if statuses[i] == 200]
    assert [a.json()["predictions"] for a in good] == [sums(rows_of(i)) for i in range(4)]
    # The merged call failed; every request in it was then scored alone.
    calls = [rows for _, rows, _ in model.calls]
    assert calls[:2] == [1, 11] and sorted(calls[2:]) == [1, 1, 2, 3, 4]
    assert sample(app, "promote_serve_batch_retries_total", version="1") == 1
    assert sample(app, "promote_serve_request_errors_total", version="1",
                  reason="bad_input") == 1
    assert sample(app, "promote_serve_request_errors_total", version="1",
                  reason="malformed_json") == 1


def test_inputs_that_cannot_be_concatenated_are_never_merged(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry)
    model = registry.models["1"]
    bodies = [
        {"json": frame([[1.0, 2.0]])},
        {"json": frame([[1.0, 2.0, 3.0]], columns=("a", "b", "c"))},  # other columns
        {"json": frame([[2.0, 1.0]], columns=("b", "a"))},  # same columns, other order
        {"json": frame([[1, 2]])},  # integers, not floats
        {"json": {**frame([[1.0, 2.0]]), "params": {"scale": 2}}},  # params
        {"json": frame([[3.0, 4.0]])},  # joins the first
        {"json": {**frame([[3.0, 4.0]]), "params": {"scale": 2}}},  # joins the params one
    ]
    _, answers = held_then_released(app, model, gate, bodies)
    assert [a.json()["predictions"] for a in answers] == [
        [3.0], [6.0], [3.0], [3], [6.0], [7.0], [14.0]]
    calls = model.calls[1:]
    assert sorted(calls, key=repr) == sorted([
        (("a", "b"), 2, None), (("a", "b", "c"), 1, None), (("b", "a"), 1, None),
        (("a", "b"), 1, None), (("a", "b"), 2, {"scale": 2})], key=repr)


def test_a_swap_while_requests_are_queued_scores_each_wholly_on_one_version(gate):
    registry = Registry(gate)
    app, follower = endpoint(registry)
    v1, v2 = registry.models["1"], registry.models["2"]
    later: list[asyncio.Future] = []

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            def post(i: int) -> asyncio.Future:
                return asyncio.ensure_future(http.post("/invocations", json=frame(rows_of(i))))

            first = asyncio.ensure_future(http.post("/invocations", json=frame([[0.0, 1.0]])))
            await asyncio.to_thread(v1.entered.wait, 30)
            before = [post(i) for i in range(6)]
            await _queued(app, 6)
            registry.target = "2"
            await asyncio.to_thread(follower.refresh)
            later.extend(post(i) for i in range(6, 12))
            await _queued(app, 12)
            gate.set()
            return [await first, *await asyncio.gather(*before), *await asyncio.gather(*later)]

    answers = asyncio.run(go())
    versions = [a.headers["X-Model-Version"] for a in answers]
    assert versions == ["1"] * 7 + ["2"] * 6
    for i, answer in enumerate(answers[1:]):
        factor = 1.0 if versions[i + 1] == "1" else 10.0
        assert answer.json()["predictions"] == sums(rows_of(i), factor)
    # One call per version: the old version's queued requests, then the new one's.
    assert [rows for _, rows, _ in v1.calls] == [1, sum(len(rows_of(i)) for i in range(6))]
    assert [rows for _, rows, _ in v2.calls] == [sum(len(rows_of(i)) for i in range(6, 12))]


def test_a_request_that_times_out_while_queued_leaves_the_queue(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry, request_timeout=0.3)
    model = registry.models["1"]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/invocations", json=frame([[0.0, 1.0]])))
            await asyncio.to_thread(model.entered.wait, 30)
            late = await http.post("/invocations", json=frame([[5.0, 5.0]]))
            gate.set()
            answered = await first
            after = await http.post("/invocations", json=frame([[2.0, 2.0]]))
            return answered, late, after

    answered, late, after = asyncio.run(go())
    assert late.status_code == 504 and late.json()["error_code"] == "TIMEOUT"
    # The held request ran past its timeout too: it is answered 504, its batch ran on.
    assert answered.status_code == 504
    assert after.status_code == 200 and after.json()["predictions"] == [4.0]
    # The timed-out request was never scored.
    assert [rows for _, rows, _ in model.calls] == [1, 1]


def test_with_batching_off_every_request_is_its_own_call(gate):
    registry = Registry(gate)
    app, _ = endpoint(registry, batching=BatchLimits(0))
    model = registry.models["1"]
    assert app.state.fleet.first.batcher is None

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/invocations", json=frame([[0.0, 1.0]])))
            await asyncio.to_thread(model.entered.wait, 30)
            rest = [asyncio.ensure_future(http.post("/invocations", json=frame(rows_of(i))))
                    for i in range(5)]
            await asyncio.sleep(0.05)
            gate.set()
            return [await first, *await asyncio.gather(*rest)]

    answers = asyncio.run(go())
    assert [a.json()["predictions"] for a in answers[1:]] == [sums(rows_of(i)) for i in range(5)]
    assert sorted(rows for _, rows, _ in model.calls) == sorted(
        [1] + [len(rows_of(i)) for i in range(5)])
    assert sample(app, "promote_serve_batch_requests_count", version="1") is None


# -- the wait bound ------------------------------------------------------------------------------


def _lone_request_wait(app, arriving: int) -> float:
    """Score one request while `arriving` other requests are on their way (and never come);
    the seconds it waited in the queue."""
    batcher = app.state.fleet.first.batcher

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            on_their_way = [batcher.arrive() for _ in range(arriving)]
            try:
                return await asyncio.wait_for(http.post("/invocations",
                                                        json=frame([[1.0, 2.0]])), 60)
            finally:
                for arrival in on_their_way:
                    arrival.close()

    answer = asyncio.run(go())
    assert answer.status_code == 200 and answer.json()["predictions"] == [3.0]
    waited = sample(app, "promote_serve_batch_wait_seconds_sum", version="1")
    assert waited is not None
    return waited


def test_a_batch_waits_for_requests_on_their_way_at_most_the_wait_bound():
    app, _ = endpoint(Registry(), batching=BatchLimits(64, 0.25))
    # Without the bound it would wait for a request that never comes, and never be scored.
    assert _lone_request_wait(app, arriving=1) >= 0.25


def test_a_lone_request_on_an_idle_endpoint_is_scored_at_once():
    app, _ = endpoint(Registry(), batching=BatchLimits(64, 30.0))
    # With nothing on its way, the 30 s bound is never waited for.
    assert _lone_request_wait(app, arriving=0) < 30.0


# -- pure functions ------------------------------------------------------------------------------


def test_merge_key_tells_apart_what_cannot_be_concatenated():
    a = pd.DataFrame({"x": [1.0], "y": [2.0]})
    assert merge_key(a, None) == merge_key(pd.DataFrame({"x": [3.0], "y": [4.0]}), None)
    assert merge_key(a, None) != merge_key(pd.DataFrame({"y": [2.0], "x": [1.0]}), None)
    assert merge_key(a, None) != merge_key(pd.DataFrame({"x": [1], "y": [2]}), None)
    assert merge_key(a, None) != merge_key(a, {"k": 1})
    assert merge_key(a, {"k": 1, "j": 2}) == merge_key(a, {"j": 2, "k": 1})
    assert merge_key(a.astype("category"), None) is None
    assert merge_key(a, {"k": object()}) is None
    assert merge_key({"t": np.zeros((2, 3))}, None) is None
    assert merge_key(np.zeros((2, 3)), None) == merge_key(np.ones((5, 3)), None)
    assert merge_key(np.zeros((2, 3)), None) != merge_key(np.zeros((2, 4)), None)


@pytest.mark.parametrize("raw", [
    np.arange(6.0), list(range(6)), pd.Series(range(6)),
    pd.DataFrame({"p": range(6), "q": range(6, 12)}),
    {"p": np.arange(6), "q": list(range(6, 12))},
])
def test_split_cuts_predictions_back_by_rows_and_encodes_like_the_whole(raw):
    from promotion.serve.protocol import encode_predictions

    parts = split(raw, [1, 3, 2])
    whole = json.loads(encode_predictions(raw))["predictions"]
    pieces = [json.loads(encode_predictions(part))["predictions"] for part in parts]
    if isinstance(whole, dict):
        assert [{k: v for k, v in piece.items()} for piece in pieces] == [
            {k: v[a:b] for k, v in whole.items()} for a, b in ((0, 1), (1, 4), (4, 6))]
    else:
        assert pieces == [whole[0:1], whole[1:4], whole[4:6]]


@pytest.mark.parametrize("raw", [np.arange(5.0), np.float64(1.0), "abcdef", [1, 2, 3, 4, 5, 6, 7]])
def test_predictions_that_are_not_one_per_row_cannot_be_split(raw):
    with pytest.raises(Unsplittable):
        split(raw, [1, 3, 2])


def test_a_model_that_answers_one_value_per_call_is_scored_request_by_request(gate):
    class Mean(GatedModel):
        def predict(self, data, params=None):
            super().predict(data, params)
            return [float(data.to_numpy().mean())]

    registry = Registry(gate)
    registry.models["1"] = model = Mean(1.0, gate)
    app, _ = endpoint(registry)
    bodies = [{"json": frame([[1.0, 3.0]])}, {"json": frame([[10.0, 30.0], [10.0, 10.0]])}]
    _, answers = held_then_released(app, model, gate, bodies)
    assert [a.json()["predictions"] for a in answers] == [[2.0], [15.0]]
    assert [rows for _, rows, _ in model.calls] == [1, 3, 1, 2]
    assert sample(app, "promote_serve_batch_retries_total", version="1") == 1


def test_each_request_gets_its_own_logged_rows_from_a_merged_call():
    from mlflow.types import ColSpec, Schema

    from promotion.serve.batchscore import Raw, score_raw

    model = GatedModel(2.0)
    served = Served(version="1", model=model, loaded_at=time.time(), load_seconds=0.0,
                    input_schema=Schema([ColSpec("double", "a"), ColSpec("double", "b")]))
    requests = [rows_of(i) for i in range(5)]
    raws = [Raw(json.dumps(frame(rows)).encode(), "application/json", log_rows=2, row_key="a")
            for rows in requests]
    scored = score_raw(served, raws, 64)
    assert scored.calls == [(5, sum(len(r) for r in requests))]  # parsed and scored at once
    for rows, result in zip(requests, scored.results, strict=True):
        assert json.loads(result.content)["predictions"] == sums(rows, 2.0)
        logged = result.logged
        assert [json.loads(line) for line in logged.lines] == [
            {"a": a, "b": b} for a, b in rows[:2]]
        assert [number for number, _ in logged.predictions] == sums(rows[:2], 2.0)
        assert logged.keys == tuple(str(a) for a, _ in rows[:2])
