"""`promote gate` against the real MLflow test server: every outcome, every fail-closed path."""

from __future__ import annotations

import json
import math

import pytest
from helpers import (
    add_version,
    aliases,
    decision_tag,
    ensure_model,
    rmse_policy,
    snapshot,
    write_policy,
)

from promotion import registry
from promotion.cli import run
from promotion.engine import records as record
from promotion.errors import ExitCode
from promotion.gate import run_gate
from promotion.policy.model import Candidate, Margin, MetricRule
from promotion.registry.client import connect

pytestmark = pytest.mark.mlflow


@pytest.fixture
def gate(tracking_uri, capsys, tmp_path):
    """Run `promote gate` in-process on a policy file; returns (exit code, stdout, stderr)."""
    def _gate(model: str, *args: str, body: dict | None = None):
        path = write_policy(tmp_path / "policy.yaml", model, body)
        code = run(["gate", str(path), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return _gate


def gate_json(gate, model, *args, body=None) -> tuple[int, dict]:
    code, out, err = gate(model, "--json", *args, body=body)
    assert out.strip(), err
    return code, json.loads(out)


def rule(document: dict, metric: str, kind: str) -> dict:
    found = [r for r in document["rules"] if r["metric"] == metric and r["kind"] == kind]
    assert len(found) == 1, document["rules"]
    return found[0]


# -- outcomes --------------------------------------------------------------------------------


def test_first_version_promoted_and_recorded(gate, client, model_name):
    add_version(client, model_name, {"rmse": 0.5})
    code, out, _ = gate(model_name)
    assert code == ExitCode.OK
    assert "PROMOTED: @Production -> version 1" in out
    assert aliases(client, model_name) == {"Production": "1"}  # no -previous: nothing displaced
    tags = client.get_model_version(model_name, "1").tags
    assert tags[record.DECISION] == "promoted"
    assert tags[record.COMPARED_TO] == "none"
    assert tags[record.POLICY].endswith("policy.yaml") and len(tags[record.POLICY_SHA256]) == 64
    assert tags[record.DECIDED_AT].endswith("Z")
    # The record run holds the full report and is findable by query.
    run_id = tags[record.RECORD_RUN]
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.tags[record.OUTCOME] == "promoted"
    assert stored.data.tags[record.MODEL] == model_name
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.json", "report.md"}
    with open(client.download_artifacts(run_id, "report.json")) as f:
        report = json.load(f)
    assert report["outcome"] == "promoted" and report["record_run_id"] == run_id


def test_first_version_rejected_when_policy_says_so(gate, client, model_name):
    add_version(client, model_name, {"rmse": 0.5})
    code, doc = gate_json(gate, model_name, body={"when_no_production": "reject"})
    assert code == ExitCode.REJECTED
    assert doc["outcome"] == "rejected" and doc["production"] is None
    assert rule(doc, "", "no_production")["passed"] is False
    assert aliases(client, model_name) == {}
    assert decision_tag(client, model_name, "1") == "rejected"


def test_better_candidate_promoted_and_previous_kept(gate, client, model_name):
    add_version(client, model_name, {"rmse": 0.5})
    assert gate(model_name)[0] == 0
    add_version(client, model_name, {"rmse": 0.4})
    code, doc = gate_json(gate, model_name)
    assert code == 0 and doc["outcome"] == "promoted" and doc["applied"] is True
    assert (doc["candidate"]["version"], doc["production"]["version"]) == ("2", "1")
    assert aliases(client, model_name) == {"Production": "2", "Production-previous": "1"}
    assert decision_tag(client, model_name, "2") == "promoted"
    assert client.get_model_version(model_name, "2").tags[record.COMPARED_TO] == "1"


@pytest.fixture
def production(client, model_name):
    """v1 holds Production (set directly, as an existing registry would have it)."""
    v = add_version(client, model_name, {"rmse": 0.5, "r2": 0.80})
    client.set_registered_model_alias(model_name, "Production", v)
    return v


def test_worse_candidate_rejected_and_nothing_moves(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.52})
    before = aliases(client, model_name)
    code, out, _ = gate(model_name)
    assert code == ExitCode.REJECTED
    assert "REJECTED: @Production stays on version 1" in out
    assert "rmse min_improvement" in out and "FAIL" in out
    assert aliases(client, model_name) == before
    tags = client.get_model_version(model_name, "2").tags
    assert tags[record.DECISION] == "rejected"
    assert tags[record.REASON].startswith("rmse min_improvement: 0.52 > 0.495")


def test_better_but_under_absolute_floor_rejected(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.45, "r2": 0.60})
    body = {"metrics": {"rmse": {"goal": "minimize", "min_improvement": "1%"},
                        "r2": {"goal": "maximize", "min": 0.7}}}
    code, doc = gate_json(gate, model_name, body=body)
    assert code == ExitCode.REJECTED
    assert rule(doc, "rmse", "min_improvement")["passed"] is True
    floor = rule(doc, "r2", "min")
    assert floor["passed"] is False and floor["bound"] == 0.7 and floor["candidate"] == 0.6


