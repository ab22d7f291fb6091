"""A fleet of `promote serve` replicas on hosts of their own, following one central MLflow node.

Five Linux network namespaces stand for five hosts (tests/netns.py creates them and removes them,
whatever happens; addresses exist only inside them):

    central  10.231.i.1 --- 10.231.i.2  ri (i = 1, 2, 3)  10.232.i.2 --- 10.232.i.1  client

`central` runs the node: `mlflow server` on a fresh PostgreSQL database (reached through the
unix socket: namespaces do not separate the filesystem), artifacts proxied to S3 (moto's server,
inside `central` too), webhook delivery on; every registry write (train, gate, rollback, webhooks)
runs there, against 127.0.0.1 (tests/fleet_probe.py `registry`). Each `ri` runs one
`promote serve` replica following `models:/<name>@Production` on http://10.231.i.1, by polling
and by MLflow's webhook. `client` runs the load: real scoring requests and /health to every
replica, a few a second each, one JSON line per answer (tests/fleet_probe.py `clients`).

The scenario: the three serve v1; a gate promotes v2 and a rollback restores v1, and all three
follow; then the central node is cut off (its three links down): the replicas keep answering on
v1, /health says `degraded`; meanwhile r3 is killed (SIGKILL, as a host reboots) and started
again with its --cache-dir: it serves v1 from its cache with no registry; the links come back,
every replica reports ok, and a new promotion reaches all three. Timings are printed, not
asserted; what must hold is asserted: no failed request to a live replica, the versions served,
the registry's state as /health reports it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns
import pytest
from conftest import NO_TELEMETRY, webhook_delivery_env
from test_serve import expected, split_payload, write_policy

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROBE = str(Path(__file__).with_name("fleet_probe.py"))
PREFIX = "pf-"
PG_SOCKET_DIR = os.environ.get("PROMOTE_TEST_PG_SOCKET_DIR", "/var/run/postgresql")
MLFLOW_PORT, S3_PORT, SERVE_PORT = 5001, 5002, 8080
REPLICAS = ("r1", "r2", "r3")
POLL = 1.0
REGISTRY_TIMEOUT = 2.0
BUCKET = "mlflow"
# Deadlines: generous, the machine is shared (nothing waits longer than it must).
START = 240.0
CONVERGE = 60.0


def central_addr(i: int) -> str:
    return f"10.231.{i}.1"


def replica_addr(i: int) -> str:
    return f"10.231.{i}.2"


# -- the hosts -------------------------------------------------------------------------------------


def _require(why: str) -> None:
    """Skip for `why`; but where CI insists on the full suite (PROMOTE_TEST_REQUIRE), a root
    that cannot create namespaces is a failure."""
    if os.environ.get("PROMOTE_TEST_REQUIRE") == "testcontainers" and os.geteuid() == 0:
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class Hosts:
    topology: netns.Topology
    central: str
    client: str
    replicas: dict[str, str]  # r1 -> namespace
    uplinks: dict[str, netns.Link]  # r1 -> the link central <-> r1


@contextlib.contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """A SIGTERM to pytest unwinds like Ctrl-C, so the topology is still removed."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    try:
        netns.remove_leftovers(PREFIX)
    except netns.NetnsError as exc:
        _require(f"`ip netns` does not work here: {exc}")
    topology = netns.Topology(prefix=PREFIX)
    atexit.register(topology.close)  # should this process end without unwinding
    with _cleanup_on_sigterm():
        try:
            try:
                central, client = topology.add_namespace("c"), topology.add_namespace("client")
                replicas = {name: topology.add_namespace(name) for name in REPLICAS}
                uplinks = {}
                for i, (name, ns) in enumerate(replicas.items(), start=1):
                    uplinks[name] = topology.add_link(central, f"c{i}", central_addr(i),
                                                      ns, f"{name}c", replica_addr(i))
                    topology.add_link(client, f"k{i}", f"10.232.{i}.1", ns, f"{name}k",
                                      f"10.232.{i}.2")
            except netns.NetnsError as exc:
                _require(f"cannot create network namespaces here: {exc}")
            yield Hosts(topology, central, client, replicas, uplinks)
        finally:
            topology.close()
            atexit.unregister(topology.close)


