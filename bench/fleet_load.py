"""The load processes of bench/fleet.py: the endpoints' polls, and the gates and training writes.

Each runs in a process of its own, apart from the bench's driver and from the server:

  poll   N simulated `promote serve` endpoints, each on its own HTTP/1.1 connection, sending the
         exact poll request (captured from the product, handed over in base64) and then waiting
         the poll interval, as the alias follower does (one check, then `interval` of waiting).
         A connection the server closed while idle is reopened, and the reconnection is part of
         that poll's time, as it is for the client. Plain asyncio: little CPU of its own.
         Prints one line `@@result <JSON>`: polls, rate, p50/p90/p99/max, errors by kind.
  ops    a long-lived worker that reads one JSON command per line on stdin and answers each
         with one line `@@result <JSON>` on stdout (MLflow may print other lines). MLflow and
         Promote are imported once, so the operations it times are warm (a `promote` command
         in CI also pays the import of MLflow, 1.3-2.4 s, on the client, not on the server):
           warm      import MLflow, scikit-learn and Promote's gate and training;
           capture   the request(s) one poll sends (`read_route`, what `promote serve` calls),
                     taken from a throwaway listener;
           train     `promote train` of a config (train_candidates, in process);
           gate      `promote gate` of a policy (run_gate, in process);
           phase     train or gate every `every` seconds from `offset`, started before
                     `seconds`; each one's duration and outcome.

    .venv/bin/python bench/fleet_load.py poll --port P --request B64 --endpoints N \
        --interval S --seconds S
    .venv/bin/python bench/fleet_load.py ops
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARK = "@@result "
REQUEST_TIMEOUT = 10.0  # seconds: MLFLOW_HTTP_REQUEST_TIMEOUT as Promote sets it


# -- poll: the endpoints ----------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; (status, whether the server will close the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    return status, headers.get("connection", "").lower() == "close"


class Endpoint:
    """One endpoint's connection to the server, reopened when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, request: bytes) -> tuple[int, bool]:
        """(status, whether a new connection was opened); raises on a failed exchange."""
        fresh = self.reader is None or self.writer is None or self.reader.at_eof()
        if fresh:
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:  # not reached: opened just above
            raise OSError("no connection")
        writer.write(request)
        status, closing = await read_response(reader)
        if closing:
            self.close()
        return status, fresh


async def endpoint_loop(endpoint: Endpoint, request: bytes, interval: float, end: float,
                        rng: random.Random, out: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0, interval))  # endpoints start at any moment
    while loop.time() < end:
        started = time.perf_counter()
        status, fresh, failure = 0, False, ""
        for attempt in range(2):  # a kept-alive connection that died is retried once, anew
            reused = endpoint.reader is not None
            try:
                status, fresh = await asyncio.wait_for(endpoint.send(request), REQUEST_TIMEOUT)
                break
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                endpoint.close()
                if not reused or attempt == 1:
                    failure = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                    break
        out["latencies"].append(time.perf_counter() - started)
        out["fresh"] += fresh
        if failure or status != 200:
            out["errors"] += 1
            kind = failure or f"HTTP {status}"
            out["kinds"][kind] = out["kinds"].get(kind, 0) + 1
        await asyncio.sleep(interval)
    endpoint.close()


async def run_fleet(port: int, request: bytes, endpoints: int, interval: float,
                    seconds: float, seed: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"latencies": [], "fresh": 0, "errors": 0, "kinds": {}}
    rng = random.Random(seed)
    started = loop.time()
    end = started + seconds
    await asyncio.gather(*(endpoint_loop(Endpoint("127.0.0.1", port), request, interval, end,
                                         rng, out) for _ in range(endpoints)))
    elapsed = loop.time() - started
    lat = sorted(out["latencies"])
    n = len(lat)

    def q(p: float) -> float:
        return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {"polls": n, "seconds": elapsed, "rate": n / seconds if seconds else 0.0,
            "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": lat[-1] * 1000 if n else 0,
            "errors": out["errors"], "kinds": out["kinds"], "fresh": out["fresh"]}