def test_inside_non_inferiority_margin_promoted(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.5, "r2": 0.79})  # 0.01 worse, margin 0.02
    body = {"metrics": {"r2": {"goal": "maximize", "max_regression": 0.02}}}
    code, doc = gate_json(gate, model_name, body=body)
    assert code == 0 and doc["outcome"] == "promoted"
    assert rule(doc, "r2", "max_regression")["bound"] == pytest.approx(0.78)


def test_percent_and_absolute_margins(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.497})  # better by 0.003: 0.6 %
    percent = {"metrics": {"rmse": {"goal": "minimize", "min_improvement": "1%"}}}
    absolute = {"metrics": {"rmse": {"goal": "minimize", "min_improvement": 0.001}}}
    code, doc = gate_json(gate, model_name, body=percent)
    assert code == ExitCode.REJECTED
    assert rule(doc, "rmse", "min_improvement")["bound"] == pytest.approx(0.495)
    code, doc = gate_json(gate, model_name, body=absolute)
    assert code == 0
    assert rule(doc, "rmse", "min_improvement")["bound"] == pytest.approx(0.499)


def test_metric_missing_on_candidate(gate, client, model_name, production):
    add_version(client, model_name, {"mae": 0.1})
    code, doc = gate_json(gate, model_name)
    assert code == ExitCode.REJECTED
    assert rule(doc, "rmse", "max")["reason"] == "metric not logged on the candidate run"


def test_metric_missing_on_production(gate, client, model_name):
    v1 = add_version(client, model_name, {"mae": 0.1})
    client.set_registered_model_alias(model_name, "Production", v1)
    add_version(client, model_name, {"rmse": 0.4})
    code, doc = gate_json(gate, model_name)
    assert code == ExitCode.REJECTED
    assert rule(doc, "rmse", "max")["passed"] is True
    assert rule(doc, "rmse", "min_improvement")["reason"] == (
        "metric not logged on the Production run: cannot compare")
    assert aliases(client, model_name) == {"Production": "1"}


def test_nan_metric_fails_closed(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": math.nan})
    code, doc = gate_json(gate, model_name)
    assert code == ExitCode.REJECTED
    r = rule(doc, "rmse", "max")
    assert r["candidate"] == "nan" and "not finite" in r["reason"]  # JSON has no NaN


def test_version_without_run_fails_closed(gate, client, model_name, production):
    add_version(client, model_name, run=False)
    code, doc = gate_json(gate, model_name)
    assert code == ExitCode.REJECTED
    assert doc["candidate"]["run_id"] is None
    assert rule(doc, "rmse", "max")["reason"] == "candidate version 2 has no run"


def test_required_tag_missing(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.4}, tags={"data_validated": "false"})
    body = {"require_tags": {"data_validated": "true"}}
    code, doc = gate_json(gate, model_name, body=body)
    assert code == ExitCode.REJECTED
    assert rule(doc, "data_validated", "tag")["reason"] == "tag is 'false', required 'true'"