@pytest.fixture
def database(hosts: Hosts) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards, and so are leftovers of crashed runs)."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        pytest.skip("psycopg is not installed (MLflow needs it for PostgreSQL)")
    admin = f"host={PG_SOCKET_DIR} user=postgres dbname=postgres connect_timeout=5"
    name = f"pf_fleet_{hosts.topology.suffix}"
    try:
        conn = psycopg.connect(admin, autocommit=True)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL on the unix socket in {PG_SOCKET_DIR}: {exc}")
    with conn:
        existing = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pf\\_fleet\\_%'")]
        for stale in existing:
            if not netns.owner_alive(stale.rsplit("_", 1)[1]):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(sql.Identifier(stale)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@/{name}?host={PG_SOCKET_DIR}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


# -- processes -------------------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    """This process's environment without MLflow's, AWS's or the inference log's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AWS_", "PROMOTE_"))}
    return {**env, **NO_TELEMETRY, "PYTHONUNBUFFERED": "1",
            "PROMOTE_LOG_DIR": os.environ.get("PROMOTE_LOG_DIR", tempfile.gettempdir())}


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return f"--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}"
    except OSError:
        return f"--- {path.name}: (none)"


class Lines:
    """The JSON lines a process writes to stdout, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.records: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.queue.put(record)
            with self.changed:
                self.records.append(record)
                self.changed.notify_all()
        self.queue.put(None)
        with self.changed:
            self.changed.notify_all()

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            record = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout:g} s") from None
        if record is None:
            raise AssertionError(f"exited {self.proc.poll()} without answering")
        return record

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], Any], timeout: float,
                 why: Callable[[], str]) -> Any:
        """Wait until `condition(records)` is truthy; its value."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = condition(self.records)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s: {why()}")
                self.changed.wait(min(left, 0.5))

    def snapshot(self) -> list[dict[str, Any]]:
        with self.changed:
            return list(self.records)


