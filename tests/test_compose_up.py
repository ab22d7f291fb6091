"""The central node's compose stack, for real: `up --build`, train -> gate -> load, `down`.

Which stack, by what the engine can do:
- PROMOTE_TEST_DOCKER_NETWORK=host (an engine without bridge networks, no registry):
  deploy/compose.local.yaml with the images .ci/local-images builds (PROMOTE_TEST_POSTGRES_IMAGE,
  PROMOTE_TEST_S3_IMAGE) and the server's image built on PROMOTE_TEST_DEPLOY_BASE_IMAGE;
- otherwise: deploy/compose.yaml with the public images, on a network of its own.
With `docker compose` (v2) or Debian's `docker-compose` (1.29), whichever is installed. Each run
gets a project name, passwords, ports and a Fernet key of its own, and `down -v` removes it all.
Twice: artifacts in the server's volume, and with the s3 profile in a bucket.

Skipped, with the reason, where there is no engine or no compose; under
PROMOTE_TEST_REQUIRE=testcontainers (CI) that is a failure instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from test_deploy import (
    DEPLOY,
    MACHINE_CA,
    MLFLOW_VERSION,
    Node,
    compose_command,
    docker_client,
    env_file,
    example_settings,
    fernet_key,
    free_port,
    obtainable,
    train_gate_load,
    wait_healthy,
)

HOST_NETWORK = os.environ.get("PROMOTE_TEST_DOCKER_NETWORK") == "host"
REQUIRED = os.environ.get("PROMOTE_TEST_REQUIRE") == "testcontainers"
BUCKET = "mlflow-artifacts"
# The s3 profile's store is known as http://minio:<port> inside the stack only; the server would
# hand clients presigned URLs there. Clients outside send every byte through the server instead.
STREAM_THROUGH_THE_SERVER = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
                             "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


def cannot(why: str) -> NoReturn:
    if REQUIRED:
        pytest.fail(f"PROMOTE_TEST_REQUIRE=testcontainers, but {why}")
    pytest.skip(why)


@dataclass(frozen=True)
class Plan:
    compose: list[str]
    file: str
    settings: dict[str, str]  # what the env file sets beyond deploy/.env.example


def plan() -> Plan:
    """The stack this engine can run, or skip (fail under PROMOTE_TEST_REQUIRE) saying why."""
    client, why = docker_client()
    if client is None:
        cannot(why)
    compose, why = compose_command()
    if compose is None:
        cannot(why)
    assert compose is not None
    if not HOST_NETWORK:
        settings = {"POSTGRES_IMAGE": os.environ.get("PROMOTE_TEST_POSTGRES_IMAGE", ""),
                    "BASE_IMAGE": os.environ.get("PROMOTE_TEST_DEPLOY_BASE_IMAGE", "")}
        settings = {k: v for k, v in settings.items() if v}
        for name in ("POSTGRES_IMAGE", "BASE_IMAGE", "MINIO_IMAGE"):
            why = obtainable(settings.get(name) or example_settings()[name])
            if why:
                cannot(why)
        return Plan(compose, "compose.yaml", settings)
    settings = {"POSTGRES_IMAGE": os.environ.get("PROMOTE_TEST_POSTGRES_IMAGE", ""),
                "MINIO_IMAGE": os.environ.get("PROMOTE_TEST_S3_IMAGE", ""),
                "BASE_IMAGE": os.environ.get("PROMOTE_TEST_DEPLOY_BASE_IMAGE", "")}
    missing = [k for k, v in settings.items() if not v]
    if missing:
        names = {"POSTGRES_IMAGE": "PROMOTE_TEST_POSTGRES_IMAGE",
                 "MINIO_IMAGE": "PROMOTE_TEST_S3_IMAGE",
                 "BASE_IMAGE": "PROMOTE_TEST_DEPLOY_BASE_IMAGE"}
        cannot("an engine without bridge networks runs deploy/compose.local.yaml on images built "
               f"here; not set: {', '.join(names[k] for k in missing)} (.ci/local-images prints "
               "PROMOTE_TEST_POSTGRES_IMAGE and PROMOTE_TEST_S3_IMAGE; "
               "PROMOTE_TEST_DEPLOY_BASE_IMAGE is the base .ci/mlflow-image makes)")
    for image in settings.values():  # built here: never asked of a registry
        try:
            client.images.get(image)
        except Exception as exc:  # docker.errors.ImageNotFound, or the engine's own error
            cannot(f"image {image} is not on this engine (.ci/local-images builds it): {exc}")
    return Plan(compose, "compose.local.yaml", settings)


class Stack:
    """One compose project made from a copy of deploy/ (with this machine's CA for pip)."""

    def __init__(self, p: Plan, workdir: Path, profile: str | None, settings: dict[str, str]):
        self.project = f"promote-test-{uuid.uuid4().hex[:8]}"
        context = workdir / "deploy"
        shutil.copytree(DEPLOY, context)
        if MACHINE_CA.exists():
            shutil.copy(MACHINE_CA, context / "ca-certificates" / "machine.crt")
        env = env_file(workdir, COMPOSE_PROJECT_NAME=self.project, **settings)
        env.chmod(0o600)
        self.argv = [*p.compose, "-p", self.project, "--env-file", str(env),
                     "-f", str(context / p.file), *(["--profile", profile] if profile else [])]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def container(self, service: str):
        client, _ = docker_client()
        found = client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}"]})
        assert len(found) == 1, (service, found)
        return found[0]

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", timeout=120).stdout


