"""The test bed: every test that needs MLflow talks to a real tracking server over HTTP.

The server is chosen once per session, in this order (the pytest header says which):
  1. PROMOTE_TEST_TRACKING_URI set      -> that existing server;
  2. a Docker engine reachable          -> testcontainers runs PROMOTE_TEST_MLFLOW_IMAGE
                                           (default ghcr.io/mlflow/mlflow:v<installed mlflow>);
  3. otherwise                          -> a local `mlflow server` subprocess, with a warning.
Backend store: PROMOTE_TEST_BACKEND_URI (default: SQLite inside the server's own scratch space).
Artifacts are always proxied by the server (--artifacts-destination): clients upload over HTTP.

PROMOTE_TEST_REQUIRE=testcontainers makes paths 1 and 3 an error (CI uses it to insist);
PROMOTE_TEST_DOCKER_NETWORK=host runs the container on the host network (engines without bridges).

The server starts lazily: policy tests and other pure tests never wait for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# CI explores the same examples on every run (a red CI is then reproducible); developers' runs keep
# exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
MLFLOW_VERSION = version("mlflow")
# Where accidental MLflow I/O goes in tests that did not ask for a server: a loopback port nothing
# listens on, so it fails loudly (connection refused) instead of writing ./mlflow.db.
NOWHERE = "http://127.0.0.1:9"
# Tests send traffic to loopback only: MLflow's usage telemetry stays off in this process, in
# subprocesses and in the test server.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
os.environ.update(NO_TELEMETRY)


@cache
def webhook_delivery_env() -> dict[str, str]:
    """What the test server needs to really deliver webhooks to a receiver in this process.

    One value per session: both server paths (container and subprocess) get the same.
    """
    from cryptography.fernet import Fernet

    return {
        # MLflow refuses to connect to loopback and private addresses (its SSRF guard checks the
        # peer of every delivery's socket, mlflow/webhooks/ssrf.py); the tests' receiver listens
        # on 127.0.0.1.
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # MLflow accepts only https:// webhook URLs by default; the tests' receiver speaks plain
        # HTTP (the server's HTTPS client would not trust a test certificate).
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        # The server encrypts webhook secrets with this Fernet key. Without it, each server
        # process makes up its own: with 2 workers, one could not read (nor sign with) a secret
        # the other stored.
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode("ascii"),
        # Each worker caches the webhooks of an event for 60 s by default: a webhook a test just
        # created would get its first delivery up to a minute later.
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }


@dataclass(frozen=True)
class ServerPlan:
    path: str  # "existing" | "testcontainers" | "subprocess"
    image: str | None
    backend: str  # the backend store URI (may hold no secrets: trust auth or SQLite)
    host_network: bool

    @property
    def backend_kind(self) -> str:
        return self.backend.split(":", 1)[0].split("+", 1)[0] if self.backend else "sqlite"

    def describe(self) -> str:
        if self.path == "existing":
            return f"mlflow test server: existing {os.environ['PROMOTE_TEST_TRACKING_URI']}"
        image = f" image={self.image}" if self.image else ""
        network = " network=host" if self.host_network else ""
        return (
            f"mlflow test server: {self.path}{image} backend={self.backend_kind}{network} "
            f"(mlflow {MLFLOW_VERSION})"
        )


def _docker_reachable() -> tuple[bool, str]:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        return True, ""
    except Exception as exc:  # any failure means "no engine here": that is the question asked
        return False, f"{type(exc).__name__}: {exc}"


def _plan() -> ServerPlan:
    backend = os.environ.get("PROMOTE_TEST_BACKEND_URI", "")
    required = os.environ.get("PROMOTE_TEST_REQUIRE") == "testcontainers"
    if os.environ.get("PROMOTE_TEST_TRACKING_URI"):
        if required:
            raise pytest.UsageError(
                "PROMOTE_TEST_REQUIRE=testcontainers but PROMOTE_TEST_TRACKING_URI is set"
            )
        return ServerPlan("existing", None, backend, False)
    ok, why = _docker_reachable()
    if ok:
        image = (
            os.environ.get("PROMOTE_TEST_MLFLOW_IMAGE")
            or f"ghcr.io/mlflow/mlflow:v{MLFLOW_VERSION}"
        )
        host = os.environ.get("PROMOTE_TEST_DOCKER_NETWORK") == "host"
        return ServerPlan("testcontainers", image, backend, host)
    if required:
        raise pytest.UsageError(
            f"PROMOTE_TEST_REQUIRE=testcontainers but no Docker engine is reachable: {why}"
        )
    return ServerPlan("subprocess", None, backend, False)


_PLAN: ServerPlan | None = None


def plan() -> ServerPlan:
    global _PLAN
    if _PLAN is None:
        _PLAN = _plan()
    return _PLAN


def pytest_report_header(config: pytest.Config) -> str:
    return plan().describe()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"MLflow server exited before becoming healthy ({last})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"MLflow server at {url} not healthy after {timeout:.0f} s ({last})")


def _server_args(host: str, port: int, backend: str, artifacts: str) -> list[str]:
    return [
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--workers",
        "2",
    ]


def _start_container(p: ServerPlan) -> Iterator[str]:
    from testcontainers.core.container import DockerContainer

    backend = p.backend or "sqlite:////tmp/mlflow/mlflow.db"
    if p.host_network:
        port = _free_port()
        container = (
            DockerContainer(p.image)
            .with_kwargs(network_mode="host")
            .with_command(_server_args("127.0.0.1", port, backend, "/tmp/mlflow/artifacts"))
        )
    else:
        port = 5000
        container = (
            DockerContainer(p.image)
            .with_exposed_ports(port)
            .with_command(
                [
                    *_server_args("0.0.0.0", port, backend, "/tmp/mlflow/artifacts"),
                    "--allowed-hosts",
                    "*",
                ]
            )
        )
    # The official image has no /tmp/mlflow; create it before the server needs it.
    container.with_envs(**NO_TELEMETRY, **webhook_delivery_env())
    container.with_kwargs(
        **container._kwargs, entrypoint=["sh", "-c", 'mkdir -p /tmp/mlflow && exec "$@"', "--"]
    )
    container.start()
    try:
        if p.host_network:
            url = f"http://127.0.0.1:{port}"
        else:
            url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(port)}"
        try:
            _wait_healthy(
                url,
                timeout=180,
                alive=lambda: (
                    container.get_wrapped_container().reload()
                    or container.get_wrapped_container().status == "running"
                ),
            )
        except RuntimeError:
            out, err = container.get_logs()
            sys.stderr.write((out + err).decode(errors="replace")[-4000:])
            raise
        yield url
    finally:
        container.stop()


def _start_subprocess(p: ServerPlan) -> Iterator[str]:
    scratch = Path(tempfile.mkdtemp(prefix="promote-mlflow-"))
    backend = p.backend or f"sqlite:///{scratch}/mlflow.db"
    port = _free_port()
    args = _server_args("127.0.0.1", port, backend, str(scratch / "artifacts"))
    args[0] = str(Path(sys.executable).with_name("mlflow"))
    log = open(scratch / "server.log", "wb")  # noqa: SIM115 - closed in finally
    # Its own session: `mlflow server` also starts a job consumer process; stop the whole group.
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **NO_TELEMETRY, **webhook_delivery_env(), "MLFLOW_TRACKING_URI": ""},
    )
    try:
        try:
            _wait_healthy(
                f"http://127.0.0.1:{port}", timeout=120, alive=lambda: proc.poll() is None
            )
        except RuntimeError:
            sys.stderr.write((scratch / "server.log").read_text(errors="replace")[-4000:])
            raise
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """The base URL of the session's real MLflow tracking server."""
    p = plan()
    if p.path == "existing":
        yield os.environ["PROMOTE_TEST_TRACKING_URI"].rstrip("/")
        return
    if p.path == "subprocess":
        warnings.warn(
            "No Docker engine reachable: the MLflow test server runs as a local "
            "`mlflow server` subprocess instead of a testcontainers container.",
            stacklevel=1,
        )
        yield from _start_subprocess(p)
        return
    yield from _start_container(p)


