"""`promote webhooks ensure` and `promote webhooks test` against the real MLflow test server, which
really delivers: a receiver on 127.0.0.1 in this process gets MLflow's signed POSTs.

The test server runs with the webhook settings of `conftest.webhook_delivery_env` (private
addresses and http:// allowed, one secret encryption key for its workers, a 1 s webhook cache).
Every webhook a test creates points at its own receiver and is deleted afterwards: other tests
share the server, and their alias writes would otherwise be delivered here.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import plan, webhook_delivery_env
from helpers import add_version

from promotion.cli import run
from promotion.engine.signing import verify
from promotion.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
CACHE_TTL = float(webhook_delivery_env()["MLFLOW_WEBHOOK_CACHE_TTL"])
# A delivery arrives in milliseconds. A write the server's webhook cache hid is known lost after
# the cache's TTL and a margin; after that, the bound is only there to fail rather than hang.
LOST_AFTER = CACHE_TTL + 1.0
WAIT = 5.0


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every POST and answers `status`."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.status = 200
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                # Recorded before it is answered: once the sender has its answer, the test may
                # look for the delivery at once.
                with receiver._arrived:
                    receiver.deliveries.append(Delivery(self.path, headers, body, at))
                    receiver._arrived.notify_all()
                answer = json.dumps({"received": True}).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hooks/mlflow"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait_for(self, match: Callable[[Delivery], bool], timeout: float) -> Delivery | None:
        """The first delivery that matches, waiting up to `timeout` seconds for it."""
        with self._arrived:
            found = self._arrived.wait_for(
                lambda: next((d for d in self.deliveries if match(d)), None), timeout=timeout)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"whsec-{uuid.uuid4().hex}"
    monkeypatch.setenv("PROMOTE_WEBHOOK_SECRET", value)
    return value


@pytest.fixture
def receiver(client) -> Iterator[Receiver]:
    """A receiver, and at the end the deletion of every webhook pointing at it."""
    if plan().path == "existing":
        pytest.skip("an existing server may refuse http:// and loopback webhook URLs")
    endpoint = Receiver()
    try:
        yield endpoint
    finally:
        endpoint.close()
        for hook in _all_webhooks(client):
            if hook.url.startswith(endpoint.base + "/"):
                client.delete_webhook(hook.webhook_id)


@pytest.fixture
def reachable(receiver: Receiver) -> Receiver:
    """A receiver the server can reach: it runs on this host's network."""
    p = plan()
    if p.path == "testcontainers" and not p.host_network:
        pytest.skip("the container is on a bridge network: 127.0.0.1 here is not reachable "
                    "from it (PROMOTE_TEST_DOCKER_NETWORK=host)")
    return receiver


def _all_webhooks(client) -> list[Any]:
    found, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ensure_json(capsys, *args: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "webhooks", "ensure", *args, "--json")
    assert code == 0, out + err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


# -- ensure ------------------------------------------------------------------------------------


@pytest.mark.mlflow
def test_ensure_creates_then_is_up_to_date_then_updates(tracking_uri, client, receiver, secret,
                                                        capsys, caplog):
    caplog.set_level(logging.DEBUG)
    created = ensure_json(capsys, receiver.url)
    port = receiver.url.split(":")[2].split("/")[0]
    assert created["schema_version"] == 1 and created["kind"] == "webhook"
    assert created["name"] == f"promote-serve-127.0.0.1-{port}"
    assert created["action"] == "created" and created["status"] == "ACTIVE"
    assert created["events"] == ["model_version_alias.created", "model_version_alias.deleted"]
    assert created["url"] == receiver.url and created["id"]

    code, again, err = cli(capsys, "webhooks", "ensure", receiver.url)
    assert code == 0, err
    assert again.splitlines()[0] == (
        f"webhook {created['name']}: up to date (secret set again: MLflow never returns a "
        "secret, so it cannot be compared)")
    assert created["id"] in again

    events = ensure_json(capsys, receiver.url, "--events", "model_version_alias.created")
    assert (events["action"], events["changed"]) == ("updated", ["events"])
    moved = ensure_json(capsys, receiver.base + "/elsewhere", "--name", created["name"],
                        "--events", "model_version_alias.created")
    assert (moved["action"], moved["changed"], moved["id"]) == ("updated", ["url"], created["id"])

    mine = [w for w in _all_webhooks(client) if w.name == created["name"]]
    assert len(mine) == 1 and mine[0].webhook_id == created["id"]
    assert [str(e) for e in mine[0].events] == ["model_version_alias.created"]
    assert mine[0].url == receiver.base + "/elsewhere"
    # The secret is never printed, nor logged (MLflow's own loggers included).
    captured = capsys.readouterr()
    assert secret not in again + json.dumps([created, events, moved]) + captured.out + \
        captured.err + caplog.text