def test_candidate_already_production(gate, client, model_name, production):
    code, doc = gate_json(gate, model_name)  # latest = v1 = Production
    assert code == 0 and doc["outcome"] == "already" and doc["applied"] is False
    assert aliases(client, model_name) == {"Production": "1"}
    # The version's standing record is left alone; the gate run itself is in the history.
    assert decision_tag(client, model_name, "1") is None
    assert doc["record_run_id"]


def test_challenger_alias_selection(gate, client, model_name, production):
    challenger = add_version(client, model_name, {"rmse": 0.4})
    add_version(client, model_name, {"rmse": 0.9})  # a newer, worse version: not the candidate
    client.set_registered_model_alias(model_name, "challenger", challenger)
    code, doc = gate_json(gate, model_name, "--candidate", "@challenger")
    assert code == 0 and doc["candidate"]["version"] == challenger
    assert aliases(client, model_name)["Production"] == challenger


def test_latest_is_the_highest_number_not_the_last_updated(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.4})
    client.update_model_version(model_name, "1", description="touched")  # v1 updated last
    first = client.search_model_versions(f"name = '{model_name}'")[0]
    assert first.version == "1"  # the trap: MLflow's default order
    code, doc = gate_json(gate, model_name, "--dry-run")
    assert code == 0 and doc["candidate"]["version"] == "2"


def test_explicit_version_selection(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.4})
    add_version(client, model_name, {"rmse": 0.3})
    code, doc = gate_json(gate, model_name, "--candidate", "2")
    assert code == 0 and doc["candidate"]["version"] == "2"


@pytest.mark.parametrize("name", ["it's \"quoted\" model", "model with  spaces", "o'brien"])
def test_quotes_and_spaces_in_model_name(gate, client, model_name, name):
    model = model_name if name in model_name else f"{name} {model_name}"
    add_version(client, model, {"rmse": 0.5})
    add_version(client, model, {"rmse": 0.4})
    add_version(client, model, {"rmse": 0.55})
    client.set_registered_model_alias(model, "Production", "1")
    client.update_model_version(model, "1", description="touched")
    code, doc = gate_json(gate, model)
    assert code == ExitCode.REJECTED and doc["candidate"]["version"] == "3"  # latest, by number
    code, doc = gate_json(gate, model, "--candidate", "2")
    assert code == 0 and aliases(client, model) == {"Production": "2", "Production-previous": "1"}
    history = run(["history", model, "--json"])
    assert history == 0


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_writes_nothing(gate, client, model_name, production):
    add_version(client, model_name, {"rmse": 0.4})
    add_version(client, model_name, {"rmse": 0.3}, tags={"note": "x"})
    # A previous real decision, so the decisions experiment has runs of this model to compare.
    assert gate(model_name, "--candidate", "2")[0] == 0
    before = snapshot(client, model_name)
    code, doc = gate_json(gate, model_name, "--dry-run")
    assert code == 0 and doc["dry_run"] is True and doc["outcome"] == "promoted"
    assert doc["applied"] is False and doc["record_run_id"] is None
    code, doc = gate_json(gate, model_name, "--dry-run", body={"metrics": {
        "rmse": {"goal": "minimize", "max": 0.1}}})
    assert code == ExitCode.REJECTED
    code, out, _ = gate(model_name, "--dry-run")
    assert "DRY RUN: WOULD PROMOTE version 3 to @Production (nothing was written)" in out
    assert snapshot(client, model_name) == before


# -- invalid input, unreachable registry -----------------------------------------------------


def test_unknown_model_is_invalid_input(gate, client, model_name):
    code, _, err = gate(model_name)
    assert code == ExitCode.INVALID_INPUT
    assert f"unknown model '{model_name}'" in err


@pytest.mark.parametrize(("selector", "message"), [
    ("7", "has no version 7"), ("@challenger", "has no alias @challenger"),
    ("seven", "expected 'latest', a version number or '@<alias>'")])
