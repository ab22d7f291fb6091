"""Artifacts in S3: the central node's two ways of keeping models in a bucket, end to end.

One S3 server for the module (moto's, in its own process on 127.0.0.1, checking signatures and IAM
policies: tests/s3server.py) and two central nodes, each deploy/mlflow-server.sh as the compose
service runs it, on a fresh PostgreSQL database:

- proxied (MLFLOW_ARTIFACTS_DESTINATION=s3://...): the server holds the credentials and moves
  every artifact; clients run here with no AWS credential anywhere;
- direct (MLFLOW_DEFAULT_ARTIFACT_ROOT=s3://...): the server only records locations and holds no
  credentials; clients read and write the bucket with MLFLOW_S3_ENDPOINT_URL and their own keys.

Through each: train -> gate -> load with the promote command line, then the objects are listed in
the bucket. The secret access key never shows in promote's output nor in the server's log, also
when the store refuses a request.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3server import S3Server
from test_deploy import (
    REPO,
    Node,
    _create_database,
    _drop_database,
    launch_node,
    postgres_reachable,
    promote,
    stop_node,
    train_gate_load,
    wait_node,
)

from promotion.registry.client import PROXY_DEFAULTS

BUCKET = "promote-artifacts"
PROXIED = f"s3://{BUCKET}/proxied"
DIRECT = f"s3://{BUCKET}/direct"
# A proxying server with an S3 destination offers clients presigned URLs of the store itself
# (MLflow downloads every artifact that way, and uploads files of 500 MB or more). Promote's own
# commands turn that off for themselves (PROXY_DEFAULTS): `promote train` and `promote gate` run
# here with nothing set. The test's own load is a plain MLflow client, which needs the same two
# settings: this S3 server checks signatures on the Authorization header only and cannot serve a
# presigned URL, so a client that followed one would fail. (tests/test_fleet_netns.py proves that
# `promote serve` loads through the server with nothing set, from a host that cannot reach S3.)


@dataclass(frozen=True)
class Nodes:
    proxied: Node
    direct: Node
    pids: tuple[int, ...]  # the servers' process groups


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def nodes(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """Both central nodes, started side by side on databases of their own."""
    why = postgres_reachable()
    if why:
        pytest.skip(why)
    workdir = tmp_path_factory.mktemp("s3-nodes")
    databases = [_create_database(), _create_database()]
    launched = []
    try:
        launched.append(launch_node({"MLFLOW_BACKEND_STORE_URI": databases[0],
                                     "MLFLOW_WORKERS": "1", "MLFLOW_ARTIFACTS_DESTINATION": PROXIED,
                                     **s3.env()}, workdir))
        launched.append(launch_node({"MLFLOW_BACKEND_STORE_URI": databases[1],
                                     "MLFLOW_WORKERS": "1",
                                     "MLFLOW_DEFAULT_ARTIFACT_ROOT": DIRECT}, workdir))
        for proc, url, log in launched:
            wait_node(proc, url, log)
        (_, proxied_url, proxied_log), (_, direct_url, direct_log) = launched
        client_env = {k: v for k, v in s3.env().items() if k != "AWS_SECRET_ACCESS_KEY"}
        yield Nodes(Node(proxied_url, proxied_log, {}, dict(PROXY_DEFAULTS)),
                    Node(direct_url, direct_log,
                         {"AWS_SECRET_ACCESS_KEY": s3.secret_access_key}, client_env),
                    tuple(proc.pid for proc, _, _ in launched))
    finally:
        for proc, _, _ in launched:  # both stop at once, then each is waited for
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _, _ in launched:
            stop_node(proc)
        for database in databases:
            _drop_database(database)


@pytest.fixture(autouse=True)
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The client side (this process and the promote commands it runs) has no AWS credential:
    none in the environment, no credentials file, and no instance-metadata lookup (which would
    reach for 169.254.169.254). A node's Node.client_env and credentials add what it needs."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "MLFLOW_S3_ENDPOINT_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def artifact_uri(node: Node, name: str, version: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the run behind `version` keeps its artifacts, as the server records it."""
    from mlflow import MlflowClient

    for key, value in node.credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(node.url)
    run_id = client.get_model_version(name, version).run_id
    return str(client.get_run(run_id).info.artifact_uri)


