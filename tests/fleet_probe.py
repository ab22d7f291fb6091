"""The two programs tests/test_fleet_netns.py runs inside its network namespaces.

`fleet_probe.py clients --replica r1=http://10.232.1.2:8080 ... --payload JSON`
    The load generator, in the clients' namespace. For each replica, one thread POSTs the payload
    to /invocations `--rate` times a second and another GETs /health every `--health-every`
    seconds, over real HTTP. Every answer (or failure to get one) is one JSON line on stdout,
    flushed at once:
        {"t": when it ended (epoch s), "sent": when it was sent, "replica": "r1",
         "kind": "score" | "health", "status": 200 (0: no answer), "version": X-Model-Version,
         "error": null | "ConnectError: ...", "ms": latency,
         score:  "predictions": [...],
         health: "health": its JSON `status`, "registry": its JSON `registry` (or null)}
    SIGTERM stops it; a last line {"kind": "summary", "replicas": {...}} counts what was seen.

`fleet_probe.py registry`
    The central node's client, in the central namespace (MLFLOW_TRACKING_URI points at the
    server there). It imports MLflow and Promote once, then runs the commands it reads on stdin,
    one JSON object a line, and answers each with one JSON line on stdout:
        {"op": "wait", "url": URL, "timeout": S}     wait until URL answers 200
        {"op": "bucket", "url": URL}                 PUT URL (create an S3 bucket) until it works
        {"op": "register", "model": M, "versions": [["a", 1.0], ...]}
                                                     train and register one version per kind
                                                     (tests/test_serve.py's models)
        {"op": "cli", "argv": [...]}                 `promote ARGV...` (promotion.cli.run), with
                                                     its exit code, its output, and `moves`: each
                                                     alias write it made, timed when the registry
                                                     answered it (epoch s)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import threading
import time
import traceback
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

_lock = threading.Lock()


def emit(record: dict[str, Any]) -> None:
    line = json.dumps(record, separators=(",", ":"))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# -- clients ---------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}
        self.lock = threading.Lock()

    def add(self, replica: str, key: str) -> None:
        with self.lock:
            self.counts.setdefault(replica, Counter())[key] += 1


def _observe(http, replica: str, kind: str, method: str, url: str, payload: bytes | None
             ) -> dict[str, Any]:
    import httpx

    sent = time.time()
    record: dict[str, Any] = {"sent": sent, "replica": replica, "kind": kind, "status": 0,
                              "version": None, "error": None}
    try:
        r = http.request(method, url, content=payload,
                         headers={"Content-Type": "application/json"} if payload else None)
        record["status"] = r.status_code
        record["version"] = r.headers.get("X-Model-Version")
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else None
        if kind == "score":
            record["predictions"] = body.get("predictions") if isinstance(body, dict) else None
        else:
            doc = body if isinstance(body, dict) else {}
            record["health"] = doc.get("status")
            record["registry"] = doc.get("registry")
        if r.status_code != 200 and record["error"] is None:
            record["error"] = r.text[:300]
    except (httpx.HTTPError, ValueError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
    record["t"] = time.time()
    record["ms"] = round((record["t"] - sent) * 1000, 1)
    return record


def _loop(stop: threading.Event, tally: Tally, replica: str, kind: str, method: str, url: str,
          payload: bytes | None, every: float, timeout: float) -> None:
    import httpx

    with httpx.Client(timeout=timeout) as http:
        next_at = time.monotonic()
        while not stop.is_set():
            record = _observe(http, replica, kind, method, url, payload)
            emit(record)
            tally.add(replica, f"{kind}_{'ok' if record['status'] == 200 else 'failed'}")
            next_at = max(next_at + every, time.monotonic())
            stop.wait(next_at - time.monotonic())


def clients(args: argparse.Namespace) -> int:
    replicas = dict(item.split("=", 1) for item in args.replica)
    payload = args.payload.encode()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    tally = Tally()
    threads = []
    for name, base in replicas.items():
        base = base.rstrip("/")
        threads.append(threading.Thread(target=_loop, daemon=True, args=(
            stop, tally, name, "score", "POST", f"{base}/invocations", payload,
            1 / args.rate, args.timeout)))
        threads.append(threading.Thread(target=_loop, daemon=True, args=(
            stop, tally, name, "health", "GET", f"{base}/health", None, args.health_every,
            args.timeout)))
    for thread in threads:
        thread.start()
    emit({"kind": "started", "t": time.time(), "replicas": replicas})
    while not stop.wait(0.2):
        pass
    for thread in threads:
        thread.join(timeout=args.timeout + 1)
    emit({"kind": "summary", "t": time.time(),
          "replicas": {name: dict(counts) for name, counts in tally.counts.items()}})
    return 0


# -- registry --------------------------------------------------------------------------------------


def _wait(url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return {"ok": True}
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    return {"ok": False, "error": f"{url} not answering after {timeout:g} s: {last}"}


def _bucket(url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=5):
                return {"ok": True}
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    return {"ok": False, "error": f"PUT {url}: {last}"}


class Central:
    """Imports what the commands need once; records every alias write's time."""

    def __init__(self) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import test_serve

        from promotion import registry
        from promotion.cli import run

        self.run, self.log_version = run, test_serve.log_version
        self.moves: list[dict[str, Any]] = []
        real = registry.set_alias

        def timed(client, model: str, alias: str, version: str) -> None:
            real(client, model, alias, version)
            self.moves.append({"t": time.time(), "model": model, "alias": alias,
                               "version": str(version)})

        registry.set_alias = timed

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "wait":
            return _wait(command["url"], float(command.get("timeout", 120)))
        if op == "bucket":
            return _bucket(command["url"])
        if op == "register":
            return {"ok": True, "versions": [self.log_version(command["model"], kind, score)
                                             for kind, score in command["versions"]]}
        if op == "cli":
            self.moves.clear()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = int(self.run(list(command["argv"])))
            return {"ok": rc == 0, "rc": rc, "output": out.getvalue()[-3000:],
                    "moves": list(self.moves)}
        return {"ok": False, "error": f"unknown op {op!r}"}


def central(args: argparse.Namespace) -> int:
    # What commands print goes to stderr; stdout carries only the answers.
    answers = sys.stdout
    sys.stdout = sys.stderr
    started = time.time()
    try:
        node = Central()
    except Exception:
        traceback.print_exc()
        return 1
    answers.write(json.dumps({"op": "ready", "ok": True, "import_s": time.time() - started})
                  + "\n")
    answers.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        began = time.time()
        try:
            answer = node.handle(command)
        except Exception as exc:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        answer.update(op=command["op"], seconds=round(time.time() - began, 3))
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    load = sub.add_parser("clients", help="score and probe the replicas, one JSON line each")
    load.add_argument("--replica", action="append", required=True, metavar="NAME=URL")
    load.add_argument("--payload", required=True, help="the JSON body of every score request")
    load.add_argument("--rate", type=float, default=5.0, help="score requests/s per replica")
    load.add_argument("--health-every", type=float, default=0.5, metavar="SECONDS")
    load.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    sub.add_parser("registry", help="run registry commands read from stdin")
    args = parser.parse_args(argv)
    return clients(args) if args.mode == "clients" else central(args)


if __name__ == "__main__":
    sys.exit(main())