def test_unknown_version_or_alias_is_invalid_input(gate, client, model_name, production,
                                                   selector, message):
    before = snapshot(client, model_name)
    code, out, err = gate(model_name, "--candidate", selector)
    assert code == ExitCode.INVALID_INPUT
    assert message in err and out == ""
    assert snapshot(client, model_name) == before


def test_model_without_versions_is_invalid_input(gate, client, model_name):
    ensure_model(client, model_name)
    code, _, err = gate(model_name)
    assert code == ExitCode.INVALID_INPUT and "has no versions" in err


def test_invalid_policy_is_invalid_input_and_touches_nothing(gate, client, model_name,
                                                             production):
    add_version(client, model_name, {"rmse": 0.4})
    before = snapshot(client, model_name)
    code, _, err = gate(model_name, body={"metrics": {"rmse": {"goal": "minimise"}}})
    assert code == ExitCode.INVALID_INPUT
    assert "policy.yaml:" in err and "metrics.rmse.goal" in err
    assert snapshot(client, model_name) == before


def test_unreachable_server_exits_3_and_writes_nothing(client, model_name, production, tmp_path,
                                                       capsys, monkeypatch):
    add_version(client, model_name, {"rmse": 0.4})
    before = snapshot(client, model_name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    path = write_policy(tmp_path / "policy.yaml", model_name)
    code = run(["--tracking-uri", "http://alice:s3cret@127.0.0.1:9", "gate", str(path)])
    out, err = capsys.readouterr()
    assert code == ExitCode.REGISTRY
    assert "127.0.0.1:9" in err and "s3cret" not in out + err
    assert snapshot(client, model_name) == before


# -- the write-ahead protocol ----------------------------------------------------------------


def test_alias_moved_while_deciding_is_a_conflict(gate, client, model_name, production,
                                                  monkeypatch):
    candidate = add_version(client, model_name, {"rmse": 0.4})
    other = add_version(client, model_name, {"rmse": 0.45})
    real_set_tags = registry.set_tags

    def another_writer_moves_the_alias(c, model, version, tags):
        real_set_tags(c, model, version, tags)
        if tags.get(record.DECISION) == "pending":  # right after the write-ahead marker
            client.set_registered_model_alias(model_name, "Production", other)

    monkeypatch.setattr(registry, "set_tags", another_writer_moves_the_alias)
    code, doc = gate_json(gate, model_name, "--candidate", candidate)
    assert code == ExitCode.REGISTRY
    assert doc["outcome"] == "conflict" and doc["conflict_version"] == other
    # Nothing moved by the gate: the other writer's alias stands, no -previous was written.
    assert aliases(client, model_name) == {"Production": other}
    tags = client.get_model_version(model_name, candidate).tags
    assert tags[record.DECISION] == "conflict"
    assert "moved from version 1 to version 3 while deciding" in tags[record.REASON]
    assert client.get_run(tags[record.RECORD_RUN]).data.tags[record.OUTCOME] == "conflict"


def test_interrupted_promotion_is_visible_then_resolved(client, model_name, production,
                                                        monkeypatch, capsys):
    candidate = add_version(client, model_name, {"rmse": 0.4})
    real_set_alias = registry.set_alias

    def crash_after_the_alias_moves(c, model, alias, version):
        real_set_alias(c, model, alias, version)
        if alias == "Production":
            raise RuntimeError("power cut")

    monkeypatch.setattr(registry, "set_alias", crash_after_the_alias_moves)
    with pytest.raises(RuntimeError):
        run_gate(connect(None), rmse_policy(model_name))
    monkeypatch.setattr(registry, "set_alias", real_set_alias)
    assert aliases(client, model_name)["Production"] == candidate
    assert decision_tag(client, model_name, candidate) == "pending"

    assert run(["status", model_name]) == 0
    out = capsys.readouterr().out
    assert f"PENDING version {candidate}: interrupted after @Production moved here" in out

    later = add_version(client, model_name, {"rmse": 0.45})  # the next gate, on a newer version
    result = run_gate(connect(None), rmse_policy(model_name))
    assert result.outcome == "rejected" and result.candidate_version == later
    assert result.resolved and "recorded as promoted" in result.resolved
    tags = client.get_model_version(model_name, candidate).tags
    assert tags[record.DECISION] == "promoted" and record.RESOLVED in tags
    assert client.get_run(tags[record.RECORD_RUN]).data.tags[record.OUTCOME] == "promoted"


def test_interrupted_before_the_alias_moved_is_redecided(client, model_name, production,
                                                         monkeypatch):
    candidate = add_version(client, model_name, {"rmse": 0.4})

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(registry, "set_alias", crash)
    with pytest.raises(RuntimeError):
        run_gate(connect(None), rmse_policy(model_name))
    monkeypatch.undo()
    assert aliases(client, model_name) == {"Production": production}
    assert decision_tag(client, model_name, candidate) == "pending"
    result = run_gate(connect(None), rmse_policy(model_name))
    assert result.outcome == "promoted"
    assert decision_tag(client, model_name, candidate) == "promoted"


def test_pending_for_another_alias_is_not_resolved_by_this_alias(client, model_name):
    # Left pending by an interrupted gate of @Staging; @Production was then set to it directly.
    held = add_version(client, model_name, {"rmse": 0.5},
                       tags={record.DECISION: "pending", record.ALIAS: "Staging"})
    client.set_registered_model_alias(model_name, "Production", held)
    later = add_version(client, model_name, {"rmse": 0.6})
    result = run_gate(connect(None), rmse_policy(model_name))
    assert result.outcome == "rejected" and result.candidate_version == later
    assert result.resolved is None
    tags = client.get_model_version(model_name, held).tags
    assert tags[record.DECISION] == "pending" and record.RESOLVED not in tags


# -- outputs ---------------------------------------------------------------------------------


def test_github_actions_summary_outputs_and_record(gate, client, model_name, production,
                                                   tmp_path, monkeypatch):
    add_version(client, model_name, {"rmse": 0.4})
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary),
           "GITHUB_OUTPUT": str(outputs), "GITHUB_SHA": "abc123", "GITHUB_ACTOR": "octocat",
           "GITHUB_EVENT_NAME": "push", "GITHUB_REPOSITORY": "acme/models",
           "GITHUB_RUN_ID": "42", "GITHUB_SERVER_URL": "https://github.com"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, _ = gate(model_name)
    assert code == 0
    assert "| rmse min_improvement |" in summary.read_text()
    parsed = _parse_outputs(outputs.read_text())
    assert parsed["decision"] == "promoted"
    assert (parsed["candidate_version"], parsed["production_version"]) == ("2", "1")
    tags = client.get_model_version(model_name, "2").tags
    assert tags[record.GITHUB_SHA] == "abc123" and tags[record.GITHUB_ACTOR] == "octocat"
    assert tags[record.GITHUB_EVENT] == "push"
    assert tags[record.GITHUB_RUN_URL] == "https://github.com/acme/models/actions/runs/42"


