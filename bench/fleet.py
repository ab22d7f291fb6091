"""The central MLflow node under a fleet's load: endpoint polls, gates and training writes.

One run, on this machine, loopback only, everything in a temporary directory and a fresh
PostgreSQL database (created on PROMOTE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/
postgres, and dropped at the end):
  1. the central node's own command line, deploy/mlflow-server.sh (`mlflow server` on the
     PostgreSQL backend, artifacts proxied to a local directory), once per worker count
     (--workers 1,2,4), all on the same database, all started before the first measurement;
  2. seeded as production holds it, with the product's own code (bench/fleet_load.py, warm, in
     processes of their own): `promote train` of the linear baseline, `promote gate`, `promote
     train` again, `promote gate` again, with a policy that has a `rollout:` block, so the model
     has versions, `Production`, `challenger`, `Production-canary` and the rollout state tag
     `promotion.rollout.Production`;
  3. the exact request(s) one `promote serve` poll sends (`read_route`, captured from a
     throwaway listener): one GET of the registered model;
  4. capacity: wrk, closed loop, --per-worker keep-alive connections per server worker (enough
     to keep each worker busy; at most MLflow's database pool of 5 each, so the pool does not
     churn), sending that request for --seconds per round, in alternating rounds (1 2 4,
     4 2 1, ...) after a warm-up: requests/s (median of the rounds), p50 and p99 (medians of the
     rounds), errors, the CPU the server (its process group) and the database (the backends of
     its database) spent per poll, and the database sessions opened;
  5. a fleet: --endpoints endpoints polling every --intervals seconds (each on its own
     connection, waiting the interval after each answer, as the follower does), for
     --mixed-seconds per worker count and interval, while a gate process runs `promote gate`
     (--gates-per-minute; with a new version to gate it starts a new rollout, else `already`)
     and a training process runs `promote train` (--writes-per-minute: a run with metrics,
     params, artifacts and the model, a new version, the `challenger` alias): poll p50 / p99,
     errors, the share of polls that opened a connection, the CPU of server and database, and
     the duration of each gate and each training job;
  6. from 4: the poll interval at which --endpoints endpoints cost the server less than 5 % of
     its capacity (interval > endpoints / (0.05 * capacity)), and what they cost at 10 s and
     60 s, `promote serve`'s default poll interval without and with webhooks.
Figures only: nothing is asserted. Client and server share this machine's cores (and other work
runs on it): see the note printed with the results.

    .venv/bin/python bench/fleet.py [--seconds 6] [--rounds 2] [--per-worker 4]
        [--workers 1,2,4] [--endpoints 100] [--intervals 10,1] [--mixed-seconds 20]
        [--gates-per-minute 6] [--writes-per-minute 4]

Needs wrk (Debian: apt-get install wrk) and a PostgreSQL that lets the bench create a database.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fleet_load  # noqa: E402 - a sibling script, not a package
import serve as serve_bench  # noqa: E402

REPO = HERE.parent
BIN = serve_bench.BIN
SCRIPT = REPO / "deploy" / "mlflow-server.sh"
MODEL = "diabetes-regressor"
ALIAS = "Production"
CONFIG = "train/candidates/linear.yaml"  # the cheapest real training job
ADMIN_URI = os.environ.get("PROMOTE_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
BUDGET = 0.05  # the share of the server's capacity the fleet's polls may take
DEFAULT_POLL = 10.0  # promote serve's poll interval without webhooks
WEBHOOK_POLL = 60.0  # ... and with them
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Retrained identical candidates must pass (max_regression 0, no min_improvement) so that every
# new version starts a rollout, as a passing gate does with a `rollout:` block.
POLICY = f"""\
model: {MODEL}
alias: {ALIAS}
candidate: latest
when_no_production: promote
metrics:
  rmse: {{goal: minimize, max: 70, max_regression: 0}}
  r2: {{goal: maximize, min: 0.35, max_regression: 0.02}}
  mae: {{goal: minimize, max: 60}}
require_tags:
  data_validated: "true"
