"""The per-model lease in the registry: one Promote writer of a model at a time."""

from __future__ import annotations

import time

import pytest
from helpers import add_version, aliases, snapshot, write_policy

from promotion.cli import run
from promotion.errors import ExitCode
from promotion.registry import lease
from promotion.registry.client import connect

pytestmark = pytest.mark.mlflow


def _held_elsewhere(client, model: str, *, expires_in_s: float) -> None:
    """A lease as another host's Promote holds it (its process cannot be checked from here)."""
    client.create_registered_model(lease.lease_name(model), tags={
        lease.TAG_MODEL: model, lease.TAG_HOLDER: "alice@laptop pid 4242",
        lease.TAG_TOKEN: "elsewhere-token",
        lease.TAG_EXPIRES: str(int((time.time() + expires_in_s) * 1000)),
        lease.TAG_ACQUIRED: "2026-12-01T00:00:00.000Z", lease.TAG_PROCESS: "laptop|x|y|4242",
        lease.TAG_PURPOSE: "gate of @Production"})


@pytest.fixture
def production(client, model_name, tmp_path):
    v1 = add_version(client, model_name, {"rmse": 0.5})
    client.set_registered_model_alias(model_name, "Production", v1)
    add_version(client, model_name, {"rmse": 0.4})
    return write_policy(tmp_path / "p.yaml", model_name)


def test_a_held_lease_stops_a_gate_within_the_bound_having_written_nothing(
        tracking_uri, client, model_name, production, monkeypatch, capsys):
    _held_elsewhere(client, model_name, expires_in_s=600)
    monkeypatch.setenv("PROMOTE_LEASE_WAIT_S", "1")
    before = snapshot(client, model_name)
    assert run(["gate", str(production)]) == ExitCode.REGISTRY
    err = capsys.readouterr().err
    assert err.startswith("@Production still on version 1; nothing moved: "), err
    assert "being changed by alice@laptop pid 4242 (gate of @Production)" in err
    assert snapshot(client, model_name) == before

    assert run(["status", model_name]) == 0
    assert "LEASE held by alice@laptop pid 4242" in capsys.readouterr().out


def test_an_expired_lease_is_taken_over(tracking_uri, client, model_name, production, capsys):
    _held_elsewhere(client, model_name, expires_in_s=-1)
    assert run(["gate", str(production)]) == 0
    assert aliases(client, model_name)["Production"] == "2"
    assert lease.read_lease(client, model_name) is None  # taken over, then released
    assert not client.search_registered_models(f"name LIKE '{lease.lease_name(model_name)}%'")


def test_acquire_then_release(tracking_uri, model_name):
    client = connect(tracking_uri)
    held = lease.acquire(client, model_name, purpose="test")
    info = lease.read_lease(client, model_name)
    assert info is not None and info.token == held.token and lease.is_live(info)
    assert info.model == model_name and info.purpose == "test"
    lease.release(client, held)
    assert lease.read_lease(client, model_name) is None