def poll_main(args: argparse.Namespace) -> int:
    request = base64.b64decode(args.request)
    summary = asyncio.run(run_fleet(args.port, request, args.endpoints, args.interval,
                                    args.seconds, args.seed))
    print(MARK + json.dumps(summary), flush=True)
    return 0


# -- ops: gates and training writes -----------------------------------------------------------


class Ops:
    """What a CI job does to the registry, warm, one command at a time."""

    def __init__(self) -> None:
        from promotion.registry.client import apply_retry_defaults

        apply_retry_defaults()
        self.clients: dict[str, Any] = {}

    def client(self, url: str) -> Any:
        from promotion.registry.client import connect

        if url not in self.clients:
            self.clients[url] = connect(url)
        return self.clients[url]

    def capture(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Every request one endpoint poll sends, as bytes on the wire (base64)."""
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from promotion.registry.rollouts import read_route

        seen: list[bytes] = []
        answer = json.dumps({"registered_model": {
            "name": cmd["model"], "aliases": [{"alias": cmd["alias"], "version": "1"}]}}).encode()

        class Listener(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                raw = self.requestline + "\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in self.headers.items()) + "\r\n"
                seen.append(raw.encode("latin-1"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            from promotion.registry.client import connect

            route = read_route(connect(f"http://127.0.0.1:{server.server_address[1]}"),
                               cmd["model"], cmd["alias"])
        finally:
            server.shutdown()
            server.server_close()
        return {"requests": [base64.b64encode(r).decode() for r in seen],
                "route_version": route.version}

    def warm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Import what the operations need, autolog's integrations included, before anything
        is timed."""
        import mlflow
        import sklearn.linear_model  # noqa: F401

        import promotion.gate
        import promotion.training  # noqa: F401

        mlflow.autolog(log_models=False, silent=True)
        mlflow.autolog(disable=True, silent=True)

        return {"outcome": "warm"}

    def train(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from promotion.training import train_candidates

        report = train_candidates([str(REPO / cmd["config"])], tracking_uri=cmd["url"])
        return {"outcome": f"version {report.results[-1].version}"}

    def gate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from promotion.gate import run_gate
        from promotion.policy import load_policy

        result = run_gate(self.client(cmd["url"]), load_policy(cmd["policy"]))
        return {"outcome": f"{result.outcome} v{result.candidate_version}"}

    def phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """`cmd['kind']` every `every` s from `offset` s, started before `seconds` s."""
        run: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self, cmd["kind"])
        start = time.monotonic()
        done = []
        at = cmd["offset"]
        while at < cmd["seconds"]:
            wait = start + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            began = time.monotonic()
            outcome = guarded(run, cmd)
            done.append({"at": began - start, "seconds": time.monotonic() - began,
                         "outcome": outcome.get("outcome") or outcome.get("error", "?")})
            at += cmd["every"]
        return {"done": done}


def guarded(run: Callable[[dict[str, Any]], dict[str, Any]],
            cmd: dict[str, Any]) -> dict[str, Any]:
    """The operation's answer, or {'error': ...} (credentials removed) when it raised."""
    from promotion.errors import redact

    try:
        return run(cmd)
    except Exception as exc:  # reported, never fatal: a bench measures, it does not stop
        return {"error": redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]}


def ops_main() -> int:
    ops = Ops()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        result = guarded(getattr(ops, cmd["op"]), cmd)
        print(MARK + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    poll = sub.add_parser("poll")
    poll.add_argument("--port", type=int, required=True)
    poll.add_argument("--request", required=True, help="the poll request, base64")
    poll.add_argument("--endpoints", type=int, default=100)
    poll.add_argument("--interval", type=float, default=10.0)
    poll.add_argument("--seconds", type=float, default=30.0)
    poll.add_argument("--seed", type=int, default=0)
    sub.add_parser("ops")
    args = parser.parse_args()
    return poll_main(args) if args.role == "poll" else ops_main()


if __name__ == "__main__":
    sys.exit(main())
