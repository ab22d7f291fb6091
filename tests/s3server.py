"""A real S3-protocol server on loopback for the tests: moto's standalone server, own process.

It checks credentials the way S3 does: every request must be signed with an access key it issued,
and is allowed only what that key's IAM policy allows. Two users are made at start:

- `central`: the key an MLflow server (or a client, in direct mode) uses; may do anything in S3;
- `admin`: the test's own key; may do anything, including revoking `central`'s S3 access.

    with S3Server() as s3:
        s3.create_bucket("promote-artifacts")
        env = s3.env()            # MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
        s3.keys("promote-artifacts", "proxied/")

Objects live in the server's memory: nothing is left behind when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REGION = "us-east-1"
# moto answers the first N requests without checking a signature: enough to create the admin
# user, its key and its policy. Every later request must be signed by a key moto issued.
_UNSIGNED_SETUP_CALLS = 3
_ALLOW_ALL = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
_ALLOW_S3 = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto_server on 127.0.0.1:<free port>, with signature checks and IAM policies on."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key_id = ""
        self.secret_access_key = ""
        self._admin: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._log = Path(tempfile.mkstemp(prefix="promote-moto-", suffix=".log")[1])

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> S3Server:
        binary = Path(sys.executable).with_name("moto_server")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNSIGNED_SETUP_CALLS)}
        with open(self._log, "wb") as out:
            self._proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                          stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        try:
            self._wait_ready(30)
            self._make_users()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.unlink(missing_ok=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                break
            try:  # moto's own API: answered without a signature, and not counted as a call
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not start: {self.log()[-2000:]}")

    def _make_users(self) -> None:
        iam = self.client("iam", {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"})
        iam.create_user(UserName="admin")
        admin = iam.create_access_key(UserName="admin")["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="all",
                            PolicyDocument=json.dumps(_ALLOW_ALL))
        self._admin = {"aws_access_key_id": admin["AccessKeyId"],
                       "aws_secret_access_key": admin["SecretAccessKey"]}
        iam = self.client("iam")
        iam.create_user(UserName="central")
        central = iam.create_access_key(UserName="central")["AccessKey"]
        self.access_key_id = central["AccessKeyId"]
        self.secret_access_key = central["SecretAccessKey"]
        self.grant()

    # -- what tests use ----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The variables an MLflow server or client reads to use this store as `central`."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key, "AWS_DEFAULT_REGION": REGION}

    def client(self, service: str = "s3", credentials: dict[str, str] | None = None) -> Any:
        """A boto3 client of this server, signed with the admin key unless told otherwise."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            **(credentials or self._admin))

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix`, read back over the S3 API."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def revoke(self) -> None:
        """Take `central`'s S3 access away (its key stays valid, its requests are denied)."""
        self.client("iam").delete_user_policy(UserName="central", PolicyName="s3")

    def grant(self) -> None:
        self.client("iam").put_user_policy(UserName="central", PolicyName="s3",
                                           PolicyDocument=json.dumps(_ALLOW_S3))

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""
