"""The fault-injecting proxy (tests/faultproxy.py), against a tiny local HTTP server.

The upstream records every request it receives before answering, so each test asserts on what
actually reached the server, not only on what the client saw. No MLflow server is needed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from faultproxy import (
    Callback,
    DownFrom,
    DropResponse,
    FaultProxy,
    Hang,
    RequestRecord,
    ResetOnce,
    Status,
    is_write,
)

BIG = bytes(range(256)) * 4096  # 1 MiB download


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                    self._body())
        with self.server.lock:
            self.server.seen.append(seen)  # recorded before answering
        if self.path == "/big":
            self._send(200, BIG)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close-delimited":
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"until the server closes")
        else:
            body = json.dumps({"method": self.command, "path": self.path,
                               "received": len(seen.body)}).encode()
            self._send(200, body)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]


@pytest.fixture(scope="module")
def _upstream_server() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def upstream(_upstream_server: _Upstream) -> _Upstream:
    with _upstream_server.lock:
        _upstream_server.seen.clear()
    return _upstream_server


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url) as p:
        yield p
    assert not p.errors, p.errors


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive session that ignores any *_PROXY environment variables."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def _outcomes(proxy: FaultProxy) -> list[str]:
    return [r.outcome for r in proxy.requests]


# ---- forwarding -----------------------------------------------------------------------------


def test_get_and_json_post_are_forwarded_and_counted(proxy, upstream, http):
    assert proxy.url.startswith("http://127.0.0.1:")
    r1 = http.get(f"{proxy.url}/api/2.0/mlflow/experiments/get?experiment_id=1", timeout=10)
    payload = {"experiment_id": "1", "run_name": "x" * 5000}
    r2 = http.post(f"{proxy.url}/api/2.0/mlflow/runs/create", json=payload, timeout=10)

    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r2.json() == {"method": "POST", "path": "/api/2.0/mlflow/runs/create",
                         "received": len(json.dumps(payload))}
    assert r2.headers["Connection"] == "close"
    first, second = upstream.seen
    assert (first.method, first.path) == ("GET", "/api/2.0/mlflow/experiments/get?experiment_id=1")
    assert (second.method, json.loads(second.body)) == ("POST", payload)
    # Host is kept as the client sent it; the upstream is asked to close after one response.
    assert second.headers["host"] == proxy.url.removeprefix("http://")
    assert second.headers["connection"] == "close"
    assert proxy.count == 2
    assert [(r.index, r.method, r.outcome, r.status, r.write) for r in proxy.requests] == [
        (1, "GET", "forwarded", 200, False),
        (2, "POST", "forwarded", 200, True),
    ]
    assert json.loads(proxy.requests[1].body) == payload


def test_a_chunked_put_is_forwarded_whole(proxy, upstream, http):
    parts = [b"artifact ", b"bytes " * 1000, b"end"]
    r = http.put(f"{proxy.url}/api/2.0/mlflow-artifacts/artifacts/0/model.pkl",
                 data=iter(parts), timeout=10)

    assert r.status_code == 200
    (seen,) = upstream.seen
    assert seen.headers["transfer-encoding"] == "chunked"
    assert seen.body == b"".join(parts)
    assert proxy.requests[0].body == b"".join(parts)
    assert proxy.requests[0].write


def test_a_keep_alive_session_counts_every_request(proxy, upstream, http):
    for i in range(6):
        if i % 2:
            r = http.post(f"{proxy.url}/p{i}", json={"i": i}, timeout=10)
        else:
            r = http.get(f"{proxy.url}/g{i}", timeout=10)
        assert r.status_code == 200

    assert upstream.paths() == ["/g0", "/p1", "/g2", "/p3", "/g4", "/p5"]
    assert [r.index for r in proxy.requests] == [1, 2, 3, 4, 5, 6]
    assert proxy.accepted == 6  # one connection per request: the proxy closes after each


def test_responses_pass_through_byte_exact(proxy, upstream, http):
    assert http.get(f"{proxy.url}/big", timeout=10).content == BIG
    assert http.get(f"{proxy.url}/chunked", timeout=10).content == b"hello chunked world"
    assert http.get(f"{proxy.url}/close-delimited", timeout=10).content == (
        b"until the server closes"
    )
    head = http.head(f"{proxy.url}/big", timeout=10)
    assert (head.status_code, head.headers["Content-Length"]) == (200, str(len(BIG)))

    assert upstream.paths() == ["/big", "/chunked", "/close-delimited", "/big"]
    assert _outcomes(proxy) == ["forwarded"] * 4


def test_an_unreachable_upstream_is_a_connection_error(http):
    with socket.socket() as bound:  # bound, never listening: connecting to it is refused
        bound.bind(("127.0.0.1", 0))
        with FaultProxy(f"http://127.0.0.1:{bound.getsockname()[1]}") as proxy:
            with pytest.raises(requests.ConnectionError):
                http.get(f"{proxy.url}/x", timeout=10)
            (record,) = proxy.requests
            assert record.outcome == "upstream_error"
            assert "ConnectionRefused" in (record.error or "")


# ---- fault plans ----------------------------------------------------------------------------


def test_down_from_forwards_the_first_requests_then_refuses(proxy, upstream, http):
    proxy.arm(DownFrom(3))
    assert http.get(f"{proxy.url}/1", timeout=10).status_code == 200
    assert http.post(f"{proxy.url}/2", json={}, timeout=10).status_code == 200
    for path in ("/3", "/4"):
        with pytest.raises(requests.ConnectionError):
            http.post(f"{proxy.url}{path}", json={"x": 1}, timeout=10)

    assert upstream.paths() == ["/1", "/2"]
    assert _outcomes(proxy) == ["forwarded", "forwarded", "refused", "refused"]


def test_drop_response_reaches_the_server_but_the_answer_is_lost(proxy, upstream, http):
    proxy.arm(DropResponse(2))
    assert http.get(f"{proxy.url}/a", timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/b", json={"write": True}, timeout=10)
    assert http.get(f"{proxy.url}/c", timeout=10).status_code == 200

    assert upstream.paths() == ["/a", "/b", "/c"]
    assert json.loads(upstream.seen[1].body) == {"write": True}
    dropped = proxy.requests[1]
    assert (dropped.outcome, dropped.status) == ("dropped_response", 200)


def test_status_answers_without_reaching_the_server(proxy, upstream, http):
    proxy.arm(Status(1))
    r = http.post(f"{proxy.url}/api/2.0/mlflow/runs/create", json={}, timeout=10)
    assert r.status_code == 503
    assert r.json() == {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected"}
    assert r.headers["Content-Length"] == str(len(r.content))
    assert http.get(f"{proxy.url}/next", timeout=10).status_code == 200

    proxy.arm(Status(2, code=429))
    assert http.get(f"{proxy.url}/first", timeout=10).status_code == 200
    assert http.get(f"{proxy.url}/second", timeout=10).status_code == 429

    assert upstream.paths() == ["/next", "/first"]
    assert [(r.outcome, r.status) for r in proxy.requests] == [("forwarded", 200),
                                                               ("status", 429)]


def test_reset_once_cuts_one_request_only(proxy, upstream, http):
    proxy.arm(ResetOnce(2))
    assert http.get(f"{proxy.url}/1", timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/2", json={}, timeout=10)
    assert http.post(f"{proxy.url}/3", json={}, timeout=10).status_code == 200

    assert upstream.paths() == ["/1", "/3"]
    assert _outcomes(proxy) == ["forwarded", "refused", "forwarded"]


def test_hang_ends_when_the_client_gives_up(proxy, upstream, http):
    proxy.arm(Hang(1, seconds=60))
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        http.get(f"{proxy.url}/slow", timeout=(10, 0.3))
    assert time.monotonic() - started < 10

    (record,) = proxy.requests
    assert record.done.wait(10), "the proxy did not notice the client closing"
    assert record.outcome == "hung"
    assert upstream.paths() == []


def test_hang_ends_after_its_seconds(proxy, upstream, http):
    proxy.arm(Hang(1, seconds=0.2))
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/slow", timeout=30)
    assert 0.15 <= time.monotonic() - started < 10
    assert upstream.paths() == []


def test_hang_blocks_neither_other_requests_nor_stop(upstream, http):
    proxy = FaultProxy(upstream.url).start()
    proxy.arm(Hang(1, seconds=60))
    failure: list[BaseException] = []

    def hanging() -> None:
        try:
            requests.get(f"{proxy.url}/hangs", timeout=30)
        except requests.RequestException as exc:
            failure.append(exc)

    thread = threading.Thread(target=hanging, daemon=True)
    thread.start()
    try:
        proxy.wait_for_count(1)
        assert http.get(f"{proxy.url}/meanwhile", timeout=10).status_code == 200
    finally:
        started = time.monotonic()
        proxy.stop()
        stopped_in = time.monotonic() - started
    thread.join(10)
    assert stopped_in < 3
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], requests.ConnectionError)
    assert upstream.paths() == ["/meanwhile"]
    assert _outcomes(proxy) == ["hung", "forwarded"]
    assert not proxy.errors


def test_callback_runs_at_its_request_then_the_server_is_down(proxy, upstream, http):
    calls: list[tuple[int, str, list[str]]] = []

    def kill(record: RequestRecord) -> None:
        calls.append((record.index, record.path, upstream.paths()))

    proxy.arm(Callback(2, kill))
    assert http.get(f"{proxy.url}/a", timeout=10).status_code == 200
    for path in ("/b", "/c"):
        with pytest.raises(requests.ConnectionError):
            http.post(f"{proxy.url}{path}", json={}, timeout=10)

    assert calls == [(2, "/b", ["/a"])]
    assert upstream.paths() == ["/a"]
    assert _outcomes(proxy) == ["forwarded", "killed", "refused"]


def test_a_failing_callback_is_reported_and_the_request_still_refused(upstream, http):
    def boom(record: RequestRecord) -> None:
        raise RuntimeError("boom")

    with FaultProxy(upstream.url) as proxy:
        proxy.arm(Callback(1, boom))
        with pytest.raises(requests.ConnectionError):
            http.get(f"{proxy.url}/x", timeout=10)
    assert [str(e) for e in proxy.errors] == ["boom"]
    assert upstream.paths() == []


# ---- writes_only ----------------------------------------------------------------------------


def test_is_write_leaves_out_reads_and_posted_searches():
    assert not is_write("GET", "/api/2.0/mlflow/registered-models/alias?name=m&alias=a")
    assert not is_write("HEAD", "/x")
    assert not is_write("POST", "/api/2.0/mlflow/runs/search")
    assert not is_write("POST", "/api/2.0/mlflow/model-versions/search?x=1")
    assert is_write("POST", "/api/2.0/mlflow/registered-models/alias")
    assert is_write("PATCH", "/api/2.0/mlflow/model-versions/update")
    assert is_write("DELETE", "/api/2.0/mlflow/registered-models/alias?name=search")
    assert is_write("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/model.pkl")


def _mixed(proxy: FaultProxy, http: requests.Session) -> list[str]:
    """GET, search, write #1, GET, write #2, GET, write #3: what the client got for each."""
    steps = [("GET", "/g1"), ("POST", "/runs/search"), ("POST", "/w1"), ("GET", "/g2"),
             ("POST", "/w2"), ("GET", "/g3"), ("POST", "/w3")]
    got = []
    for method, path in steps:
        try:
            got.append(str(http.request(method, f"{proxy.url}{path}", json={}, timeout=10)
                           .status_code))
        except requests.ConnectionError:
            got.append("error")
    return got