rollout:
  alias: {ALIAS}-canary
  mode: canary
  steps: [5%, 25%, 50%]
  step_after: 30m
  min_requests: 500
  rules:
    error_rate: {{max: 1%, max_increase: 50%}}
    latency_p95_ms: {{max_increase: 20%}}
"""


def redact(text: str) -> str:
    """Credentials out of anything printed (the product's own redaction)."""
    from promotion.errors import redact as product_redact

    return product_redact(text)


# -- the database and the servers -------------------------------------------------------------


def on_admin(statement: Callable[[Any], Any], tries: int = 10) -> Any:
    """Run `statement(connection)` on the admin database; a server that has no connection left
    (max_connections, shared with every other client) is retried for a while."""
    import psycopg

    for attempt in range(tries):
        try:
            with psycopg.connect(ADMIN_URI, autocommit=True, connect_timeout=5) as conn:
                return statement(conn)
        except psycopg.OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)
    return None


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """(URI, name) of a fresh database on ADMIN_URI, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"promote_bench_fleet_{uuid.uuid4().hex[:10]}"
    try:
        on_admin(lambda c: c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))))
    except psycopg.Error as exc:
        sys.exit(f"cannot create a database on {redact(ADMIN_URI)}: {redact(str(exc)).strip()}")
    try:
        yield ADMIN_URI.rsplit("/", 1)[0] + "/" + name, name
    finally:
        on_admin(lambda c: c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                                     .format(sql.Identifier(name))), tries=60)


@dataclass
class Node:
    workers: int
    port: int
    proc: subprocess.Popen
    log: Path
    started: float
    idle_cores: float = 0.0  # CPU of the node at rest, once started
    processes: int = 0  # in its process group at rest

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        """The node's process group: the script, `mlflow server`, its workers, its job runner."""
        return self.proc.pid


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def node(tmp: Path, env: dict[str, str], workers: int) -> Iterator[Node]:
    """deploy/mlflow-server.sh with `workers` workers, started (see `ready`), stopped at the end."""
    port = serve_bench.free_port()
    log_path = tmp / f"mlflow-workers-{workers}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["sh", str(SCRIPT)], cwd=tmp, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "MLFLOW_PORT": str(port),
                                     "MLFLOW_WORKERS": str(workers)})
        try:
            yield Node(workers, port, proc, log_path, time.monotonic())
        finally:
            stop(proc)


def ready(n: Node) -> None:
    """Wait until every worker of `n` has started and it answers /health."""
    serve_bench.wait_for(
        lambda: n.log.read_text(errors="replace").count("Application startup complete")
        >= n.workers and serve_bench.healthy(f"127.0.0.1:{n.port}"), 300,
        f"mlflow server --workers {n.workers} never became ready",
        alive=lambda: n.proc.poll() is None, log=n.log)
    print(f"  --workers {n.workers}: answering {time.monotonic() - n.started:.0f} s after start")


def settle(nodes: list[Node], dbname: str, limit: float = 120.0) -> None:
    """Wait until no node is still starting up (`mlflow server` starts a job runner and its
    consumers after the workers, each importing MLflow), then measure each one at rest."""
    deadline = time.monotonic() + limit
    while True:
        before = {n.workers: cpu_by_pid(n.pgid, "")[0] for n in nodes}
        t0 = time.monotonic()
        time.sleep(2.0)
        wall = time.monotonic() - t0
        after = {n.workers: cpu_by_pid(n.pgid, "")[0] for n in nodes}
        busy = [w for w in after if after[w].keys() != before[w].keys()
                or used(before[w], after[w]) / wall > 0.2]
        if not busy:
            break
        if time.monotonic() > deadline:
            print(f"  still busy after {limit:g} s: --workers {busy}; measuring anyway")
            break
    for n in nodes:
        with Window(n.pgid, dbname) as w:
            time.sleep(3.0)
        n.idle_cores, n.processes = w.server / w.wall, group_size(n.pgid)
        print(f"  --workers {n.workers}: {n.processes} processes, {n.idle_cores:.3f} cores "
              "at rest")