def _parse_outputs(text: str) -> dict[str, str]:
    values, lines = {}, iter(text.splitlines())
    for line in lines:
        name, delimiter = line.split("<<", 1)
        body = []
        for item in lines:
            if item == delimiter:
                break
            body.append(item)
        values[name] = "\n".join(body)
    return values


def test_credentials_never_reach_output_or_record(client, model_name, production, tmp_path,
                                                  capsys, mlflow_server):
    add_version(client, model_name, {"rmse": 0.4})
    path = write_policy(tmp_path / "policy.yaml", model_name)
    secret_uri = mlflow_server.replace("://", "://alice:s3cret@")
    code = run(["--tracking-uri", secret_uri, "gate", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["tracking_uri"].startswith("http://***@")
    assert "s3cret" not in out + err
    run_id = doc["record_run_id"]
    stored = client.get_run(run_id)
    for name in ("report.json", "report.md"):
        with open(client.download_artifacts(run_id, name)) as f:
            assert "s3cret" not in f.read()
    assert "s3cret" not in json.dumps(stored.data.tags)
    assert "s3cret" not in json.dumps(client.get_model_version(model_name, "2").tags)


def test_in_process_api_returns_a_result(client, model_name, production):
    add_version(client, model_name, {"rmse": 0.4})
    policy = rmse_policy(model_name, metrics=(
        MetricRule("rmse", "minimize", max_regression=Margin(0.0)),))
    result = run_gate(connect(None), policy, candidate=Candidate.parse("2"), dry_run=True)
    assert (result.return_code, result.outcome, result.applied) == (0, "promoted", False)
    assert (result.candidate_version, result.production_version) == ("2", "1")


# -- rendering, without a server -------------------------------------------------------------


def _result(cand_rmse: float, **kw):
    from promotion.engine.decision import decide
    from promotion.engine.facts import VersionFacts
    from promotion.gate import GateResult
    from promotion.registry.records import Trigger

    policy = rmse_policy("churn")
    cand = VersionFacts("churn", "2", "r2", {"rmse": cand_rmse})
    prod = VersionFacts("churn", "1", "r1", {"rmse": 0.5})
    values = dict(policy=policy, decision=decide(policy, cand, prod), candidate=cand,
                  production=prod, dry_run=False, decided_at="2026-01-01T00:00:00.000Z",
                  trigger=Trigger("alice@host", "command line"),
                  tracking_uri="http://***@mlflow.internal")
    values.update(kw)
    return GateResult(**values)


JSON_FIELDS = {"schema_version", "kind", "model", "alias", "previous_alias", "outcome",
               "return_code", "dry_run", "applied", "summary", "reasons", "candidate",
               "production", "conflict_version", "policy", "rules", "evaluation", "decided_at",
               "trigger", "tracking_uri", "record_run_id", "resolved", "record_complete",
               "missing", "moved_alias", "rollout"}
RULE_FIELDS = {"metric", "kind", "source", "passed", "inconclusive", "candidate", "production",
               "bound", "reason", "difference", "interval", "margin"}


def test_json_schema_is_stable_and_holds_no_nan():
    from promotion.report.decision import to_json_text

    doc = json.loads(to_json_text(_result(math.nan)))
    assert set(doc) == JSON_FIELDS and doc["schema_version"] == 1
    assert all(set(r) == RULE_FIELDS for r in doc["rules"])
    assert doc["outcome"] == "rejected" and doc["return_code"] == 1
    assert rule(doc, "rmse", "max")["candidate"] == "nan"


def test_table_lists_every_check_aligned():
    from promotion.report.decision import table

    text = table(_result(0.4, dry_run=True))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("CHECK"))
    row = next(line for line in lines if line.startswith("rmse min_improvement"))
    for column in ("CANDIDATE", "PRODUCTION", "BOUND", "RESULT", "REASON"):
        at = header.index(column)  # every cell starts where its column's title does
        assert row[at - 1] == " " and row[at] != " ", (column, header, row)
    assert row[header.index("RESULT"):].startswith("pass")
    assert "DRY RUN: WOULD PROMOTE version 2 to @Production (nothing was written)" in text
    assert "http://***@mlflow.internal" in text


def test_markdown_escapes_table_cells():
    from promotion.report.decision import markdown

    text = markdown(_result(0.6))
    assert "| rmse min_improvement | 0.6 | 0.5 | 0.495 | FAIL |" in text
    assert "**Why:**" in text


def test_github_outputs_are_multiline_safe():
    from promotion.report.github import output_lines

    values = {"decision": "rejected", "reason": "line one\nline two\nname<<EOF"}
    assert _parse_outputs(output_lines(values)) == values


def test_filter_literals_for_any_model_name():
    assert registry.quote("plain") == "'plain'"
    assert registry.quote("o'brien") == '"o\'brien"'
    assert registry.quote("it's \"x\"") is None
    assert registry.name_clause("it's \"x\"") == ("name LIKE 'it_s \"x\"'", False)