@pytest.mark.mlflow
def test_ensure_reactivates_a_disabled_webhook(tracking_uri, client, receiver, secret, capsys):
    created = ensure_json(capsys, receiver.url)
    client.update_webhook(created["id"], status="DISABLED")
    code, out, err = cli(capsys, "webhooks", "ensure", receiver.url)
    assert code == 0, err
    assert out.splitlines()[0].endswith(": updated: status (and the secret set again)")
    assert str(client.get_webhook(created["id"]).status) == "ACTIVE"


@pytest.mark.mlflow
def test_a_dry_run_writes_nothing(tracking_uri, client, receiver, secret, capsys):
    def server_state() -> list[tuple[Any, ...]]:
        return sorted((w.webhook_id, w.name, w.url, w.status, w.last_updated_timestamp,
                       tuple(sorted(str(e) for e in w.events))) for w in _all_webhooks(client))

    before = server_state()
    code, out, err = cli(capsys, "webhooks", "ensure", receiver.url, "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0].endswith(": would be created (dry run: nothing written)")
    assert server_state() == before

    created = ensure_json(capsys, receiver.url)
    before = server_state()
    planned = ensure_json(capsys, receiver.url, "--dry-run", "--events",
                          "model_version_alias.created,model_version.created")
    assert (planned["action"], planned["changed"], planned["id"]) == \
        ("would_update", ["events"], created["id"])
    assert planned["dry_run"] is True and planned["secret_sent"] is False
    same = ensure_json(capsys, receiver.url, "--dry-run")
    assert same["action"] == "up_to_date" and same["secret_sent"] is False
    assert server_state() == before


def test_without_a_secret_nothing_is_asked_of_the_server(monkeypatch, capsys):
    monkeypatch.delenv("PROMOTE_WEBHOOK_SECRET", raising=False)
    code, out, err = cli(capsys, "webhooks", "ensure", "http://serve-1.internal:8080/hooks/mlflow")
    assert code == ExitCode.INVALID_INPUT and out == ""
    assert "PROMOTE_WEBHOOK_SECRET is not set" in err
    monkeypatch.setenv("PROMOTE_WEBHOOK_SECRET", "   ")
    assert cli(capsys, "webhooks", "ensure", "http://serve-1.internal:8080/hooks/mlflow")[0] == 2


@pytest.mark.parametrize(("args", "words"), [
    (["ftp://serve-1.internal/hooks/mlflow"], "must start with http:// or https://"),
    (["serve-1.internal:8080/hooks/mlflow"], "must start with http:// or https://"),
    (["http:///hooks/mlflow"], "names no host"),
    (["http://serve-1.internal:port/hooks/mlflow"], "not a URL"),
    (["http://user:pw@serve-1.internal/hooks/mlflow"], "must hold no credentials"),
    (["http://serve-1.internal/hooks/mlflow", "--events", "model_version_alias.moved"],
     "unknown webhook event 'model_version_alias.moved'"),
    (["http://serve-1.internal/hooks/mlflow", "--name", "Serve 1"], "webhook name 'Serve 1'"),
])
def test_bad_input_is_exit_2_before_any_request(secret, capsys, args, words):
    # MLFLOW_TRACKING_URI points nowhere here (conftest): any request would fail with exit 3.
    code, out, err = cli(capsys, "webhooks", "ensure", *args)
    assert code == ExitCode.INVALID_INPUT, err
    assert words in err and "pw@" not in err and secret not in out + err


def test_the_default_name_follows_mlflows_rule():
    from promotion.registry.webhooks import _NAME, default_name

    assert default_name("http://serve-1.internal:8080/hooks/mlflow") == \
        "promote-serve-serve-1.internal-8080"
    assert default_name("https://Serve-1.Internal/hooks/mlflow") == \
        "promote-serve-serve-1.internal-443"
    assert default_name("http://[::1]:8080/hooks/mlflow") == "promote-serve--1-8080"
    long = default_name(f"http://{'x' * 80}.internal:8080/hooks/mlflow")
    assert len(long) <= 63 and _NAME.fullmatch(long)
    assert long != default_name(f"http://{'x' * 80}.internal:8081/hooks/mlflow")


@pytest.mark.mlflow
def test_a_server_without_the_webhook_api_is_exit_3(tracking_uri, secret, capsys):
    # A path that is not MLflow's API answers 404, as a server older than 3.3 does.
    code, out, err = cli(capsys, "--tracking-uri", f"{tracking_uri}/no-api", "webhooks",
                         "ensure", "http://serve-1.internal:8080/hooks/mlflow")
    assert code == ExitCode.REGISTRY and out == ""
    assert "the server has no webhook API" in err
    assert "webhooks need an MLflow 3.3 (or later) server with a SQL backend store" in err


def test_an_unreachable_server_is_exit_3(secret, capsys):
    code, _, err = cli(capsys, "webhooks", "ensure", "http://serve-1.internal:8080/hooks/mlflow")
    assert code == ExitCode.REGISTRY, err
    assert err.startswith("listing the server's webhooks: ") and secret not in err
    assert "if the server is reachable: webhooks need an MLflow 3.3 (or later) server with a " \
        "SQL backend store, and MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY set" in err


# -- test --------------------------------------------------------------------------------------


@pytest.mark.mlflow
def test_the_test_event_arrives_signed_as_our_verifier_expects(tracking_uri, reachable, secret,
                                                               capsys):
    name = ensure_json(capsys, reachable.url)["name"]
    code, out, err = cli(capsys, "webhooks", "test", name, "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["kind"] == "webhook_test" and result["success"] is True
    assert (result["status_code"], result["event"]) == (200, "model_version_alias.created")
    assert result["response"] == '{"received": true}' and result["error"] is None

    delivery = reachable.wait_for(lambda d: True, timeout=0)  # answered before test_webhook was
    assert delivery is not None and delivery.path == "/hooks/mlflow"
    for header in ("x-mlflow-signature", "x-mlflow-timestamp", "x-mlflow-delivery-id"):
        assert delivery.headers.get(header), header
    verdict = verify(secret, delivery.headers, delivery.body, time.time())
    assert verdict.ok, verdict.reason
    assert not verify("another-secret", delivery.headers, delivery.body, time.time()).ok
    assert delivery.payload["entity"] == "model_version_alias"
    assert delivery.payload["action"] == "created"

    code, out, err = cli(capsys, "webhooks", "test", reachable.url)  # by URL, as text
    assert code == 0, err
    assert out.splitlines()[0] == f"webhook {name}: test delivery succeeded (HTTP 200)"


@pytest.mark.mlflow
def test_a_failed_test_delivery_is_exit_3_with_the_servers_reason(tracking_uri, reachable,
                                                                   secret, capsys):
    name = ensure_json(capsys, reachable.url)["name"]
    reachable.status = 403
    code, out, err = cli(capsys, "webhooks", "test", name)
    assert code == ExitCode.REGISTRY, err
    assert out.splitlines()[0] == f"webhook {name}: test delivery failed (HTTP 403)"
    assert '{"received": true}' in out

    code, _, err = cli(capsys, "webhooks", "test", f"no-such-webhook-{uuid.uuid4().hex[:8]}")
    assert code == ExitCode.INVALID_INPUT and "no webhook is named" in err


@pytest.mark.mlflow
def test_a_test_the_server_still_waits_on_says_how_to_wait(tracking_uri, client, reachable,
                                                           secret, capsys, monkeypatch):
    """An endpoint that accepts and never answers: MLflow keeps trying for minutes, Promote stops
    waiting first (here after 1 s) and says how to hear MLflow's verdict."""
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hooks/mlflow"
    hook = ensure_json(capsys, url)["id"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        code, out, err = cli(capsys, "webhooks", "test", url)
    finally:
        silent.close()  # the server's pending delivery attempts now fail at once
        client.delete_webhook(hook)
    assert code == ExitCode.REGISTRY and out == ""
    assert "it may still be waiting on the endpoint" in err
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT=150 MLFLOW_HTTP_REQUEST_MAX_RETRIES=0" in err


# -- the real thing: an alias write is delivered ---------------------------------------------


def _delivered(receiver: Receiver, write: Callable[[int], str],
               match: Callable[[Delivery, str], bool]) -> tuple[Delivery, float]:
    """Write (`write(attempt)` returns what to look for) until the delivery arrives; the delay.

    Each server worker caches its list of webhooks for an event for MLFLOW_WEBHOOK_CACHE_TTL (1 s
    here): an alias write in the second after the webhook was created may find the list cached
    just before, without it, and is then not delivered at all. A second write, after that
    second, must be.
    """
    for attempt, timeout in enumerate((LOST_AFTER, WAIT)):
        start = time.monotonic()
        marker = write(attempt)
        found = receiver.wait_for(lambda d, m=marker: match(d, m), timeout=timeout)
        if found is not None:
            return found, found.at - start
    raise AssertionError(f"no delivery within {WAIT:.0f} s of a second write; received: "
                         f"{[d.payload for d in receiver.deliveries]}")


def _alias_event(action: str, model: str) -> Callable[[Delivery, str], bool]:
    def match(d: Delivery, alias: str) -> bool:
        p = d.payload
        return (p.get("entity"), p.get("action")) == ("model_version_alias", action) and \
            p.get("data", {}).get("name") == model and p.get("data", {}).get("alias") == alias
    return match


@pytest.mark.mlflow
def test_an_alias_write_is_delivered_signed(tracking_uri, client, model_name,
                                                            reachable, secret, capsys):
    version = add_version(client, model_name, run=False)  # an alias needs only a version
    ensure_json(capsys, reachable.url)

    def set_alias(attempt: int) -> str:
        alias = f"champion-{attempt}"
        client.set_registered_model_alias(model_name, alias, version)
        return alias

    delays = []
    created, delay = _delivered(reachable, set_alias, _alias_event("created", model_name))
    delays.append(delay)
    assert created.payload["data"]["version"] == version
    assert verify(secret, created.headers, created.body, time.time()).ok
    for sample in range(2, 5):  # more samples: the webhook list is cached now
        _, delay = _delivered(reachable, lambda _, s=sample: set_alias(s),
                              _alias_event("created", model_name))
        delays.append(delay)

    def delete_alias(attempt: int) -> str:
        alias = f"champion-{2 + attempt}"
        client.delete_registered_model_alias(model_name, alias)
        return alias

    deleted, delay = _delivered(reachable, delete_alias, _alias_event("deleted", model_name))
    assert verify(secret, deleted.headers, deleted.body, time.time()).ok
    print(f"alias write -> delivery: created {[f'{d * 1000:.0f} ms' for d in delays]}, "
          f"deleted {delay * 1000:.0f} ms")  # figures: bench/events.py has the goal