def server_env(tmp: Path, uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PROMOTE_", "GITHUB_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "MLFLOW_HOST": "127.0.0.1", "MLFLOW_BACKEND_STORE_URI": uri,
                "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "artifacts"),
                # One key for every worker, as the deployment sets it (a Fernet key).
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY":
                    base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    return env


# -- CPU accounting from /proc ----------------------------------------------------------------


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(command name, process group, CPU seconds) of a live process."""
    try:
        raw = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return name, int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_size(pgid: int) -> int:
    """How many live processes are in the process group."""
    return len(cpu_by_pid(pgid, "")[0])


def cpu_by_pid(pgid: int, dbname: str) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds so far of each process of the server's group, and of each backend of its
    database."""
    server: dict[str, float] = {}
    db: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        name, group, cpu = stat
        if group == pgid:
            server[pid] = cpu
        elif dbname and name == "postgres":
            try:
                title = Path("/proc", pid, "cmdline").read_bytes()
            except OSError:
                continue
            if f" {dbname} ".encode() in title:
                db[pid] = cpu
    return server, db


def used(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second (a process
    that ended in between is not counted: a lower bound)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def db_sessions(dbname: str) -> int | None:
    """Sessions ever opened on the database (pg_stat_database.sessions, PostgreSQL 14+); None
    when PostgreSQL had no connection to spare for the question."""
    import psycopg

    try:
        row = on_admin(lambda c: c.execute("SELECT sessions FROM pg_stat_database WHERE "
                                           "datname = %s", (dbname,)).fetchone(), tries=3)
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row and row[0] is not None else 0


@dataclass
class Window:
    """Wall time, CPU of the server and of the database, and database sessions opened."""

    pgid: int
    dbname: str
    wall: float = 0.0
    server: float = 0.0
    db: float = 0.0
    sessions: int | None = 0  # None: unknown
    _start: tuple[float, dict[str, float], dict[str, float], int | None] | None = None

    def __enter__(self) -> Window:
        self._start = (time.monotonic(), *cpu_by_pid(self.pgid, self.dbname),
                       db_sessions(self.dbname))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        t0, server, db, sessions = self._start
        self.wall = time.monotonic() - t0
        server_now, db_now = cpu_by_pid(self.pgid, self.dbname)
        self.server, self.db = used(server, server_now), used(db, db_now)
        now = db_sessions(self.dbname)
        self.sessions = None if now is None or sessions is None else now - sessions


# -- the load processes -----------------------------------------------------------------------


class OpsProcess:
    """A bench/fleet_load.py `ops` worker: one JSON command in, one JSON result out."""

    def __init__(self, tmp: Path, env: dict[str, str], name: str) -> None:
        self.log = tmp / f"ops-{name}.log"
        self._err = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fleet_load.py"), "ops"],
                                     cwd=tmp, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     start_new_session=True)
        self.stdin: IO[str] = self.proc.stdin  # type: ignore[assignment] - PIPE: never None
        self.stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]

    def send(self, **cmd: Any) -> None:
        self.stdin.write(json.dumps(cmd) + "\n")
        self.stdin.flush()

    def receive(self) -> dict[str, Any]:
        for line in self.stdout:
            if line.startswith(fleet_load.MARK):
                return json.loads(line[len(fleet_load.MARK):])
        tail = redact(self.log.read_text(errors="replace")[-3000:])
        sys.exit(f"a load process ended unexpectedly:\n{tail}")

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.receive()

    def close(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        self._err.close()


def must(answer: dict[str, Any], what: str) -> dict[str, Any]:
    if "error" in answer:
        sys.exit(f"{what} failed: {answer['error']}")
    return answer


@dataclass(frozen=True)
class PollRequest:
    """The request an endpoint's poll sends, as captured."""

    raw: bytes

    @property
    def lines(self) -> list[str]:
        return self.raw.decode("latin-1").split("\r\n")

    @property
    def method_target(self) -> tuple[str, str]:
        method, target, _ = self.lines[0].split(" ", 2)
        return method, target

    @property
    def headers(self) -> list[tuple[str, str]]:
        pairs = [line.partition(":") for line in self.lines[1:] if line]
        return [(k.strip(), v.strip()) for k, _, v in pairs]

    def to(self, port: int) -> bytes:
        """The same request, addressed to 127.0.0.1:port."""
        headers = [(k, f"127.0.0.1:{port}" if k.lower() == "host" else v)
                   for k, v in self.headers]
        return ("\r\n".join([self.lines[0], *(f"{k}: {v}" for k, v in headers)]) +
                "\r\n\r\n").encode("latin-1")


# -- measurements ------------------------------------------------------------------------------


@dataclass
class WrkRun:
    rate: float
    requests: int
    p50: float  # ms
    p99: float
    errors: int
    window: Window


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(target: Node, request: PollRequest, seconds: float, connections: int,
        dbname: str) -> WrkRun:
    method, path = request.method_target
    headers = [f"{k}: {v}" for k, v in request.headers if k.lower() != "host"]
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "10s", *[a for h in headers for a in ("-H", h)], target.url + path]
    if method != "GET":
        sys.exit(f"a poll sends {method}: this bench only replays GET requests")
    with Window(target.pgid, dbname) as window:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        sys.exit(f"wrk failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    text = out.stdout
    latency = {q: _ms(v, u) for q, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    requests = re.search(r"(\d+) requests in", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not (latency and requests and rate):
        sys.exit(f"cannot read wrk's output:\n{text}")
    errors = (sum(int(g) for g in sockets.groups()) if sockets else 0) + \
        (int(non2xx.group(1)) if non2xx else 0)
    return WrkRun(float(rate.group(1)), int(requests.group(1)), latency["50"], latency["99"],
                  errors, window)


@dataclass
class Capacity:
    runs: list[WrkRun] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def per_request_ms(self, which: str) -> float:
        cpu = sum(getattr(r.window, which) for r in self.runs)
        return cpu / max(1, sum(r.requests for r in self.runs)) * 1000


def capacity(nodes: list[Node], request: PollRequest, args: argparse.Namespace,
             dbname: str) -> dict[int, Capacity]:
    results = {n.workers: Capacity() for n in nodes}
    for n in nodes:  # warm every worker of every server alike
        wrk(n, request, 2, args.per_worker * n.workers, dbname)
    for r in range(args.rounds):
        order = nodes if r % 2 == 0 else list(reversed(nodes))
        for n in order:
            run = wrk(n, request, args.seconds, args.per_worker * n.workers, dbname)
            results[n.workers].runs.append(run)
            print(f"  round {r + 1} --workers {n.workers}: {run.rate:8.1f} req/s  "
                  f"p50 {run.p50:7.2f} ms  p99 {run.p99:7.2f} ms  errors {run.errors}")
    return results


@dataclass
class Mixed:
    polls: dict[str, Any]
    window: Window
    gates: list[dict[str, Any]]
    writes: list[dict[str, Any]]


def mixed(target: Node, request: PollRequest, interval: float, gate: OpsProcess,
          trainer: OpsProcess, policy: Path, args: argparse.Namespace, dbname: str,
          seed: int) -> Mixed:
    seconds = args.mixed_seconds
    gate_every, write_every = 60.0 / args.gates_per_minute, 60.0 / args.writes_per_minute
    argv = [sys.executable, str(HERE / "fleet_load.py"), "poll", "--port", str(target.port),
            "--request", base64.b64encode(request.to(target.port)).decode(),
            "--endpoints", str(args.endpoints), "--interval", str(interval),
            "--seconds", str(seconds), "--seed", str(seed)]
    with Window(target.pgid, dbname) as window:
        gate.send(op="phase", kind="gate", url=target.url, policy=str(policy), seconds=seconds,
                  every=gate_every, offset=gate_every / 2)
        trainer.send(op="phase", kind="train", url=target.url, config=CONFIG, seconds=seconds,
                     every=write_every, offset=write_every * 0.2)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        sys.exit(f"the poll fleet failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith(fleet_load.MARK))
    polls = json.loads(line[len(fleet_load.MARK):])
    gates, writes = gate.receive()["done"], trainer.receive()["done"]
    return Mixed(polls, window, gates, writes)


# -- the run ----------------------------------------------------------------------------------


def seed_registry(url: str, gate: OpsProcess, trainer: OpsProcess, policy: Path) -> None:
    """Versions 1 and 2, Production on 1, a rollout of 2 on Production-canary, as the product
    writes them (the fleet's training jobs add versions, its gates start rollouts of them)."""
    steps = [("train", trainer, {"op": "train", "url": url, "config": CONFIG}),
             ("gate", gate, {"op": "gate", "url": url, "policy": str(policy)}),
             ("train", trainer, {"op": "train", "url": url, "config": CONFIG}),
             ("gate", gate, {"op": "gate", "url": url, "policy": str(policy)})]
    for what, proc, cmd in steps:
        started = time.monotonic()
        answer = must(proc.call(**cmd), f"seeding ({what})")
        print(f"  {what:5} {answer['outcome']:<14} {time.monotonic() - started:5.1f} s")


def capture_poll(gate: OpsProcess) -> PollRequest:
    answer = must(gate.call(op="capture", model=MODEL, alias=ALIAS), "capturing a poll")
    requests = [base64.b64decode(r) for r in answer["requests"]]
    if len(requests) != 1:
        sys.exit(f"one poll sent {len(requests)} requests; this bench replays exactly one")
    return PollRequest(requests[0])


def check_answer(target: Node, request: PollRequest) -> None:
    """The replayed poll gets the seeded model, its aliases and its rollout state."""
    _, path = request.method_target
    headers = {k: v for k, v in request.headers if k.lower() not in ("host", "connection")}
    with urllib.request.urlopen(urllib.request.Request(target.url + path, headers=headers),
                                timeout=10) as response:
        body = response.read()
        status = response.status
    model = json.loads(body).get("registered_model", {})
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    tags = sorted(t["key"] for t in model.get("tags", []))
    print(f"  answer: HTTP {status}, {len(body)} bytes; aliases "
          f"{', '.join(f'{k}->{v}' for k, v in sorted(aliases.items()))}; tags {', '.join(tags)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per capacity round")
    parser.add_argument("--rounds", type=int, default=2, help="capacity rounds")
    parser.add_argument("--per-worker", type=int, default=4,
                        help="wrk connections per server worker")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--intervals", default="10,1", help="poll intervals (s) of the fleet")
    parser.add_argument("--mixed-seconds", type=float, default=20.0,
                        help="per worker count and interval")
    parser.add_argument("--gates-per-minute", type=float, default=6.0)
    parser.add_argument("--writes-per-minute", type=float, default=4.0)
    args = parser.parse_args()
    args.worker_counts = [int(w) for w in args.workers.split(",")]
    args.poll_intervals = [float(i) for i in args.intervals.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="promote-bench-fleet-") as tmp:
        return run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> int:
    began = time.monotonic()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with ExitStack() as stack:
        uri, dbname = stack.enter_context(database())
        print(f"database: {redact(uri)} (fresh; dropped at the end)")
        env = server_env(tmp, uri)
        ops_env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
        ops_env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"})
        gate, trainer = OpsProcess(tmp, ops_env, "gate"), OpsProcess(tmp, ops_env, "train")
        stack.callback(trainer.close)
        stack.callback(gate.close)
        print(f"central node: sh {SCRIPT.relative_to(REPO)} (mlflow server, PostgreSQL "
              "backend, proxied artifacts), one server per worker count")
        for proc in (gate, trainer):
            proc.send(op="warm")
        # The first node creates the schema alone (two at once race on the fresh database);
        # the others start while it is seeded.
        nodes = [stack.enter_context(node(tmp, env, args.worker_counts[0]))]
        serve_bench.wait_for(  # the schema is in place once uvicorn starts
            lambda: re.search(r"Started (parent|server) process",
                              nodes[0].log.read_text(errors="replace")) is not None, 300,
            "the first node never started uvicorn", alive=lambda: nodes[0].proc.poll() is None,
            log=nodes[0].log)
        nodes += [stack.enter_context(node(tmp, env, w)) for w in args.worker_counts[1:]]
        ready(nodes[0])
        for proc in (gate, trainer):
            must(proc.receive(), "importing MLflow in a load process")
        print("seeding through --workers", nodes[0].workers)
        seed_registry(nodes[0].url, gate, trainer, policy)
        for n in nodes[1:]:
            ready(n)
        print("letting the nodes settle")
        settle(nodes, dbname)
        request = capture_poll(gate)
        method, target = request.method_target
        print(f"one endpoint poll (read_route) = 1 request: {method} {target}")
        check_answer(nodes[0], request)
        print(f"\ncapacity: wrk, 1 thread, {args.per_worker} keep-alive connections per worker, "
              f"{args.rounds} rounds of {args.seconds:g} s per worker count")
        caps = capacity(nodes, request, args, dbname)
        print(f"\nfleet: {args.endpoints} endpoints, {args.mixed_seconds:g} s per worker count "
              f"and interval; gates {args.gates_per_minute:g}/min, training jobs "
              f"{args.writes_per_minute:g}/min")
        fleet: dict[tuple[int, float], Mixed] = {}
        for i, interval in enumerate(args.poll_intervals):
            order = nodes if i % 2 == 0 else list(reversed(nodes))
            for n in order:
                m = mixed(n, request, interval, gate, trainer, policy, args, dbname, seed=i)
                fleet[(n.workers, interval)] = m
                print(f"  interval {interval:g} s --workers {n.workers}: "
                      f"{m.polls['rate']:6.1f} polls/s  p50 {m.polls['p50']:7.2f} ms  "
                      f"p99 {m.polls['p99']:7.2f} ms  gates {len(m.gates)}  "
                      f"training jobs {len(m.writes)}")
        report(nodes, caps, fleet, args)
    print(f"\nwhole bench: {time.monotonic() - began:.0f} s; load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    return 0


def database_errors(n: Node) -> str | None:
    """What the node logged about failed database calls (MLflow answers them with 503)."""
    text = n.log.read_text(errors="replace")
    count = text.count("SQLAlchemy database error")
    if not count:
        return None
    reasons = sorted(set(re.findall(r"FATAL:\s*([^\n]+)", text)))
    return redact(f"{count} database errors" +
                  (f" ({'; '.join(r.strip() for r in reasons[:3])})" if reasons else ""))


def _count(values: Iterable[int | None]) -> str:
    """The sum, or 'n/a' when any is unknown."""
    known = list(values)
    return "n/a" if any(v is None for v in known) else str(sum(v or 0 for v in known))


def _durations(ops: list[dict[str, Any]]) -> str:
    if not ops:
        return f"{'-':>5} {'-':>6} {'-':>6}"
    seconds = [o["seconds"] for o in ops]
    return f"{len(ops):>5} {statistics.median(seconds):6.2f} {max(seconds):6.2f}"


def report(nodes: list[Node], caps: dict[int, Capacity], fleet: dict[tuple[int, float], Mixed],
           args: argparse.Namespace) -> None:
    n = args.endpoints
    print("\n== the nodes, at rest ==")
    print(f"{'workers':>7} {'processes':>9} {'cores at rest':>13}")
    for node_ in nodes:
        print(f"{node_.workers:>7} {node_.processes:>9} {node_.idle_cores:13.3f}")

    print("\n== 1. capacity for the endpoint poll (GET registered-models/get, closed loop) ==")
    print(f"{'workers':>7} {'conns':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'server CPU':>10} {'db CPU':>6} {'db sessions':>11} {'polls/s':>8}")
    print(f"{'':>7} {'':>5} {'':>7} {'':>7} {'':>7} {'':>6} {'ms/poll':>10} {'ms/poll':>6} "
          f"{'opened':>11} {'per core':>8}")
    for w, c in caps.items():
        cpu = c.per_request_ms("server") + c.per_request_ms("db")
        print(f"{w:>7} {args.per_worker * w:>5} {c.rate:7.1f} "
              f"{statistics.median(r.p50 for r in c.runs):7.1f} "
              f"{statistics.median(r.p99 for r in c.runs):7.1f} "
              f"{sum(r.errors for r in c.runs):>6} {c.per_request_ms('server'):10.2f} "
              f"{c.per_request_ms('db'):6.2f} {_count(r.window.sessions for r in c.runs):>11} "
              f"{1000 / cpu if cpu > 0 else float('nan'):8.0f}")
    print("(polls/s per core = 1000 / (server + db CPU ms per poll): what one core would serve "
          "on CPU alone, free of the other work on this machine)")

    print(f"\n== 2. fleet: {n} endpoints polling, with gates and training jobs ==")
    print(f"{'workers':>7} {'interval':>8} {'polls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'errors':>6} {'new conn':>8} {'server cores':>12} {'db cores':>8} "
          f"{'db sessions':>11}")
    for (w, interval), m in sorted(fleet.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        p = m.polls
        fresh = p["fresh"] / p["polls"] * 100 if p["polls"] else 0.0
        print(f"{w:>7} {interval:>7g}s {p['rate']:8.1f} {p['p50']:8.2f} {p['p99']:8.2f} "
              f"{p['max']:8.1f} {p['errors']:>6} {fresh:7.0f}% "
              f"{m.window.server / m.window.wall:12.2f} {m.window.db / m.window.wall:8.2f} "
              f"{_count([m.window.sessions]):>11}")
    for (w, interval), m in sorted(fleet.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        if m.polls["errors"]:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(m.polls["kinds"].items()))
            print(f"  errors at --workers {w}, {interval:g} s: {kinds}")
    for node_ in nodes:
        said = database_errors(node_)
        if said:
            print(f"  server log of --workers {node_.workers}: {said}")
    print(f"\n{'workers':>7} {'interval':>8} {'gates':>5} {'med s':>6} {'max s':>6}  "
          f"{'train':>5} {'med s':>6} {'max s':>6}  outcomes")
    for (w, interval), m in sorted(fleet.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        outcomes = sorted({o["outcome"].split(" v")[0] for o in m.gates} |
                          {o["outcome"].split(" ")[0] for o in m.writes
                           if not o["outcome"].startswith("version")})
        print(f"{w:>7} {interval:>7g}s {_durations(m.gates)}  {_durations(m.writes)}  "
              f"{', '.join(outcomes)}")

    print(f"\n== 3. poll budget: {n} endpoints under {BUDGET * 100:g}% of capacity ==")
    print(f"{'workers':>7} {'capacity':>9} {'interval >':>11} {'cost at 10 s':>13} "
          f"{'cost at 60 s':>13}")
    for w, c in caps.items():
        least = n / (BUDGET * c.rate)
        print(f"{w:>7} {c.rate:7.0f}/s {least:9.2f} s {n / DEFAULT_POLL / c.rate * 100:12.2f}% "
              f"{n / WEBHOOK_POLL / c.rate * 100:12.2f}%")
    print(f"(10 s: promote serve's default poll interval; 60 s: its default with webhooks. "
          f"{n} endpoints at 10 s send {n / DEFAULT_POLL:g} polls/s, at 60 s "
          f"{n / WEBHOOK_POLL:.2f}/s.)")
    print("\nnote: client and server share this machine's "
          f"{os.cpu_count()} cores (wrk, the poll fleet, the gate and training processes, "
          "PostgreSQL and other work on the machine all run beside the server), so capacity is "
          "a lower bound for a dedicated node; 4 workers on 2 cores may not beat 2. "
          "'server cores' and 'db cores' are the CPU the server's processes and its database's "
          "backends used per second of the measurement (processes that ended during it are not "
          "counted); 'new conn' is the share of polls that opened an HTTP connection (the "
          "server closes idle ones after 5 s); 'db sessions' the PostgreSQL sessions opened; "
          "the node's processes are its workers, its job runner and the runner's consumers.")


if __name__ == "__main__":
    sys.exit(main())