@pytest.mark.mlflow
def test_proxied_the_server_writes_the_bucket_and_clients_hold_no_credentials(
        nodes: Nodes, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert not {k for k in os.environ if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    before = set(s3.keys(BUCKET, "proxied/"))
    name, version = train_gate_load(nodes.proxied, tmp_path, monkeypatch)

    # Clients only ever saw the server's own artifact URIs...
    assert artifact_uri(nodes.proxied, name, version, monkeypatch).startswith("mlflow-artifacts:")
    # ...and the model is in the bucket, under the node's destination.
    written = set(s3.keys(BUCKET, "proxied/")) - before
    assert any(key.endswith("/MLmodel") for key in written), sorted(written)

    # Unless told otherwise, MLflow's clients would fetch those objects from the store itself,
    # through URLs the server signs: no credentials, but they must reach the store's endpoint.
    info = json.loads(http_get(f"{nodes.proxied.url}/api/3.0/mlflow/server-info"))
    assert info["multipart_downloads_enabled"] is True
    model = next(key for key in written if key.endswith("/MLmodel"))
    offered = json.loads(http_get(f"{nodes.proxied.url}/api/2.0/mlflow-artifacts/presigned/"
                                  + model.removeprefix("proxied/")))
    assert offered["url"].startswith(f"{s3.endpoint}/{BUCKET}/{model}?")
    assert s3.secret_access_key not in offered["url"]


@pytest.mark.mlflow
def test_direct_clients_read_and_write_the_bucket_themselves(
        nodes: Nodes, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    before = set(s3.keys(BUCKET, "direct/"))
    name, version = train_gate_load(nodes.direct, tmp_path, monkeypatch)

    uri = artifact_uri(nodes.direct, name, version, monkeypatch)
    assert uri.startswith(f"{DIRECT}/"), uri  # the client was told the bucket, and used it
    written = set(s3.keys(BUCKET, "direct/")) - before
    assert any(key.endswith("/MLmodel") for key in written), sorted(written)


@pytest.mark.mlflow
def test_direct_clients_without_credentials_cannot_write(nodes: Nodes, s3: S3Server,
                                                         tmp_path: Path):
    before = set(s3.keys(BUCKET))
    anonymous = Node(nodes.direct.url, nodes.direct.log, {},  # the store, but no key to it
                     {"MLFLOW_S3_ENDPOINT_URL": s3.endpoint})
    trained = train(anonymous, tmp_path)
    assert trained.returncode != 0
    assert "NoCredentialsError" in trained.said
    assert set(s3.keys(BUCKET)) == before


@pytest.mark.mlflow
def test_the_secret_key_never_shows_when_the_store_refuses(nodes: Nodes, s3: S3Server,
                                                           tmp_path: Path):
    secret = s3.secret_access_key
    # A client in direct mode whose key is wrong: S3 refuses its signature.
    wrong = secrets.token_urlsafe(30)
    forged = Node(nodes.direct.url, nodes.direct.log, {"AWS_SECRET_ACCESS_KEY": wrong},
                  nodes.direct.client_env)
    refused = train(forged, tmp_path)
    assert refused.returncode != 0
    assert "SignatureDoesNotMatch" in refused.said
    # The proxied node's access taken away: its upload fails (the server logs S3's answer and
    # tells the client no more than 500), and promote fails.
    logged = len(nodes.proxied.log.read_bytes())
    s3.revoke()
    try:
        denied = train(nodes.proxied, tmp_path)
    finally:
        s3.grant()
    assert denied.returncode != 0
    assert "AccessDenied" in nodes.proxied.log.read_bytes()[logged:].decode(errors="replace")

    for said in (refused.said, denied.said):
        assert secret not in said and wrong not in said
    for node in (nodes.proxied, nodes.direct):
        assert secret not in node.log.read_text(errors="replace")
    # Credentials reach the servers by their environment, never by their command lines.
    for pid in nodes.pids:
        for cmdline in process_group_cmdlines(pid):
            assert secret not in cmdline


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


@dataclass(frozen=True)
class Said:
    returncode: int
    said: str  # stdout, stderr, and the crash log promote pointed to, if any


def train(node: Node, workdir: Path) -> Said:
    proc = promote(node, "train", str(REPO / "train/candidates/linear.yaml"),
                   "--model-name", f"t-s3-{secrets.token_hex(4)}", "--json", cwd=workdir)
    said = proc.stdout + proc.stderr
    for crash_log in re.findall(r"traceback written to (\S+\.log)", said):
        said += Path(crash_log).read_text(errors="replace")
        Path(crash_log).unlink()
    return Said(proc.returncode, said)


def process_group_cmdlines(pgid: int) -> list[str]:
    """The command lines of every process in a process group (`mlflow server` and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    assert found, f"no process left in group {pgid}"
    return found
