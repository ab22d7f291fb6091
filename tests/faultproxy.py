"""A fault-injecting HTTP proxy between a test's MLflow client and a real tracking server.

    with FaultProxy(mlflow_server) as proxy:
        proxy.arm(DownFrom(3))          # requests 1 and 2 go through, the server "dies" at 3
        ... point the client at proxy.url, run Promote, assert on proxy.requests ...

A real TCP proxy on 127.0.0.1, standard library only (one thread per client connection). Each
client connection carries exactly one request: the proxy reads the request head and its whole
body (Content-Length, or chunked up to the 0-chunk), counts it, decides what to do with it, and
closes the connection afterwards. Forwarded requests go to the upstream over a fresh connection
with `Connection: close` (replacing any Connection / Keep-Alive header); the response is read
whole (framed by Content-Length, chunked, or the upstream's close) and sent to the client with
`Connection: close`, so `requests` opens a new connection for its next request and counting stays
exact on a kept-alive session. Nothing else is rewritten: Host stays as the client sent it
(127.0.0.1:<proxy port>, which MLflow's default --allowed-hosts accepts as "127.0.0.1:*").

Requests are numbered from 1 since the last arm(). The fault plans:
  DownFrom(n)          index >= n: closed at once, no response, not forwarded (server died);
  DropResponse(n)      n is forwarded, its response read fully and discarded, client closed;
  Status(n, code=503)  n is answered by the proxy with `code` and a small MLflow-style JSON body;
  ResetOnce(n)         n is not forwarded and its connection is reset (RST); later ones pass;
  Hang(n, seconds)     n is held unanswered until the client closes, `seconds` pass or stop();
  Callback(n, fn)      fn(record) runs when n arrives, then n and all later ones as DownFrom(n).
Every plan takes writes_only=True: then n counts only writes (see is_write), and for DownFrom
and Callback every request from the n-th write on, reads included, is refused.

RequestRecord.outcome is one of: "forwarded", "refused" (DownFrom, ResetOnce, and the requests
after a Callback's), "dropped_response", "status", "killed" (the Callback's own request), "hung",
"upstream_error" (forwarding failed: the client connection is closed without a response).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Callback",
    "DownFrom",
    "DropResponse",
    "Fault",
    "FaultProxy",
    "Hang",
    "RequestRecord",
    "ResetOnce",
    "Status",
    "is_write",
]

_MAX_HEAD = 64 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection"})
_INJECTED_BODY = json.dumps(
    {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected"}
).encode()


def is_write(method: str, path: str) -> bool:
    """Whether a request counts towards a writes_only plan.

    The rule: a write is a request whose method is not GET or HEAD and whose path (without the
    query string) does not contain "search" (which covers every path ending in /search).
    MLflow's client POSTs some reads (runs/search, registered-models/search,
    model-versions/search, logged-models/search, ...); those are not writes.
    """
    route = path.split("?", 1)[0].lower()
    return method.upper() not in ("GET", "HEAD") and "search" not in route


# ---- fault plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault plan: `n` is a 1-based request index counted since arm()."""

    n: int
    writes_only: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"request indexes start at 1, got n={self.n}")


@dataclass(frozen=True)
class DownFrom(Fault):
    """Requests from the n-th on are not forwarded: closed at once without a response."""


@dataclass(frozen=True)
class DropResponse(Fault):
    """Request n reaches the server; its response is read fully, then lost."""


@dataclass(frozen=True)
class Status(Fault):
    """Request n is answered by the proxy with `code` (not forwarded)."""

    code: int = 503


@dataclass(frozen=True)
class ResetOnce(Fault):
    """Request n is not forwarded and its connection is reset; the others pass."""


@dataclass(frozen=True)
class Hang(Fault):
    """Request n gets no answer until the client gives up, `seconds` pass, or stop()."""

    seconds: float


@dataclass(frozen=True)
class Callback(Fault):
    """fn(record) runs when request n arrives; then n and all later requests are refused."""

    fn: Callable[[RequestRecord], object]


@dataclass(eq=False)
class RequestRecord:
    """One request the proxy saw since the last arm()."""

    index: int  # 1-based, since arm()
    method: str
    path: str  # the request target as sent (with any query string)
    write: bool  # is_write(method, path)
    outcome: str  # see the module docstring
    body: bytes = field(default=b"", repr=False)  # the request body (de-chunked)
    status: int | None = None  # the upstream's status (forwarded, dropped) or the injected one
    error: str | None = None  # why forwarding failed ("upstream_error")
    # Set once the proxy is done with the request (its client connection closed).
    done: threading.Event = field(default_factory=threading.Event, repr=False)


# ---- HTTP/1.1 message framing ----------------------------------------------------------------


class _Closed(Exception):
    """The peer closed the connection before the message was complete."""


class _BadMessage(Exception):
    """Not an HTTP/1.1 message the proxy can frame."""