@dataclass
class Fleet:
    hosts: Hosts
    tmp: Path
    model: str
    secret: str
    registry: Lines | None = None
    probe: Lines | None = None
    replicas: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def logs(self) -> str:
        names = ["mlflow", "moto", "registry", "probe", *REPLICAS]
        return "\n".join(tail(self.log(n), 1500) for n in names)

    # central node

    def start_central(self, database: str) -> None:
        """moto, the tracking server and the registry client, started at once; the client
        creates the bucket and waits for the server while the server starts."""
        central = self.hosts.central
        top = self.hosts.topology
        with self.log("moto").open("wb") as log:
            top.popen(central, [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)],
                      stdout=log, stderr=subprocess.STDOUT, env=_base_env())
        server_env = {**_base_env(), **webhook_delivery_env(),
                      "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                      "AWS_ACCESS_KEY_ID": "fleet-test", "AWS_SECRET_ACCESS_KEY": "fleet-test",
                      "AWS_DEFAULT_REGION": "us-east-1",
                      # No server-side jobs (GenAI evaluation) here: their worker processes would
                      # only slow the node's start on a small machine.
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log("mlflow").open("wb") as log:
            top.popen(central, [str(BIN / "mlflow"), "server", "--host", "0.0.0.0",
                                "--port", str(MLFLOW_PORT), "--backend-store-uri", database,
                                "--artifacts-destination", f"s3://{BUCKET}/artifacts",
                                "--workers", "1"],
                      stdout=log, stderr=subprocess.STDOUT, env=server_env, cwd=self.tmp)
        client_env = {**_base_env(), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}",
                      "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                      "PROMOTE_WEBHOOK_SECRET": self.secret}
        with self.log("registry").open("wb") as log:
            proc = top.popen(central, [sys.executable, PROBE, "registry"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                             text=True, env=client_env, cwd=REPO)
        self.registry = Lines(proc)
        self.call("bucket", url=f"http://127.0.0.1:{S3_PORT}/{BUCKET}")
        self.call("wait", url=f"http://127.0.0.1:{MLFLOW_PORT}/health", timeout=START)

    def call(self, op: str, timeout: float = START, **command: Any) -> dict[str, Any]:
        assert self.registry is not None
        stdin = self.registry.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **command}) + "\n")
        stdin.flush()
        while True:
            try:
                answer = self.registry.next(timeout)
            except AssertionError as exc:
                raise AssertionError(f"{op}: {exc}\n{self.logs()}") from None
            if answer.get("op") != "ready":
                break
        assert answer.get("ok"), f"{op} {command}: {answer}\n{self.logs()}"
        return answer

    def promote(self, *argv: str) -> float:
        """`promote ARGV...` in the central namespace; when it moved @Production (epoch s)."""
        answer = self.call("cli", argv=list(argv))
        moves = [m for m in answer["moves"] if m["alias"] == "Production"]
        assert len(moves) == 1, answer
        return float(moves[0]["t"])

    # replicas

    def start_replica(self, name: str) -> subprocess.Popen:
        i = REPLICAS.index(name) + 1
        env = {**_base_env(), "MLFLOW_TRACKING_URI": f"http://{central_addr(i)}:{MLFLOW_PORT}",
               # The node's S3 endpoint is 127.0.0.1 of the central namespace: unreachable from a
               # replica, which must load every version through the tracking server alone
               # (promote keeps downloads proxied by default: registry/client.py).
               "PROMOTE_WEBHOOK_SECRET": self.secret}
        argv = [str(BIN / "promote"), "serve", self.model, "--host", "0.0.0.0",
                "--port", str(SERVE_PORT), "--poll-interval", str(POLL), "--log-uri", "none",
                "--cache-dir", str(self.tmp / f"cache-{name}"),
                "--registry-timeout", str(REGISTRY_TIMEOUT)]
        with self.log(name).open("ab") as log:
            proc = self.hosts.topology.popen(self.hosts.replicas[name], argv, stdout=log,
                                             stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        self.replicas[name] = proc
        return proc

    def start_probe(self) -> None:
        argv = [sys.executable, PROBE, "clients", "--payload", json.dumps(split_payload()),
                "--rate", "5", "--health-every", "0.5", "--timeout", "10"]
        for i, name in enumerate(REPLICAS, start=1):
            argv += ["--replica", f"{name}=http://10.232.{i}.2:{SERVE_PORT}"]
        with self.log("probe").open("wb") as log:
            proc = self.hosts.topology.popen(self.hosts.client, argv, stdout=subprocess.PIPE,
                                             stderr=log, text=True, env=_base_env(), cwd=REPO)
        self.probe = Lines(proc)

    def wait(self, condition, timeout: float, what: str) -> Any:
        assert self.probe is not None
        return self.probe.wait_for(condition, timeout, lambda: f"{what}\n{self.logs()}")


# -- what the probe saw ----------------------------------------------------------------------------

Record = dict[str, Any]


def _scores(records: list[Record], replica: str | None = None, since: float = 0.0,
            until: float = float("inf")) -> list[Record]:
    return [r for r in records if r.get("kind") == "score" and since <= r["t"] < until
            and (replica is None or r["replica"] == replica)]


def _healths(records: list[Record], replica: str, since: float = 0.0,
             until: float = float("inf")) -> list[Record]:
    return [r for r in records if r.get("kind") == "health" and r["replica"] == replica
            and since <= r["t"] < until]


def _failed(records: list[Record]) -> list[Record]:
    return [r for r in records if r["status"] != 200]


def first_each(records: list[Record], match: Callable[[Record], bool],
               names=REPLICAS) -> dict[str, Record] | None:
    """The first record of each replica that `match`es, once every replica has one."""
    found: dict[str, Record] = {}
    for r in records:
        if r.get("replica") in names and r["replica"] not in found and match(r):
            found[r["replica"]] = r
    return found if len(found) == len(names) else None


def serving(version: str, since: float) -> Callable[[Record], bool]:
    return lambda r: (r["kind"] == "score" and r["status"] == 200 and r["version"] == version
                      and r["t"] >= since)


def health_is(status: str, registry: str, since: float,
              served_from: str | None = None) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        reg = r.get("registry") or {}
        return (r["kind"] == "health" and r["status"] == 200 and r["t"] >= since
                and r.get("health") == status and reg.get("status") == registry
                and (served_from is None or reg.get("served_from") == served_from))
    return match


def converge(fleet: Fleet, version: str, issued: float, moved: float, what: str
             ) -> dict[str, float]:
    """Wait until every replica answers from `version`; seconds from the alias move to each
    one's first such answer (the probe's resolution: one request per 0.2 s)."""
    firsts = fleet.wait(lambda records: first_each(records, serving(version, issued)),
                        CONVERGE, f"{what}: not every replica serves version {version}")
    times = {name: firsts[name]["t"] - moved for name in REPLICAS}
    print(f"{what}: alias move -> first answer from version {version}: "
          + ", ".join(f"{n} {s:.2f} s" for n, s in times.items())
          + f"; all {max(times.values()):.2f} s")
    return {name: firsts[name]["t"] for name in REPLICAS}


def assert_stays(records: list[Record], version: str, firsts: dict[str, float],
                 until: float) -> None:
    """Once a replica answered from `version`, every request it got afterwards (until the next
    move) is answered from it: the swap is one step."""
    for name, first in firsts.items():
        later = [r for r in _scores(records, name, until=until) if r["sent"] > first]
        wrong = [r for r in later if r["status"] == 200 and r["version"] != version]
        assert not wrong, f"{name} answered from another version after {version}: {wrong[:3]}"


def assert_predictions(records: list[Record], kinds: dict[str, str]) -> None:
    """Every answer was scored by the version its header names (tests/test_serve.py models)."""
    for r in records:
        if r.get("kind") == "score" and r["status"] == 200:
            assert r["version"] in kinds, r
            assert r["predictions"] == pytest.approx(expected(kinds[r["version"]])), r


# -- the scenario ----------------------------------------------------------------------------------


@dataclass
class Timeline:
    ready: dict[str, float] = field(default_factory=dict)  # first answer of each replica
    cut: float = 0.0
    degraded: dict[str, float] = field(default_factory=dict)
    killed: float = 0.0
    restarted: float = 0.0
    back: float = 0.0  # r3's first answer after its restart
    restored: float = 0.0
    # (version, each replica's first answer from it, when the alias moved on): checked at the end
    phases: list[tuple[str, dict[str, float], float]] = field(default_factory=list)


def _setup(fleet: Fleet, database: str) -> tuple[str, str, str, Timeline]:
    """The node, v1 in Production, three replicas serving it, the probe on; v2 registered
    while the replicas start."""
    began = time.monotonic()
    fleet.start_central(database)
    node_up = time.monotonic()
    [v1] = fleet.call("register", model=fleet.model, versions=[["a", 1.0]])["versions"]
    policy = write_policy(fleet.tmp, fleet.model)
    fleet.promote("gate", policy, "--candidate", v1)
    gated = time.monotonic()
    for name in REPLICAS:
        fleet.start_replica(name)
    fleet.start_probe()
    [v2] = fleet.call("register", model=fleet.model, versions=[["b", 2.0]])["versions"]
    for i, name in enumerate(REPLICAS, start=1):
        fleet.call("cli", argv=["webhooks", "ensure",
                                f"http://{replica_addr(i)}:{SERVE_PORT}/hooks/mlflow",
                                "--name", f"{PREFIX}{name}-{fleet.hosts.topology.suffix}"])
    ready = fleet.wait(lambda records: first_each(records, serving(v1, 0.0)), START,
                       "the replicas never served version 1")
    print(f"\nset-up: central node up in {node_up - began:.1f} s; version {v1} registered and "
          f"gated {gated - node_up:.1f} s later; three replicas serving it "
          f"{time.monotonic() - gated:.1f} s later (version {v2} registered meanwhile)")
    return v1, v2, policy, Timeline(ready={n: r["t"] for n, r in ready.items()})


def _outage(fleet: Fleet, v1: str, times: Timeline) -> None:
    """Cut the node off; every replica goes on serving v1, degraded; r3 restarts from its
    cache; the links come back and every replica reports ok."""
    top, hosts = fleet.hosts.topology, fleet.hosts
    times.cut = time.time()
    for link in hosts.uplinks.values():
        top.set_up(hosts.central, link.a_dev, False)
    degraded = fleet.wait(
        lambda records: first_each(records, health_is("degraded", "unreachable", times.cut)),
        CONVERGE, "the replicas never reported the registry unreachable")
    times.degraded = {n: r["t"] for n, r in degraded.items()}

    times.killed = time.time()
    netns.stop_group(fleet.replicas["r3"], signal.SIGKILL)
    times.restarted = time.time()
    fleet.start_replica("r3")
    back = fleet.wait(lambda records: first_each(records, serving(v1, times.restarted),
                                                 names=("r3",)),
                      START, "r3 never served again after its restart, with no registry")
    times.back = back["r3"]["t"]
    fleet.wait(lambda records: first_each(
        records, health_is("degraded", "unreachable", times.restarted, served_from="cache"),
        names=("r3",)), CONVERGE, "r3 never said it serves from its cache")
    # Some traffic for the live replicas while r3 is back and the node still away.
    fleet.wait(lambda records: all(len(_scores(records, n, since=times.back)) >= 5
                                   for n in REPLICAS), CONVERGE, "too few answers")

    times.restored = time.time()
    for link in hosts.uplinks.values():
        top.set_up(hosts.central, link.a_dev, True)
    fleet.wait(lambda records: first_each(records, health_is("ok", "ok", times.restored)),
               CONVERGE, "the replicas never reported the registry ok again")


def _check_outage(records: list[Record], v1: str, times: Timeline) -> dict[str, int]:
    """What the clients saw while the node was away. Returns failed requests by replica."""
    failed: dict[str, int] = {}
    for name in REPLICAS:
        during = _scores(records, name, times.cut, times.restored)
        health = _healths(records, name, times.cut, times.restored)
        if name == "r3":  # its own downtime is counted apart
            during = [r for r in during if not times.killed <= r["t"] <= times.back]
            health = [r for r in health if not times.killed <= r["t"] <= times.back]
        failed[name] = len(_failed(during))
        assert len(during) >= 10, (name, len(during))
        assert {r["version"] for r in during if r["status"] == 200} == {v1}, name
        assert not _failed(health), (name, _failed(health)[:3])
        # Once degraded, it says so until the node is back (it never reached it), and where
        # what it serves came from: the registry, or for r3 after its restart, its cache.
        after = [r for r in health if r["t"] >= times.degraded[name]]
        assert after and all(r["health"] == "degraded" for r in after), (name, after[-3:])
        for r in after:
            source = "cache" if name == "r3" and r["t"] > times.back else "registry"
            assert r["registry"]["status"] == "unreachable", (name, r)
            assert r["registry"]["served_from"] == source, (name, r)
    assert sum(failed.values()) == 0, failed
    return failed


def test_a_fleet_follows_the_central_node_and_rides_out_its_outage(hosts, database, tmp_path):
    fleet = Fleet(hosts, tmp_path, f"fleet-{hosts.topology.suffix}", secrets.token_urlsafe(24))
    try:
        v1, v2, policy, times = _setup(fleet, database)
        print(f"fleet ready: {', '.join(REPLICAS)} serve version {v1} "
              f"(node {hosts.central}, replicas {', '.join(hosts.replicas.values())})")

        issued = time.time()
        moved = fleet.promote("gate", policy, "--candidate", v2)
        promoted = converge(fleet, v2, issued, moved, "promote (gate)")
        issued = time.time()
        moved = fleet.promote("rollback", fleet.model)
        times.phases.append((v2, promoted, moved))
        rolled_back = converge(fleet, v1, issued, moved, "rollback")

        _outage(fleet, v1, times)
        issued = time.time()
        moved = fleet.promote("gate", policy, "--candidate", v2)
        times.phases.append((v1, rolled_back, moved))
        again = converge(fleet, v2, issued, moved, "promote after the outage")
        fleet.wait(lambda records: first_each(records, health_is("ok", "ok", max(again.values()),
                                                                 served_from="registry")),
                   CONVERGE, "not every replica serves from the registry again")
        times.phases.append((v2, again, time.time()))
        _report(fleet, v1, v2, times)
    finally:
        _stop(fleet)


def _report(fleet: Fleet, v1: str, v2: str, times: Timeline) -> None:
    records = fleet.probe.snapshot()
    assert_predictions(records, {v1: "a", v2: "b"})
    for version, firsts, until in times.phases:
        assert_stays(records, version, firsts, until)
    outage = _check_outage(records, v1, times)
    downtime = _failed(_scores(records, "r3", times.killed, times.back + 1e-6))
    whole = {name: [r for r in _failed(_scores(records, name, times.ready[name]))
                    if not (name == "r3" and times.killed <= r["t"] <= times.back)]
             for name in REPLICAS}
    print(f"outage: node cut off for {times.restored - times.cut:.1f} s; registry reported "
          "unreachable after " + ", ".join(f"{n} {t - times.cut:.2f} s"
                                           for n, t in times.degraded.items()))
    during = {n: [r for r in _scores(records, n, times.cut, times.restored) if r["status"] == 200]
              for n in REPLICAS}
    print(f"outage: failed requests to live replicas: {sum(outage.values())} "
          f"({', '.join(f'{n} {c}' for n, c in outage.items())}; r3 outside its restart); "
          "answered during the outage: "
          + ", ".join(f"{n} {len(a)} (slowest {max(r['ms'] for r in a):.0f} ms)"
                      for n, a in during.items()))
    print(f"r3 restart (SIGKILL, same --cache-dir, no registry): first answer "
          f"{times.back - times.restarted:.2f} s after the restart "
          f"({times.back - times.killed:.2f} s after the kill); failed requests to r3 "
          f"while it was down: {len(downtime)}")
    print("whole run (from each replica's first answer, r3's restart excluded): "
          f"{sum(map(len, whole.values()))} failed of {len(_scores(records))} requests")
    assert not any(whole.values()), {n: f[:3] for n, f in whole.items() if f}
    for name in ("registry", *REPLICAS):
        assert fleet.secret not in fleet.log(name).read_text(errors="replace"), name


def _stop(fleet: Fleet) -> None:
    """SIGTERM the probe first (it prints its summary), then everything else."""
    if fleet.probe is not None:
        netns.stop_group(fleet.probe.proc)
        fleet.probe.thread.join(timeout=10)
        summary = [r for r in fleet.probe.snapshot() if r.get("kind") == "summary"]
        if summary:
            print("probe summary (its whole run, the replicas' start-up included):",
                  json.dumps(summary[-1]["replicas"], sort_keys=True))
    if fleet.registry is not None and fleet.registry.proc.stdin is not None:
        with contextlib.suppress(OSError):
            fleet.registry.proc.stdin.close()
    # Everything else, the node included: before its database is dropped.
    fleet.hosts.topology.stop()