def test_down_from_writes_only_counts_writes(proxy, upstream, http):
    proxy.arm(DownFrom(2, writes_only=True))
    assert _mixed(proxy, http) == ["200", "200", "200", "200", "error", "error", "error"]
    assert upstream.paths() == ["/g1", "/runs/search", "/w1", "/g2"]
    assert [r.write for r in proxy.requests] == [False, False, True, False, True, False, True]


def test_drop_response_writes_only_drops_the_nth_write(proxy, upstream, http):
    proxy.arm(DropResponse(2, writes_only=True))
    assert _mixed(proxy, http) == ["200", "200", "200", "200", "error", "200", "200"]
    assert upstream.paths() == ["/g1", "/runs/search", "/w1", "/g2", "/w2", "/g3", "/w3"]
    assert proxy.requests[4].outcome == "dropped_response"


def test_callback_writes_only_fires_at_the_nth_write(proxy, upstream, http):
    seen: list[int] = []
    proxy.arm(Callback(1, lambda record: seen.append(record.index), writes_only=True))
    assert _mixed(proxy, http) == ["200", "200", "error", "error", "error", "error", "error"]
    assert seen == [3]
    assert upstream.paths() == ["/g1", "/runs/search"]


# ---- arm and stop ---------------------------------------------------------------------------


