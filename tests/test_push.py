"""Push end to end: a gate moves @Production, the real MLflow server delivers its webhook to a
running `promote serve`, which serves the new version long before it would have polled; with the
webhook disabled (a delivery lost), polling still converges.

The session's test server delivers webhooks (tests/conftest.py gives it the settings it needs);
the endpoints are real `promote serve` processes (tests/test_serve.py's helpers). The time from
the alias write to the first answer from the new version is printed; the goal (push <= 1 s) is
measured by bench/events.py, not asserted here.
"""

from __future__ import annotations

import secrets
import time

import pytest
from test_serve import _wait_until, expected, gate, log_version, serving, split_payload
from test_serve import write_policy as serve_policy

from promotion import registry
from promotion.cli import run

pytestmark = pytest.mark.mlflow

# The server caches its list of webhooks per worker for MLFLOW_WEBHOOK_CACHE_TTL (1 s in the test
# server): a webhook created just now is seen once that has passed. Nothing signals it.
CACHE_TTL = 1.0


def _first_answer_from(endpoint, version: str, timeout: float) -> float:
    """Ask until the endpoint answers from `version`; when it first did (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = endpoint.post(split_payload())
        if answer.headers.get("X-Model-Version") == version:
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"never served version {version}:\n{endpoint.log()[-3000:]}")


def test_a_gate_reaches_a_running_endpoint_through_mlflows_webhook(tracking_uri, client,
                                                                   model_name, tmp_path,
                                                                   monkeypatch):
    secret = secrets.token_urlsafe(24)
    monkeypatch.setenv("PROMOTE_WEBHOOK_SECRET", secret)
    v1, v2 = log_version(model_name, "a", score=1.0), log_version(model_name, "b", score=2.0)
    policy = serve_policy(tmp_path, model_name)
    gate(policy, v1)
    moved: list[float] = []
    real = registry.set_alias

    def recorded(c, model, alias, version):  # the gate's own write, timed when it returns
        real(c, model, alias, version)
        if alias == "Production":
            moved.append(time.monotonic())

    with serving(tracking_uri, model_name) as endpoint:  # polls every 60 s: a secret is set
        assert endpoint.get("/health").json()["events"]["webhook"] == "on"
        assert run(["webhooks", "ensure", f"{endpoint.url}/hooks/mlflow"]) == 0
        time.sleep(CACHE_TTL + 0.5)
        monkeypatch.setattr(registry, "set_alias", recorded)
        gate(policy, v2)
        served = _first_answer_from(endpoint, v2, 30)
        print(f"\nalias write -> first answer from version {v2}: {served - moved[0]:.3f} s "
              f"(the endpoint polls every 60 s)")
        assert endpoint.post(split_payload()).json()["predictions"] == \
            pytest.approx(expected("b"))
        version = endpoint.get("/version").json()
        events = version["events"]
        assert events["swaps_by_trigger"]["webhook"] == 1, events
        assert events["last_event"]["alias"] == "Production"
        assert secret not in endpoint.log() + str(version) + endpoint.get("/metrics").text
    _delete_webhooks(client, endpoint.url)


def test_with_the_webhook_disabled_polling_still_converges(tracking_uri, client, model_name,
                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("PROMOTE_WEBHOOK_SECRET", secrets.token_urlsafe(24))
    v1, v2 = log_version(model_name, "a", score=1.0), log_version(model_name, "b", score=2.0)
    policy = serve_policy(tmp_path, model_name)
    gate(policy, v1)
    with serving(tracking_uri, model_name, "--poll-interval", "1") as endpoint:
        assert run(["webhooks", "ensure", f"{endpoint.url}/hooks/mlflow"]) == 0
        for hook in _webhooks(client, endpoint.url):
            client.update_webhook(hook.webhook_id, status="DISABLED")  # its deliveries: lost
        time.sleep(CACHE_TTL + 0.5)
        gate(policy, v2)
        _first_answer_from(endpoint, v2, 30)
        events = endpoint.get("/version").json()["events"]
        assert events["swaps_by_trigger"] == {"start": 1, "poll": 1, "webhook": 0}, events
        assert events["last_event"] is None
        _wait_until(lambda: endpoint.get("/health").status_code == 200, 10)
    _delete_webhooks(client, endpoint.url)


def _webhooks(client, url: str) -> list:
    return [h for h in client.list_webhooks(max_results=1000)
            if h.url == f"{url}/hooks/mlflow"]


def _delete_webhooks(client, url: str) -> None:
    """Other tests share the server: a webhook to an endpoint that is gone would hold one of its
    delivery threads on every alias write."""
    for hook in _webhooks(client, url):
        client.delete_webhook(hook.webhook_id)