class _Reader:
    """Buffered reads from a socket: up to a delimiter, n bytes, or EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise _Closed
        self._buf += chunk

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def until(self, delim: bytes, limit: int = _MAX_HEAD) -> bytes:
        start = 0
        while (i := self._buf.find(delim, start)) < 0:
            if len(self._buf) > limit:
                raise _BadMessage(f"no {delim!r} within {limit} bytes")
            start = max(0, len(self._buf) - len(delim) + 1)
            self._fill()
        return self._take(i + len(delim))

    def exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        return self._take(n)

    def to_eof(self) -> bytes:
        try:
            while True:
                self._fill()
        except _Closed:
            return self._take(len(self._buf))


Headers = list[tuple[str, str]]


def _header(headers: Headers, name: str) -> str | None:
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


def _parse_head(head: bytes) -> tuple[list[str], Headers]:
    """The start line's parts and the header fields of a message head."""
    lines = head.decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 2:
        raise _BadMessage(f"bad start line {lines[0]!r}")
    headers: Headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadMessage(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return start, headers


def _build_head(start_line: str, headers: Headers) -> bytes:
    """The head with hop-by-hop headers replaced by `Connection: close`."""
    kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines = [start_line, *(f"{k}: {v}" for k, v in kept), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _chunked(headers: Headers) -> bool:
    te = _header(headers, "transfer-encoding")
    return te is not None and te.lower().split(",")[-1].strip() == "chunked"


def _read_chunked(reader: _Reader) -> tuple[bytes, bytes]:
    """(the raw chunked bytes up to and including the trailers, the de-chunked content)."""
    raw, content = bytearray(), bytearray()
    while True:
        line = reader.until(b"\r\n")
        raw += line
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadMessage(f"bad chunk size line {line!r}") from exc
        if size == 0:
            while (trailer := reader.until(b"\r\n")) != b"\r\n":
                raw += trailer
            raw += trailer
            return bytes(raw), bytes(content)
        data = reader.exactly(size + 2)
        raw += data
        content += data[:-2]


def _read_request_body(reader: _Reader, headers: Headers) -> tuple[bytes, bytes]:
    if _chunked(headers):
        return _read_chunked(reader)
    length = _header(headers, "content-length")
    if length is None:
        return b"", b""
    data = reader.exactly(int(length))
    return data, data


def _read_response_body(reader: _Reader, headers: Headers, method: str, status: int) -> bytes:
    if method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if _chunked(headers):
        return _read_chunked(reader)[0]
    length = _header(headers, "content-length")
    return reader.exactly(int(length)) if length is not None else reader.to_eof()


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: Headers
    raw_body: bytes
    body: bytes

    def upstream_bytes(self) -> bytes:
        return _build_head(f"{self.method} {self.target} {self.version}", self.headers) + (
            self.raw_body
        )


def _read_request(reader: _Reader, conn: socket.socket) -> _Request:
    head = reader.until(b"\r\n\r\n").lstrip(b"\r\n")
    start, headers = _parse_head(head)
    if len(start) != 3:
        raise _BadMessage(f"bad request line {start!r}")
    method, target, version = start
    expect = _header(headers, "expect")
    if expect is not None and expect.lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    raw, body = _read_request_body(reader, headers)
    return _Request(method, target, version, headers, raw, body)


def _injected_response(code: int) -> bytes:
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = "Injected"
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(_INJECTED_BODY)))]
    return _build_head(f"HTTP/1.1 {code} {reason}", headers) + _INJECTED_BODY


# ---- the proxy -------------------------------------------------------------------------------

# What each plan does to the request it hits: (the action, the recorded outcome).
_ACTIONS: dict[type[Fault], tuple[str, str]] = {
    DropResponse: ("drop", "dropped_response"),
    Status: ("status", "status"),
    ResetOnce: ("reset", "refused"),
    Hang: ("hang", "hung"),
}