def test_arm_resets_the_counter(proxy, upstream, http):
    for path in ("/a", "/b"):
        http.get(f"{proxy.url}{path}", timeout=10)
    assert proxy.count == 2

    proxy.arm(DownFrom(2))
    assert (proxy.count, proxy.requests) == (0, [])
    assert http.get(f"{proxy.url}/c", timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/d", timeout=10)
    assert [(r.index, r.path) for r in proxy.requests] == [(1, "/c"), (2, "/d")]

    proxy.arm(None)
    assert http.get(f"{proxy.url}/e", timeout=10).status_code == 200
    assert upstream.paths() == ["/a", "/b", "/c", "/e"]
    assert [(r.index, r.outcome) for r in proxy.requests] == [(1, "forwarded")]


def test_plans_are_validated():
    with pytest.raises(ValueError):
        DownFrom(0)
    with pytest.raises(ValueError):
        FaultProxy("https://127.0.0.1:1")


def test_stop_returns_promptly_with_a_client_connection_open(upstream, http):
    proxy = FaultProxy(upstream.url).start()
    with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), 10) as raw:
        raw.sendall(b"POST /half HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        proxy.wait_until(lambda p: p.accepted >= 1)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 3
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            assert raw.recv(1) == b""  # the proxy closed its side
    assert proxy.count == 0  # an incomplete request is not counted
    assert upstream.paths() == []
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/after", timeout=10)
    assert not proxy.errors