@pytest.fixture(autouse=True)
def _no_accidental_mlflow(monkeypatch: pytest.MonkeyPatch,
                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests that did not ask for a server must not reach one (nor write ./mlflow.db, nor an
    inference log ./promote-log.db, nor `promote serve`'s model cache in the user's ~/.cache)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", NOWHERE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    log = tmp_path_factory.getbasetemp() / "promote-log.db"
    monkeypatch.setenv("PROMOTE_LOG_URI", f"sqlite:///{log}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("PROMOTE_LOG_DIR", tempfile.gettempdir())
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "GITHUB_ENV"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tracking_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point this test (env, fluent API, subprocesses) at the real server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(NOWHERE)


@pytest.fixture
def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of this test's own, so tests never see each other's state."""
    base = request.node.name.replace("[", "-").replace("]", "")[:60]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def proxy(mlflow_server: str) -> Iterator[object]:
    """A fault-injecting proxy in front of the test server (tests/faultproxy.py), per module."""
    from faultproxy import FaultProxy

    with FaultProxy(mlflow_server) as p:
        yield p


@pytest.fixture
def fast_failures(tracking_uri, monkeypatch):
    """A dead server fails at once: no client retries, no pause between Promote's own."""
    from promotion.gate import operation

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(operation, "RETRY_DELAYS", (0.0, 0.0))