class FaultProxy:
    """A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of `upstream` (see the module doc)."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 60.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"upstream must be a plain http://host:port URL, got {upstream!r}")
        self.upstream = upstream
        self._upstream_addr = (parts.hostname, parts.port or 80)
        self.upstream_timeout = upstream_timeout
        self.url = ""
        self.accepted = 0  # client connections accepted since start()
        # Exceptions the proxy's threads met (its own bugs, a Callback's fn raising): a test can
        # assert it stays empty.
        self.errors: list[BaseException] = []
        # Reentrant: wait_until's predicate may read proxy.count / proxy.requests.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._plan: Fault | None = None
        self._records: list[RequestRecord] = []
        self._writes = 0
        self._down = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- lifecycle --

    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("FaultProxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every open connection and wait (up to `timeout`) for the threads."""
        with self._lock:
            if self._listener is None or self._stopping.is_set():
                return
            self._stopping.set()
            for sock in self._sockets:
                _shutdown(sock)
        self._wake_w.send(b"x")
        deadline = time.monotonic() + timeout
        assert self._accept_thread is not None
        self._accept_thread.join(timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the plan and what was seen --

    def arm(self, plan: Fault | None) -> None:
        """Set the plan and start counting requests again from 0."""
        if plan is not None and type(plan) not in (DownFrom, Callback, *_ACTIONS):
            raise TypeError(f"not a fault plan: {plan!r}")
        with self._changed:
            self._plan = plan
            self._records = []
            self._writes = 0
            self._down = False
            self._changed.notify_all()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request seen since the last arm() (a copy), in arrival order."""
        with self._lock:
            return list(self._records)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._records)

    def wait_until(self, predicate: Callable[[FaultProxy], bool], timeout: float = 10.0) -> None:
        """Block until predicate(proxy) holds; re-checked on every accept, arrival and finish."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"proxy condition not met within {timeout} s")
                self._changed.wait(left)

    def wait_for_count(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least n requests have arrived since arm()."""
        self.wait_until(lambda p: p.count >= n, timeout)

    # -- internals --

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                _shutdown(sock)
                raise _Closed
            self._sockets.add(sock)

    def _close(self, sock: socket.socket, reset: bool = False) -> None:
        with self._lock:
            self._sockets.discard(sock)
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        try:
            self._track(conn)
        except _Closed:
            conn.close()
            return
        with self._changed:
            self.accepted += 1
            self._changed.notify_all()
        thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                  name="faultproxy-conn")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        record: RequestRecord | None = None
        reset = False
        try:
            try:
                request = _read_request(_Reader(conn), conn)
            except (OSError, _Closed, _BadMessage, ValueError):
                return  # the client went away (or sent garbage) before a whole request: not counted
            record, action, plan = self._admit(request)
            reset = self._act(action, plan, conn, request, record)
        except Exception as exc:  # a bug in the proxy must reach the test, not die in a thread
            self.errors.append(exc)
        finally:
            self._close(conn, reset=reset)
            if record is not None:
                record.done.set()
            self._notify()

    def _admit(self, request: _Request) -> tuple[RequestRecord, str, Any]:
        """Count the request, decide what to do with it and record it."""
        write = is_write(request.method, request.target)
        with self._changed:
            index = len(self._records) + 1
            if write:
                self._writes += 1
            action, outcome = self._decide(index, write)
            record = RequestRecord(index, request.method, request.target, write, outcome,
                                   body=request.body)
            self._records.append(record)
            self._changed.notify_all()
            return record, action, self._plan

    def _decide(self, index: int, write: bool) -> tuple[str, str]:
        plan = self._plan
        if plan is None:
            return "forward", "forwarded"
        # writes_only: only writes count towards n (self._writes already counts this one).
        hit = (write and self._writes == plan.n) if plan.writes_only else index == plan.n
        if isinstance(plan, DownFrom | Callback):
            if self._down:
                return "close", "refused"
            if not hit:
                return "forward", "forwarded"
            self._down = True
            return ("kill", "killed") if isinstance(plan, Callback) else ("close", "refused")
        return _ACTIONS[type(plan)] if hit else ("forward", "forwarded")

    def _act(self, action: str, plan: Any, conn: socket.socket, request: _Request,
             record: RequestRecord) -> bool:
        """Carry out the action; True when the client connection is to be reset, not closed."""
        if action in ("forward", "drop"):
            response = self._exchange(request, record)
            if response is not None and action == "forward":
                with contextlib.suppress(OSError):
                    conn.sendall(response)
        elif action == "status":
            record.status = plan.code
            with contextlib.suppress(OSError):
                conn.sendall(_injected_response(plan.code))
        elif action == "hang":
            conn.settimeout(plan.seconds)
            with contextlib.suppress(OSError):
                conn.recv(1)  # returns on the client's close, on stop() (shutdown), or times out
        elif action == "kill":
            try:
                plan.fn(record)
            except Exception as exc:
                self.errors.append(exc)
        return action == "reset"

    def _exchange(self, request: _Request, record: RequestRecord) -> bytes | None:
        """Send the request upstream and return the response for the client (None on failure)."""
        try:
            upstream = socket.create_connection(self._upstream_addr, timeout=self.upstream_timeout)
        except OSError as exc:
            record.outcome, record.error = "upstream_error", repr(exc)
            return None
        try:
            self._track(upstream)
            upstream.sendall(request.upstream_bytes())
            reader = _Reader(upstream)
            while True:
                head = reader.until(b"\r\n\r\n")
                start, headers = _parse_head(head)
                status = int(start[1])
                if not (100 <= status < 200 and status != 101):
                    break  # 1xx interim responses are skipped
            body = _read_response_body(reader, headers, request.method, status)
        except (OSError, _Closed, _BadMessage, ValueError) as exc:
            record.outcome, record.error = "upstream_error", repr(exc)
            return None
        finally:
            self._close(upstream)
        record.status = status
        return _build_head(" ".join(start), headers) + body


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
