"""The endpoint's HTTP contract, in-process (the real-server tests are in test_serve.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from promotion.serve.app import create_app
from promotion.serve.follower import AliasFollower, Served
from promotion.serve.protocol import RequestError, parse_request


class SumModel:
    """Predicts the row sums, times a factor; fails on demand."""

    def __init__(self, factor: float = 1.0, fail: BaseException | None = None,
                 delay: float = 0.0) -> None:
        self.factor, self.fail, self.delay = factor, fail, delay

    def predict(self, data, params=None):
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return (data.sum(axis=1) * self.factor).to_numpy()


class Models:
    def __init__(self) -> None:
        self.target = "1"
        self.models = {"1": SumModel(1.0), "2": SumModel(10.0)}

    def resolve(self) -> str:
        return self.target

    def load(self, version: str) -> Served:
        return Served(version=version, model=self.models[version], loaded_at=time.time(),
                      load_seconds=0.0)


PAYLOAD = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}}


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture
def models() -> Models:
    return Models()


@pytest.fixture
def follower(models: Models) -> AliasFollower:
    return AliasFollower("m", "Production", 60, models.resolve, models.load)


@pytest.fixture
def app(follower):
    return create_app(follower, manage_follower=False, max_body_bytes=1000,
                      request_timeout=0.5)


def sample(app, name: str, **labels: str) -> float | None:
    return app.state.metrics.registry.get_sample_value(name, labels)


def test_nothing_loaded_yet_is_503_everywhere(app):
    assert call(app, "GET", "/health").status_code == 503
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    doc = call(app, "GET", "/version").json()
    assert doc["version"] is None and doc["in_sync"] is False
    assert sample(app, "promote_serve_model_version", model="m", alias="Production") == 0


def test_scores_with_the_served_version_and_names_it(app, follower, models):
    follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 200 and r.json() == {"predictions": [3, 7]}
    assert r.headers["X-Model-Version"] == "1"
    models.target = "2"
    follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.json() == {"predictions": [30, 70]} and r.headers["X-Model-Version"] == "2"
    assert call(app, "GET", "/ping").status_code == 200
    # Requests, latency and the served version are labelled by version.
    assert sample(app, "promote_serve_requests_total", version="1", status="200") == 1
    assert sample(app, "promote_serve_requests_total", version="2", status="200") == 1
    assert sample(app, "promote_serve_request_duration_seconds_count", version="2") == 1
    assert sample(app, "promote_serve_model_version", model="m", alias="Production") == 2
    assert sample(app, "promote_serve_swaps_total", model="m", alias="Production") == 1
    text = call(app, "GET", "/metrics").text
    assert 'promote_serve_model_info{alias="Production",model="m",version="2"} 1.0' in text
    assert "_created" not in text


def test_a_model_rejecting_its_input_is_400_and_a_model_fault_is_500(app, follower, models):
    models.models["1"] = SumModel(fail=ValueError("Input X contains NaN"))
    follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 400 and "Input X contains NaN" in r.json()["message"]
    assert sample(app, "promote_serve_request_errors_total", version="1",
                  reason="bad_input") == 1

    models.models["2"] = SumModel(fail=RuntimeError("CUDA out of memory"))
    models.target = "2"
    follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 500 and "CUDA out of memory" in r.json()["message"]
    assert sample(app, "promote_serve_request_errors_total", version="2",
                  reason="model_error") == 1
    assert call(app, "GET", "/health").status_code == 200  # still up


def test_scoring_slower_than_the_timeout_is_504(app, follower, models):
    models.models["1"] = SumModel(delay=1.0)
    follower.refresh()
    r = call(app, "POST", "/invocations", json=PAYLOAD)
    assert r.status_code == 504 and "longer than 0.5 s" in r.json()["message"]


def test_a_body_over_the_limit_is_413_before_parsing(app, follower):
    follower.refresh()
    r = call(app, "POST", "/invocations", content=b"x" * 1001,
             headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit is 1000 bytes" in r.json()["message"]


def test_version_reports_the_last_error(app, follower, models):
    follower.refresh()
    models.target = "3"  # no such model: the load fails
    follower.refresh()
    doc = call(app, "GET", "/version").json()
    assert doc["version"] == "1" and doc["alias_version"] == "3" and doc["in_sync"] is False
    assert doc["last_error"]["version"] == "3" and "KeyError" in doc["last_error"]["message"]
    assert doc["load_failures"] == 1


@pytest.mark.parametrize(("body", "content_type", "status", "words"), [
    (b"", None, 400, "empty"),
    (b"{", "application/json", 400, "malformed JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "malformed JSON"),
    (b'"just a string"', "application/json", 400, "got a JSON str"),
    (b'{"inputs": [1], "extra": 1}', "application/json", 400, "found: extra, inputs"),
    (b'{"inputs": [1], "params": 3}', "application/json", 400, "params must be"),
    (b"a,b\n1,2", "text/html", 415, "text/html"),
    (b"{}", "application/json; charset=utf-16", 415, "utf-16"),
])
def test_parse_request_refuses_with_a_clear_message(body, content_type, status, words):
    with pytest.raises(RequestError) as caught:
        parse_request(body, content_type, None)
    assert caught.value.status == status and words in caught.value.message


def test_parse_request_reads_every_format():
    split, _ = parse_request(b'{"dataframe_split": {"columns": ["a"], "data": [[1], [2]]}}',
                             "application/json", None)
    records, _ = parse_request(b'{"dataframe_records": [{"a": 1}, {"a": 2}]}', None, None)
    csv, _ = parse_request(b"a\n1\n2\n", "text/csv; charset=utf-8", None)
    for frame in (split, records, csv):
        assert list(frame["a"]) == [1, 2]
    inputs, params = parse_request(b'{"inputs": [[1, 2]], "params": {"k": 1}}',
                                   "application/json", None)
    assert inputs.tolist() == [[1, 2]] and params == {"k": 1}


def test_a_client_that_leaves_mid_body_is_no_model_error(app, follower):
    follower.refresh()

    async def go() -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/invocations", "raw_path": b"",
                 "root_path": "", "query_string": b"", "server": ("test", 80),
                 "client": ("client", 1), "headers": [(b"content-type", b"application/json")]}
        await app(scope, receive, send)
        return sent

    sent = asyncio.run(go())
    assert sent[0]["status"] == 499
    assert sample(app, "promote_serve_request_errors_total", version="1",
                  reason="client_disconnected") == 1
    assert sample(app, "promote_serve_request_errors_total", version="1",
                  reason="model_error") is None
