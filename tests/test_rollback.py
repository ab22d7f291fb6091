"""`promote rollback` against the real MLflow test server."""

from __future__ import annotations

import json

import pytest
from helpers import add_version, aliases, decision_tag, rmse_policy, snapshot

from promotion.cli import run
from promotion.engine import records as record
from promotion.errors import ConflictError, ExitCode
from promotion.gate import apply_rollback, plan_rollback, run_gate
from promotion.registry.client import connect

pytestmark = pytest.mark.mlflow


@pytest.fixture
def promoted_twice(tracking_uri, client, model_name):
    """v1 promoted, then v2 promoted over it: Production=2, Production-previous=1."""
    add_version(client, model_name, {"rmse": 0.5})
    assert run_gate(connect(None), rmse_policy(model_name)).outcome == "promoted"
    add_version(client, model_name, {"rmse": 0.4})
    assert run_gate(connect(None), rmse_policy(model_name)).outcome == "promoted"
    assert aliases(client, model_name) == {"Production": "2", "Production-previous": "1"}


def rollback(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["rollback", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_rollback_then_rollback_of_the_rollback(promoted_twice, client, model_name, capsys):
    code, out, _ = rollback(capsys, model_name)
    assert code == 0
    assert "@Production -> version 1; @Production-previous -> version 2" in out
    assert aliases(client, model_name) == {"Production": "1", "Production-previous": "2"}
    assert decision_tag(client, model_name, "1") == "restored"
    assert decision_tag(client, model_name, "2") == "rolled_back"
    run_id = client.get_model_version(model_name, "1").tags[record.RECORD_RUN]
    tags = client.get_run(run_id).data.tags
    assert (tags[record.KIND], tags[record.OUTCOME]) == ("rollback", "rollback")
    assert (tags[record.CANDIDATE], tags[record.COMPARED_TO]) == ("1", "2")

    code, out, _ = rollback(capsys, model_name, "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["restored_version"], doc["displaced_version"]) == ("2", "1")
    assert aliases(client, model_name) == {"Production": "2", "Production-previous": "1"}
    assert decision_tag(client, model_name, "2") == "restored"
    assert decision_tag(client, model_name, "1") == "rolled_back"


def test_rollback_dry_run_writes_nothing(promoted_twice, client, model_name, capsys):
    before = snapshot(client, model_name)
    code, out, _ = rollback(capsys, model_name, "--dry-run")
    assert code == 0
    assert out.startswith("DRY RUN: would move @Production -> version 1")
    assert snapshot(client, model_name) == before


def test_alias_moved_after_the_plan_is_a_conflict(promoted_twice, tracking_uri, client,
                                                  model_name):
    planned = plan_rollback(connect(tracking_uri), model_name)
    assert (planned.restored_version, planned.displaced_version) == ("1", "2")
    # Another writer moves the alias between the rollback's read and its writes.
    other = add_version(client, model_name, {"rmse": 0.3})
    client.set_registered_model_alias(model_name, "Production", other)
    before = snapshot(client, model_name)
    with pytest.raises(ConflictError) as raised:
        apply_rollback(connect(tracking_uri), planned)
    assert raised.value.exit_code == ExitCode.REGISTRY
    assert "moved while rolling back" in str(raised.value)
    assert "nothing was moved" in str(raised.value)
    after = snapshot(client, model_name)
    # Neither alias nor any version tag was written; only the record of the attempt was added.
    assert (after["aliases"], after["versions"]) == (before["aliases"], before["versions"])
    assert aliases(client, model_name) == {"Production": other, "Production-previous": "1"}
    rollbacks = list(set(after["decisions"]) - set(before["decisions"]))
    assert len(rollbacks) == 1
    tags = dict(rollbacks[0][2])
    assert (tags[record.KIND], tags[record.OUTCOME]) == ("rollback", "conflict")


def test_nothing_to_roll_back_to_is_invalid_input(tracking_uri, client, model_name, capsys):
    add_version(client, model_name, {"rmse": 0.5})
    first = run_gate(connect(None), rmse_policy(model_name))
    assert first.outcome == "promoted"  # first: no -previous
    before = snapshot(client, model_name)
    code, out, err = rollback(capsys, model_name)
    assert code == ExitCode.INVALID_INPUT
    assert "nothing to roll back to" in err and "@Production-previous" in err and out == ""
    assert snapshot(client, model_name) == before


def test_rollback_of_another_alias(tracking_uri, client, model_name, capsys):
    for rmse in (0.5, 0.4):
        add_version(client, model_name, {"rmse": rmse})
    policy = rmse_policy(model_name, alias="Staging")
    run_gate(connect(None), policy, candidate=None)
    add_version(client, model_name, {"rmse": 0.3})
    run_gate(connect(None), policy)
    assert aliases(client, model_name) == {"Staging": "3", "Staging-previous": "2"}
    code, _, _ = rollback(capsys, model_name, "--alias", "Staging")
    assert code == 0
    assert aliases(client, model_name) == {"Staging": "2", "Staging-previous": "3"}


def test_rollback_of_unknown_model_is_invalid_input(tracking_uri, model_name, capsys):
    code, _, err = rollback(capsys, model_name)
    assert code == ExitCode.INVALID_INPUT
    assert f"unknown model '{model_name}'" in err
