"""`promote status` and `promote history` against the real MLflow test server."""

from __future__ import annotations

import json

import pytest
from helpers import add_version, ensure_model, rmse_policy

from promotion.cli import run
from promotion.engine import records as record
from promotion.errors import ExitCode
from promotion.gate import run_gate
from promotion.registry.client import connect

pytestmark = pytest.mark.mlflow


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def three_decisions(tracking_uri, client, model_name, monkeypatch):
    """v1 promoted (locally), v2 promoted (from GitHub Actions), v3 rejected."""
    add_version(client, model_name, {"rmse": 0.5})
    run_gate(connect(None), rmse_policy(model_name))
    add_version(client, model_name, {"rmse": 0.4})
    with monkeypatch.context() as m:
        for k, v in {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octocat",
                     "GITHUB_EVENT_NAME": "workflow_dispatch"}.items():
            m.setenv(k, v)
        run_gate(connect(None), rmse_policy(model_name))
    add_version(client, model_name, {"rmse": 0.41})
    run_gate(connect(None), rmse_policy(model_name))


def test_history_newest_first_with_reasons_and_trigger(three_decisions, model_name, capsys):
    code, out, _ = cli(capsys, "history", model_name, "--json")
    assert code == 0
    decisions = json.loads(out)["decisions"]
    assert [(d["candidate_version"], d["compared_to"], d["outcome"]) for d in decisions] == [
        ("3", "2", "rejected"), ("2", "1", "promoted"), ("1", None, "promoted")]
    assert decisions[0]["reason"].startswith("rmse min_improvement: 0.41 > 0.396")
    assert decisions[1]["triggered_by"] == "octocat via GitHub Actions (workflow_dispatch)"
    assert decisions[2]["triggered_by"].endswith("(command line)")
    assert all(d["decided_at"].endswith("Z") and d["record_run_id"] for d in decisions)
    assert decisions[0]["decided_at"] > decisions[1]["decided_at"] > decisions[2]["decided_at"]

    code, out, _ = cli(capsys, "history", model_name, "--limit", "1")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("WHEN") and "rejected" in lines[1]


def test_status_shows_aliases_and_each_versions_last_decision(three_decisions, model_name,
                                                              capsys):
    code, out, _ = cli(capsys, "status", model_name, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["aliases"] == {"Production": "2", "Production-previous": "1"}
    assert doc["latest_version"] == "3"
    rows = {v["version"]: v for v in doc["versions"]}
    assert set(rows) == {"1", "2"}  # aliased (and pending) versions
    assert (rows["2"]["decision"], rows["2"]["compared_to"]) == ("promoted", "1")
    assert rows["2"]["aliases"] == ["Production"]

    code, out, _ = cli(capsys, "status", model_name)
    assert code == 0
    assert "@Production-previous  1" in out and "PENDING" not in out


def test_status_reports_a_pending_decision(tracking_uri, client, model_name, capsys):
    v1 = add_version(client, model_name, {"rmse": 0.5})
    client.set_registered_model_alias(model_name, "Production", v1)
    v2 = add_version(client, model_name, {"rmse": 0.4},
                     tags={record.DECISION: "pending", record.ALIAS: "Production"})
    code, out, _ = cli(capsys, "status", model_name, "--json")
    assert code == 0
    rows = {v["version"]: v for v in json.loads(out)["versions"]}
    assert rows[v2]["decision"] == "pending"
    assert "interrupted before @Production moved" in rows[v2]["note"]


def test_history_and_status_of_a_model_without_decisions(tracking_uri, client, model_name,
                                                         capsys):
    ensure_model(client, model_name)
    code, out, _ = cli(capsys, "history", model_name)
    assert code == 0 and out.strip() == f"no decisions recorded for model {model_name}"
    code, out, _ = cli(capsys, "status", model_name)
    assert code == 0 and "no aliases" in out


@pytest.mark.parametrize("command", ["status", "history"])
def test_unknown_model_is_invalid_input(tracking_uri, model_name, capsys, command):
    code, _, err = cli(capsys, command, model_name)
    assert code == ExitCode.INVALID_INPUT
    assert f"unknown model '{model_name}'" in err


def test_history_limit_must_be_positive(tracking_uri, model_name, capsys):
    code, _, err = cli(capsys, "history", model_name, "--limit", "0")
    assert code == ExitCode.INVALID_INPUT and "--limit" in err


def test_history_of_a_model_with_both_quotes(tracking_uri, client, model_name, capsys):
    model = f"it's \"{model_name}\""
    add_version(client, model, {"rmse": 0.5})
    run_gate(connect(None), rmse_policy(model))
    code, out, _ = cli(capsys, "history", model, "--json")
    assert code == 0
    assert [d["outcome"] for d in json.loads(out)["decisions"]] == ["promoted"]
    code, out, _ = cli(capsys, "status", model, "--json")
    assert json.loads(out)["aliases"] == {"Production": "1"}