@pytest.fixture(params=["volume", "s3"])
def stack(request, tmp_path: Path, capsys) -> Iterator[tuple[Stack, str, dict[str, str]]]:
    """The stack, up and healthy: (stack, server URL, what clients need)."""
    p = plan()
    publish = free_port()
    settings = {**p.settings, "MLFLOW_PUBLISH": str(publish), "MLFLOW_WORKERS": "2",
                "MLFLOW_IMAGE": f"promote-test/central-node:{MLFLOW_VERSION}",
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": fernet_key()}
    minio_port = free_port() if HOST_NETWORK else 9000
    if HOST_NETWORK:
        settings.update(POSTGRES_PORT=str(free_port()), MLFLOW_PUBLISH_ADDRESS="127.0.0.1",
                        MINIO_PORT=str(minio_port), MINIO_CONSOLE_PORT=str(free_port()))
    client_env: dict[str, str] = {}
    if request.param == "s3":
        settings.update(MLFLOW_ARTIFACTS_DESTINATION=f"s3://{BUCKET}", MLFLOW_S3_BUCKET=BUCKET,
                        MLFLOW_S3_ENDPOINT_URL=f"http://minio:{minio_port}",
                        AWS_ACCESS_KEY_ID=f"central{secrets.token_hex(4)}",
                        AWS_SECRET_ACCESS_KEY=secrets.token_hex(16))
        client_env = STREAM_THROUGH_THE_SERVER
    s = Stack(p, tmp_path, "s3" if request.param == "s3" else None, settings)
    try:
        started = time.monotonic()
        up = s.run("up", "-d", "--build", timeout=1800)
        took = time.monotonic() - started
        with capsys.disabled():
            print(f"\n{' '.join(p.compose)} -f {p.file} up -d --build ({request.param}): "
                  f"{took:.1f} s, exit {up.returncode}")
        assert up.returncode == 0, up.stderr[-4000:]
        url = f"http://127.0.0.1:{publish}"
        wait_healthy(url, 300)
        yield s, url, client_env
    except BaseException:
        sys.stderr.write(s.logs()[-6000:])
        raise
    finally:
        down = s.run("down", "-v", "--remove-orphans", timeout=300)
        if down.returncode != 0:
            sys.stderr.write(f"compose down failed for project {s.project}:\n{down.stderr}")
    assert down.returncode == 0, f"compose down failed for project {s.project}"


def in_server(s: Stack, *argv: str) -> str:
    """Run a command in the server's container; its output."""
    code, output = s.container("mlflow").exec_run(list(argv))
    assert code == 0, output.decode(errors="replace")[-2000:]
    return output.decode(errors="replace")


LIST_BUCKET = ("import os, boto3; s3 = boto3.client('s3', endpoint_url=os.environ"
               "['MLFLOW_S3_ENDPOINT_URL']); print('\\n'.join(o['Key'] for p in s3.get_paginator("
               f"'list_objects_v2').paginate(Bucket='{BUCKET}') for o in p.get('Contents', [])))")


@pytest.mark.mlflow
def test_the_stack_comes_up_and_runs_the_flow(stack, tmp_path: Path, monkeypatch):
    s, url, client_env = stack
    for name in list(os.environ):  # clients hold no storage credentials: the server does
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    s3 = bool(client_env)
    if s3:  # the one-shot service made the bucket, without MinIO's own tools
        bucket = s.container("s3-bucket")
        deadline = time.monotonic() + 120
        while bucket.status != "exited" and time.monotonic() < deadline:
            time.sleep(1)
            bucket.reload()
        assert bucket.attrs["State"]["ExitCode"] == 0, bucket.logs().decode(errors="replace")

    try:
        train_gate_load(Node(url, tmp_path / "none.log", {}, client_env), tmp_path, monkeypatch)
        # The model went through the server into the stack's artifact store.
        if s3:
            keys = in_server(s, "python3", "-c", LIST_BUCKET).split()
        else:
            keys = in_server(s, "find", "/mlartifacts", "-name", "MLmodel").split()
        assert any(key.endswith("/MLmodel") for key in keys), keys
    except BaseException:
        sys.stderr.write(s.logs()[-6000:])
        raise
