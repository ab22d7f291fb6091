"""The central MLflow node in deploy/: its command line, its image, its compose stack.

- The server command line (deploy/mlflow-server.sh, the compose service's command) is started
  here, as it is, against a fresh database on the PostgreSQL at 127.0.0.1:5432, and the whole
  train -> gate -> load flow runs against it, with and without basic auth.
- The compose files are validated by a real compose implementation (`docker compose` or Debian's
  `docker-compose`); tests/test_compose_up.py brings the stack up.
- The image is built from deploy/Dockerfile and run where a Docker engine is reachable.
Each test that cannot run on this machine is skipped and says why.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCRIPT = DEPLOY / "mlflow-server.sh"
BIN = Path(sys.executable).parent
MLFLOW_VERSION = version("mlflow")
POSTGRES = os.environ.get("PROMOTE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_healthy(url: str, timeout: float, alive=lambda: True, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            break
        try:
            if http_status(f"{url}/health") == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{url} never became healthy\n{tail}")


# -- the server command line, checked without starting MLflow ---------------------------------


FAKE_MLFLOW = """#!/bin/sh
# Stands in for mlflow: records how it was started.
{
  printf '%s\\n' "$@"
  echo "--- env"
  echo "MLFLOW_BACKEND_STORE_URI=$MLFLOW_BACKEND_STORE_URI"
  echo "MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-}"
  echo "MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-}"
} > "$RECORD"
if [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
  cp "$MLFLOW_AUTH_CONFIG_PATH" "$RECORD.ini"
  stat -c %a "$MLFLOW_AUTH_CONFIG_PATH" > "$RECORD.mode"
fi
"""


@pytest.fixture
def fake_mlflow(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text(FAKE_MLFLOW)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(tmp_path / "record")}


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=30)


def test_the_command_line_keeps_secrets_out_of_argv(fake_mlflow, tmp_path):
    env = {**fake_mlflow, "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:db-s3cret@pg/mlflow",
           "MLFLOW_ALLOWED_HOSTS": "mlflow.example.internal"}
    proc = run_script(env)
    assert proc.returncode == 0, proc.stderr
    argv, _, environ = (tmp_path / "record").read_text().partition("--- env\n")
    assert argv.split("\n")[:9] == ["server", "--host", "0.0.0.0", "--port", "5001",
                                   "--workers", "4", "--artifacts-destination", "/mlartifacts"]
    assert "--allowed-hosts\nmlflow.example.internal" in argv
    assert "--app-name" not in argv and "--cors-allowed-origins" not in argv
    assert "db-s3cret" not in argv  # MLflow reads the store URI from its environment
    assert "MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:db-s3cret@pg/mlflow" in environ


def test_direct_artifact_access_replaces_the_proxy(fake_mlflow, tmp_path):
    env = {**fake_mlflow, "MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@pg/mlflow",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/proxied",
           "MLFLOW_DEFAULT_ARTIFACT_ROOT": "s3://bucket/direct"}
    proc = run_script(env)
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "record").read_text().partition("--- env\n")[0].split("\n")
    assert argv[argv.index("--default-artifact-root") + 1] == "s3://bucket/direct"
    assert "--no-serve-artifacts" in argv and "--artifacts-destination" not in argv


def test_basic_auth_gets_a_private_config_and_no_password_in_it(fake_mlflow, tmp_path):
    env = {**fake_mlflow, "MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@pg/mlflow",
           "MLFLOW_AUTH": "basic", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
           "MLFLOW_AUTH_DATABASE_URI": "postgresql://u:p@pg/mlflow_auth",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-s3cret"}
    proc = run_script(env)
    assert proc.returncode == 0, proc.stderr
    record = (tmp_path / "record").read_text()
    assert "--app-name\nbasic-auth" in record
    assert "MLFLOW_AUTH_ADMIN_USERNAME=admin" in record
    ini = (tmp_path / "record.ini").read_text()
    assert "database_uri = postgresql://u:p@pg/mlflow_auth" in ini
    assert "default_permission = READ" in ini
    assert "admin-s3cret" not in ini and "admin-s3cret" not in record
    assert (tmp_path / "record.mode").read_text().strip() == "600"


@pytest.mark.parametrize(("settings", "words"), [
    ({}, "MLFLOW_BACKEND_STORE_URI is not set"),
    ({"MLFLOW_AUTH": "basic"}, "MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ({"MLFLOW_AUTH": "basic", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}, "MLFLOW_AUTH_DATABASE_URI"),
    ({"MLFLOW_AUTH": "basic", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
      "MLFLOW_AUTH_DATABASE_URI": "sqlite:///a.db"}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH": "ldap"}, "MLFLOW_AUTH must be none or basic"),
])
def test_the_command_line_refuses_incomplete_settings(fake_mlflow, tmp_path, settings, words):
    base = {} if not settings else {"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"}
    proc = run_script({**fake_mlflow, **base, **settings})
    assert proc.returncode == 2 and words in proc.stderr
    assert not (tmp_path / "record").exists()  # mlflow was never started


# -- the files agree with each other ------------------------------------------------------------


COMPOSE_FILES = ("services.yaml", "compose.yaml", "compose.local.yaml")


def compose_variables() -> set[str]:
    found: set[str] = set()
    for name in COMPOSE_FILES:
        lines = (DEPLOY / name).read_text().splitlines()
        code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        found |= set(re.findall(r"\$\{(\w+)", code))
    return found


def services() -> dict:
    """deploy/services.yaml as written (the compose files extend its services)."""
    return yaml.safe_load((DEPLOY / "services.yaml").read_text())["services"]


def example_settings() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^\w+=", line))


def test_env_example_documents_every_variable_the_compose_file_reads():
    documented = example_settings()
    assert compose_variables() <= set(documented), compose_variables() - set(documented)
    # ...and nothing that the stack does not read (COMPOSE_PROJECT_NAME is compose's own).
    assert set(documented) - compose_variables() == {"COMPOSE_PROJECT_NAME"}
    # Secrets have no value in the example: whoever deploys must choose them.
    for name in ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY", "AWS_SECRET_ACCESS_KEY",
                 "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"):
        assert documented[name] == "", name


def test_every_pin_is_the_mlflow_version_promote_is_tested_with():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert set(re.findall(r"ARG MLFLOW_VERSION=(\S+)", dockerfile)) == {MLFLOW_VERSION}
    assert f"mlflow=={MLFLOW_VERSION}" in (REPO / "constraints.txt").read_text()
    settings = example_settings()
    assert settings["MLFLOW_VERSION"] == MLFLOW_VERSION
    assert settings["MLFLOW_IMAGE"].endswith(f":{MLFLOW_VERSION}")
    for service in ("mlflow", "s3-bucket"):  # both use the server's image
        assert services()[service]["build"]["args"]["MLFLOW_VERSION"] == \
            f"${{MLFLOW_VERSION:-{MLFLOW_VERSION}}}"
    assert "psycopg[binary]" in dockerfile and "mlflow[auth]" in dockerfile


def test_the_compose_service_runs_the_command_line_the_tests_run():
    assert services()["mlflow"]["command"] == ["mlflow-server"]
    for name in ("compose.yaml", "compose.local.yaml"):  # both run exactly those services
        compose = yaml.safe_load((DEPLOY / name).read_text())
        for service, settings in compose["services"].items():
            assert settings["extends"] == {"file": "services.yaml", "service": service}
            assert "command" not in settings or service in ("postgres", "minio"), name
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY mlflow-server.sh /usr/local/bin/mlflow-server" in dockerfile


# -- the compose file, validated by a real compose implementation ------------------------------


@cache
def compose_command() -> tuple[list[str] | None, str]:
    """(argv prefix of a compose implementation, or None; why none)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"], ""
    if shutil.which("docker-compose"):
        return ["docker-compose"], ""
    return None, "neither `docker compose` (v2) nor `docker-compose` is installed"


@pytest.fixture
def compose() -> list[str]:
    command, why = compose_command()
    if command is None:
        pytest.skip(why)
    return command


def fernet_key() -> str:
    """A key as deploy/.env.example says to make one (32 random bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def env_file(tmp_path: Path, **overrides: str) -> Path:
    settings = {**example_settings(), "POSTGRES_PASSWORD": secrets.token_hex(12),
                "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_hex(12),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                "AWS_ACCESS_KEY_ID": "central", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(12),
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": fernet_key(), **overrides}
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return path


def compose_config(compose: list[str], env: Path, *extra: str,
                   file: str = "compose.yaml") -> subprocess.CompletedProcess:
    return subprocess.run([*compose, "--env-file", str(env), "-f", str(DEPLOY / file),
                           *extra, "config"], capture_output=True, text=True, timeout=60)


def test_the_compose_file_is_valid_and_complete(compose, tmp_path):
    env = env_file(tmp_path)
    proc = compose_config(compose, env)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    stack = config["services"]
    # MinIO only with its profile (compose v1 lists profiled services too, v2 leaves them out).
    always = {name for name, service in stack.items() if not service.get("profiles")}
    assert always == {"postgres", "mlflow"}
    mlflow, postgres = stack["mlflow"], stack["postgres"]
    assert mlflow["command"] == ["mlflow-server"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in mlflow and "healthcheck" in postgres
    assert any(str(p.get("target") if isinstance(p, dict) else p).endswith("5001")
               for p in mlflow["ports"])
    assert mlflow["environment"]["MLFLOW_PORT"] == "5001"
    store = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert store.startswith("postgresql://mlflow:") and store.endswith("@postgres:5432/mlflow")
    assert postgres["environment"]["PGPORT"] == "5432"
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    assert mlflow["environment"]["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == ""  # proxied
    # Webhooks: one encryption key for every worker; endpoints on the private network allowed.
    assert len(mlflow["environment"]["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]) == 44
    assert mlflow["environment"]["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert mlflow["environment"]["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert any("/mlartifacts" in str(v) for v in mlflow["volumes"])
    assert any("/var/lib/postgresql/data" in str(v) for v in postgres["volumes"])
    assert {"postgres-data", "mlflow-artifacts"} <= set(config["volumes"])
    assert not any("network_mode" in service for service in stack.values())

    with_s3 = compose_config(compose, env, "--profile", "s3")
    assert with_s3.returncode == 0, with_s3.stderr
    s3_services = yaml.safe_load(with_s3.stdout)["services"]
    assert set(s3_services) == {"postgres", "mlflow", "minio", "s3-bucket"}
    assert all(s3_services[name]["profiles"] == ["s3"] for name in ("minio", "s3-bucket"))
    assert s3_services["s3-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert s3_services["s3-bucket"]["command"] == ["python3", "/opt/promote/s3-bucket.py"]


def test_the_local_compose_file_puts_the_same_stack_on_the_host_network(compose, tmp_path):
    env = env_file(tmp_path, POSTGRES_PORT="55432", MLFLOW_PUBLISH="55001",
                   MLFLOW_PUBLISH_ADDRESS="127.0.0.1", MINIO_PORT="59000",
                   MINIO_CONSOLE_PORT="59001")
    proc = compose_config(compose, env, "--profile", "s3", file="compose.local.yaml")
    assert proc.returncode == 0, proc.stderr
    stack = yaml.safe_load(proc.stdout)["services"]
    assert set(stack) == {"postgres", "mlflow", "minio", "s3-bucket"}
    for name, service in stack.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), name  # the engine refuses published ports on it
    mlflow, postgres, minio = stack["mlflow"], stack["postgres"], stack["minio"]
    # Each listens on its own port, PostgreSQL and MinIO on loopback only...
    assert postgres["environment"]["PGPORT"] == "55432"
    assert postgres["command"] == ["postgres", "-c", "listen_addresses=127.0.0.1"]
    assert minio["command"][minio["command"].index("--address") + 1] == "127.0.0.1:59000"
    assert mlflow["environment"]["MLFLOW_HOST"] == "127.0.0.1"
    assert mlflow["environment"]["MLFLOW_PORT"] == "55001"
    # ...and the others find it there, by the same names as on compose.yaml's network.
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:55432/mlflow")
    assert extra_hosts(mlflow) == {"postgres": "127.0.0.1", "minio": "127.0.0.1"}
    assert extra_hosts(stack["s3-bucket"]) == {"minio": "127.0.0.1"}
    for service in (mlflow, stack["s3-bucket"]):
        assert service["build"]["network"] == "host"  # builds need the host's network too
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert stack["s3-bucket"]["depends_on"]["minio"]["condition"] == "service_started"
    # Everything else is what compose.yaml runs.
    bridged = yaml.safe_load(compose_config(compose, env, "--profile", "s3").stdout)["services"]
    for name, service in stack.items():
        for key in ("image", "volumes", "healthcheck", "restart", "profiles"):
            assert service.get(key) == bridged[name].get(key) or (name, key) == (
                "minio", "healthcheck"), (name, key)
        same = {k: v for k, v in service.get("environment", {}).items()
                if k not in ("MLFLOW_HOST", "MLFLOW_PORT", "MLFLOW_BACKEND_STORE_URI",
                             "MLFLOW_AUTH_DATABASE_URI")}
        assert same.items() <= bridged[name].get("environment", {}).items(), name


def extra_hosts(service: dict) -> dict[str, str]:
    """A service's extra_hosts as {name: address} (v1 prints a mapping, v2 a list)."""
    entries = service.get("extra_hosts", {})
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    return dict(re.split(r"[:=]", entry, maxsplit=1) for entry in entries)


@pytest.mark.parametrize("file", ["compose.yaml", "compose.local.yaml"])
def test_the_compose_file_refuses_to_run_without_a_database_password(compose, file):
    proc = compose_config(compose, DEPLOY / ".env.example", file=file)
    assert proc.returncode != 0
    assert "set POSTGRES_PASSWORD in deploy/.env" in proc.stderr


# -- the command line, started against PostgreSQL: train -> gate -> load ----------------------


@cache
def postgres_reachable() -> str:
    """'' when a fresh database can be made on PROMOTE_TEST_POSTGRES, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]'): mlflow needs it too"
    try:
        with psycopg.connect(POSTGRES, connect_timeout=3):
            return ""
    except psycopg.Error as exc:
        return f"no PostgreSQL at {_without_password(POSTGRES)}: {str(exc).strip()[:200]}"


def _without_password(uri: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)


@contextmanager
def fresh_database(suffix: str = "") -> Iterator[str]:
    """The URI of a fresh, uniquely named database (`suffix` appended), dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"promote_deploy_{uuid.uuid4().hex[:12]}{suffix}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


@dataclass(frozen=True)
class Node:
    url: str
    log: Path
    credentials: dict[str, str]  # secrets clients need (MLFLOW_TRACKING_*, ...); never printed
    client_env: dict[str, str] = field(default_factory=dict)  # other settings clients need


def launch_node(settings: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start deploy/mlflow-server.sh, exactly as the compose service runs it, on 127.0.0.1.

    `settings` are its variables (MLFLOW_BACKEND_STORE_URI at least); none is inherited from the
    test's own environment but PATH and the like. Returns (process, URL, log) without waiting:
    `wait_node` waits, `stop_node` stops (servers can start side by side)."""
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("MLFLOW_", "AWS_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HOST": "127.0.0.1",
                "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2", **settings})
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        # Its own session: `mlflow server` starts workers and a job consumer; stop the group.
        proc = subprocess.Popen(["sh", str(SCRIPT)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    return proc, f"http://127.0.0.1:{port}", log


def wait_node(proc: subprocess.Popen, url: str, log: Path) -> None:
    wait_healthy(url, 180, alive=lambda: proc.poll() is None, log=log)


def stop_node(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


NODE_FLAVOURS = ("open", "basic-auth")


@dataclass
class Launch:
    """One flavour of the central node, launched (or why it cannot be)."""

    why: str = ""  # the reason its test skips ('' when launched)
    error: Exception | None = None  # what went wrong launching it: its test fails with it
    proc: subprocess.Popen | None = None
    url: str = ""
    log: Path | None = None
    credentials: dict[str, str] = field(default_factory=dict, repr=False)  # never printed


def _flavours_selected(session: pytest.Session) -> list[str]:
    module = sys.modules[__name__]
    return [item.callspec.params["central_node"] for item in session.items
            if getattr(item, "module", None) is module and "central_node" in item.fixturenames
            and hasattr(item, "callspec")]


def _launch_flavour(flavour: str, workdir: Path, stack: ExitStack) -> Launch:
    why = postgres_reachable()
    if why:
        return Launch(why=why)
    settings = {"MLFLOW_BACKEND_STORE_URI": stack.enter_context(fresh_database()),
                "MLFLOW_ARTIFACTS_DESTINATION": str(workdir / "artifacts")}
    credentials: dict[str, str] = {}
    if flavour == "basic-auth":
        try:
            import flask_wtf  # noqa: F401 - what mlflow's basic-auth app needs
        except ImportError:
            return Launch(why="basic auth needs mlflow[auth] (Flask-WTF)")
        password = secrets.token_hex(12)
        settings.update({"MLFLOW_AUTH": "basic", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                         "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                         "MLFLOW_AUTH_DATABASE_URI": stack.enter_context(fresh_database("_auth"))})
        credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    proc, url, log = launch_node(settings, workdir)
    stack.callback(stop_node, proc)
    return Launch(proc=proc, url=url, log=log, credentials=credentials)


@pytest.fixture(scope="module", autouse=True)
def launched_nodes(request, tmp_path_factory) -> Iterator[dict[str, Launch]]:
    """The central node of each flavour whose test is selected, launched side by side as soon as
    this module starts: each on fresh databases of its own, in a directory of its own, used by
    its one test only. Their start-up (the slow part: migrations, workers) overlaps the other
    tests here instead of adding to them."""
    with ExitStack() as stack:
        launched = {}
        for flavour in dict.fromkeys(_flavours_selected(request.session)):
            try:
                launched[flavour] = _launch_flavour(
                    flavour, tmp_path_factory.mktemp(f"node-{flavour}"), stack)
            except Exception as exc:  # the test of this flavour reports it, not every test here
                launched[flavour] = Launch(error=exc)
        yield launched


@pytest.fixture(params=NODE_FLAVOURS)
def central_node(request, tmp_path: Path, launched_nodes: dict[str, Launch]) -> Iterator[Node]:
    """deploy/mlflow-server.sh, exactly as the compose service runs it, on a fresh database."""
    with ExitStack() as stack:
        launch = launched_nodes.get(request.param)
        if launch is None:  # not launched with the module: launched now
            launch = _launch_flavour(request.param, tmp_path, stack)
        if launch.error is not None:
            raise launch.error
        if launch.why:
            pytest.skip(launch.why)
        assert launch.proc is not None and launch.log is not None
        try:
            wait_node(launch.proc, launch.url, launch.log)
            yield Node(launch.url, launch.log, launch.credentials)
        finally:
            stop_node(launch.proc)


def promote(node: Node, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": node.url, **node.client_env, **node.credentials}
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
        env.pop(name, None)
    return subprocess.run([str(BIN / "promote"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def train_gate_load(node: Node, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The seed's flow against `node`: train a candidate, gate it into Production, load it.

    Returns the model's name and the version now in Production."""
    import mlflow
    from sklearn.datasets import load_diabetes

    name = f"t-deploy-{uuid.uuid4().hex[:8]}"
    trained = promote(node, "train", str(REPO / "train/candidates/linear.yaml"),
                      "--model-name", name, "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    version = json.loads(trained.stdout)["trained"][0]["version"]

    policy = yaml.safe_load((REPO / "policies/diabetes-regressor.yaml").read_text())
    policy["model"] = name
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    gated = promote(node, "gate", str(tmp_path / "policy.yaml"), "--json", cwd=tmp_path)
    assert gated.returncode == 0, gated.stdout[-3000:] + gated.stderr[-3000:]

    for output in (trained, gated):  # credentials never reach any output
        for secret in node.credentials.values():
            assert secret not in output.stdout + output.stderr

    # Load what Production points at, as a serving endpoint would.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", node.url)
    for key, value in {**node.client_env, **node.credentials}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(node.url)
    try:
        client = mlflow.MlflowClient(node.url)
        assert client.get_model_version_by_alias(name, "Production").version == version
        model = mlflow.pyfunc.load_model(f"models:/{name}@Production")
        features = load_diabetes(as_frame=True).frame.drop(columns="target").head(5)
        predictions = model.predict(features)
        assert len(predictions) == 5 and all(25 < p < 350 for p in predictions)
    finally:
        mlflow.set_tracking_uri("http://127.0.0.1:9")
    return name, version


@pytest.mark.mlflow
def test_train_gate_load_against_the_deploy_command_line(central_node: Node, tmp_path: Path,
                                                         monkeypatch):
    if central_node.credentials:  # basic auth is really on: no credentials, no entry
        assert http_status(f"{central_node.url}/api/2.0/mlflow/experiments/search"
                           "?max_results=1") == 401
    train_gate_load(central_node, tmp_path, monkeypatch)
    # The artifacts went through the server into its artifacts destination.
    assert any((central_node.log.parent / "artifacts").rglob("MLmodel"))


# -- the image, built from deploy/Dockerfile and run ------------------------------------------


@cache
def docker_client():
    """(a docker client, '') when an engine answers, else (None, why not)."""
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
        return client, ""
    except Exception as exc:  # any failure means "no engine here", which is the question
        return None, f"no Docker engine reachable ({type(exc).__name__}: {exc})"


@cache
def obtainable(image: str) -> str:
    """'' when `image` is present or can be pulled, else why not."""
    client, why = docker_client()
    if client is None:
        return why
    try:
        client.images.get(image)
        return ""
    except Exception:
        pass
    try:
        client.images.pull(image)
        return ""
    except Exception as exc:
        return (f"the Docker engine cannot pull {image} (no registry reachable from here?): "
                f"{str(exc).strip().splitlines()[0][:200]}")


@pytest.fixture
def docker():
    client, why = docker_client()
    if client is None:
        pytest.skip(why)
    return client


BASE_IMAGE = os.environ.get("PROMOTE_TEST_DEPLOY_BASE_IMAGE", "python:3.11-slim-bookworm")
MACHINE_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def build_image(docker, tmp_path: Path) -> str:
    """Build deploy/Dockerfile on BASE_IMAGE; the tag. Layers are cached between runs."""
    why = obtainable(BASE_IMAGE)
    if why:
        pytest.skip(f"{why}; set PROMOTE_TEST_DEPLOY_BASE_IMAGE to a local Debian image with "
                    "python3-venv")
    context = tmp_path / "context"
    shutil.copytree(DEPLOY, context)
    if MACHINE_CA.exists():  # pip in the build trusts what this machine trusts
        shutil.copy(MACHINE_CA, context / "ca-certificates" / "machine.crt")
    tag = f"promote-test/central-node:{MLFLOW_VERSION}"
    from docker.errors import BuildError

    try:
        docker.images.build(path=str(context), tag=tag, buildargs={"BASE_IMAGE": BASE_IMAGE},
                            network_mode="host", rm=True, forcerm=True)
    except BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        raise AssertionError(f"docker build failed: {exc}\n{log[-4000:]}") from exc
    return tag


def test_the_image_builds_and_runs_the_central_node(docker, tmp_path: Path):
    tag = build_image(docker, tmp_path)
    image = docker.images.get(tag)
    assert image.attrs["Config"]["User"] == "mlflow"
    assert image.attrs["Config"]["Cmd"] == ["mlflow-server"]
    # The build stage's CA bundle stayed there; the drivers are in.
    checked = docker.containers.run(tag, ["sh", "-c", "test ! -e /tmp/extra-ca && "
                                          "test ! -e /tmp/pip-ca.crt && python3 -c 'import "
                                          "psycopg, boto3, flask_wtf' && mlflow --version"],
                                    remove=True, network_mode="host")
    assert f"version {MLFLOW_VERSION}" in checked.decode()

    port = free_port()
    why = postgres_reachable()
    store = "sqlite:////home/mlflow/mlflow.db"
    database = None
    if not why:
        database = _create_database()
        store = database
    container = docker.containers.run(
        tag, detach=True, network_mode="host",
        environment={"MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
                     "MLFLOW_WORKERS": "1", "MLFLOW_BACKEND_STORE_URI": store})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 180, alive=lambda: container.reload() or container.status == "running")
        _round_trip_an_artifact(url)
        deadline = time.monotonic() + 90  # the image's own HEALTHCHECK agrees
        while time.monotonic() < deadline:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(2)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    except BaseException:
        sys.stderr.write(container.logs().decode(errors="replace")[-4000:])
        raise
    finally:
        container.remove(force=True)
        if database:
            _drop_database(database)


def _create_database() -> str:
    import psycopg
    from psycopg import sql

    name = f"promote_deploy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


def _drop_database(uri: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                     .format(sql.Identifier(uri.rsplit("/", 1)[1])))


def _round_trip_an_artifact(url: str) -> None:
    """Upload an artifact through the server and read it back (the artifacts are proxied)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.create_experiment(f"deploy-image-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    text = f"central node {uuid.uuid4().hex}"
    client.log_text(run.info.run_id, text, "note.txt")
    assert client.download_artifacts(run.info.run_id, "note.txt") and \
        Path(client.download_artifacts(run.info.run_id, "note.txt")).read_text() == text
