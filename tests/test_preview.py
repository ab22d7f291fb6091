"""`promote policy preview`: replay two versions of a policy over a model's versions, read-only.

The pure replay and its renderings get fast unit tests; the command runs against the real MLflow
test server, on versions whose logged metrics make the expected decisions known in advance.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import pytest

from promotion.cli import run
from promotion.engine.decision import decide
from promotion.engine.facts import VersionFacts
from promotion.engine.preview import Preview as PreviewResult
from promotion.engine.preview import replay, replayable
from promotion.errors import ExitCode
from promotion.policy.load import parse_policy
from promotion.report.preview import render_markdown, render_text

POLICY = """\
model: {model}
alias: Production
metrics:
  rmse:
    goal: minimize
    max: {max}
    max_regression: {regression}
require_tags:
  data_validated: "true"
"""


def policy_text(model: str, *, max: float | str = 70, regression: str = "5%") -> str:
    return POLICY.format(model=model, max=max, regression=regression)


def policy(model: str = "m", **kwargs) -> object:
    return parse_policy(policy_text(model, **kwargs), "policies/m.yaml")


def facts(version: str, rmse: float, validated: str = "true") -> VersionFacts:
    return VersionFacts("m", version, run_id=f"run{version}", metrics={"rmse": rmse},
                        tags={"data_validated": validated})


# Production is v1 (rmse 50). Base allows a 5% regression (bound 52.5), head only 2% (bound 51).
VERSIONS = [facts("4", 60.0), facts("3", 49.0), facts("2", 52.0), facts("1", 50.0)]


# --------------------------------------------------------------------------------------------
# The replay and its renderings (no server)


def test_replay_reports_exactly_the_decisions_that_change():
    rows = replay(policy(regression="2%"), policy(regression="5%"), VERSIONS, VERSIONS[3],
                  VERSIONS[3])
    assert [(r.version, r.base.outcome, r.head.outcome, r.change) for r in rows] == [
        ("4", "rejected", "rejected", "same"),
        ("3", "promoted", "promoted", "same"),
        ("2", "promoted", "rejected", "changed"),
        ("1", "already", "already", "same"),
    ]
    assert "rmse max_regression" in rows[2].why and "52 > 51" in rows[2].why


def test_each_side_is_the_engine_s_own_decision():
    head, base = policy(regression="2%"), policy(regression="5%")
    rows = replay(head, base, VERSIONS, VERSIONS[3], VERSIONS[3])
    for row, version in zip(rows, VERSIONS, strict=True):
        assert row.head == decide(head, version, VERSIONS[3])
        assert row.base == decide(base, version, VERSIONS[3])


def test_without_a_base_every_decision_is_new():
    rows = replay(policy(), None, VERSIONS, VERSIONS[3], None)
    assert {r.change for r in rows} == {"new"} and all(r.base is None for r in rows)


def test_a_loosened_rule_explains_what_the_base_said():
    rows = replay(policy(regression="5%"), policy(regression="2%"), VERSIONS[2:3], VERSIONS[3],
                  VERSIONS[3])
    assert rows[0].change == "changed" and rows[0].why.startswith("was rejected: ")


def test_rules_that_need_re_scoring_are_left_out_and_named():
    text = textwrap.dedent("""\
        model: m
        evaluation: {data: "sklearn:load_diabetes", target: target}
        metrics:
          rmse: {goal: minimize, max: 70}
          mae: {goal: minimize, source: evaluation, max_regression: 2%}
        budgets:
          latency_p95_ms: {max: 25}
        """)
    full = parse_policy(text, "policies/m.yaml")
    kept, dropped = replayable(full)
    assert [r.name for r in kept.metrics] == ["rmse"] and kept.budgets == ()
    assert kept.evaluation is None
    assert dropped == ("mae (source: evaluation)", "latency_p95_ms (budget)")
    assert replayable(policy()) == (policy(), ())


def _result(**overrides) -> PreviewResult:
    rows = replay(policy(regression="2%"), policy(regression="5%"), VERSIONS, VERSIONS[3],
                  VERSIONS[3])
    fields = dict(head_path="policies/m.yaml", base_label="main:policies/m.yaml",
                  base_missing=False, model="m", alias="Production", production_version="1",
                  last=20, rows=rows)
    fields.update(overrides)
    return PreviewResult(**fields)


def test_markdown_is_a_table_with_the_change_in_bold():
    text = render_markdown(_result())
    assert "| version | base | head | change | why |" in text
    assert "| 2 | promoted | **rejected** | **changed** |" in text
    assert "**1 of 4 decisions change**" in text
    assert "`main:policies/m.yaml`" in text


def test_markdown_cells_cannot_break_the_table():
    row = _result().rows[2]
    odd = replace(row, head=replace(row.head, reasons=("a | b\nc",)))
    text = render_markdown(_result(rows=(odd,)))
    line = next(li for li in text.splitlines() if li.startswith("| 2 |"))
    assert "a \\| b c" in line and line.count(" | ") == 4  # five cells, none split


def test_text_names_a_new_policy():
    text = render_text(_result(base_missing=True, base_label="policies/new.yaml"))
    assert "base   none (a new policy)" in text


# --------------------------------------------------------------------------------------------
# The command against the real server


def add_version(client, model: str, experiment_id: str, rmse: float,
                validated: str = "true") -> str:
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "rmse", rmse)
    client.set_terminated(run_id)
    mv = client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id,
                                     tags={"data_validated": validated})
    return str(mv.version)


@pytest.fixture
def registry(client, model_name):
    """Versions 1-4 with rmse 50, 52, 49, 60; Production on version 1."""
    experiment_id = client.create_experiment(f"preview-{model_name}")
    client.create_registered_model(model_name)
    for rmse in (50.0, 52.0, 49.0, 60.0):
        add_version(client, model_name, experiment_id, rmse)
    client.set_registered_model_alias(model_name, "Production", "1")
    return experiment_id


def snapshot(client, model: str) -> dict:
    """Everything a preview could change: aliases, and each version's tags and update time."""
    versions = client.search_model_versions(f"name = '{model}'")
    return {"aliases": dict(client.get_registered_model(model).aliases),
            "versions": sorted((mv.version, dict(mv.tags), mv.last_updated_timestamp)
                               for mv in versions)}


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def preview(capsys, *args: str) -> tuple[int, str, str]:
    """Run `promote policy preview ARGS`: exit code, stdout, stderr."""
    capsys.readouterr()  # drop what the set-up printed (MLflow prints links to new runs)
    code = run(["policy", "preview", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.mlflow
def test_preview_reports_the_decisions_an_edit_changes(client, model_name, registry, tmp_path,
                                                       capsys):
    base = write(tmp_path / "base" / "p.yaml", policy_text(model_name, regression="5%"))
    head = write(tmp_path / "policies" / "p.yaml", policy_text(model_name, regression="2%"))
    before = snapshot(client, model_name)

    code, out, _ = preview(capsys, "--base", base, "--head", head, "--format", "json")
    assert code == ExitCode.OK
    report = json.loads(out)

    assert report["production_version"] == "1" and report["model"] == model_name
    assert [(r["version"], r["base"]["outcome"], r["head"]["outcome"]) for r in report["rows"]] \
        == [("4", "rejected", "rejected"), ("3", "promoted", "promoted"),
            ("2", "promoted", "rejected"), ("1", "already", "already")]
    assert report["changed"] == 1
    assert snapshot(client, model_name) == before  # read-only: nothing moved, nothing tagged


@pytest.mark.mlflow
def test_last_n_is_by_version_number_not_last_update(client, model_name, registry, tmp_path,
                                                     capsys):
    # Make version 1 the most recently updated: MLflow's default order would put it first.
    client.set_model_version_tag(model_name, "1", "note", "touched last")
    head = write(tmp_path / "p.yaml", policy_text(model_name))

    code, out, _ = preview(capsys, "--base", head, "--head", head, "--last", "2",
                           "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert [r["version"] for r in report["rows"]] == ["4", "3"]
    assert report["changed"] == 0


@pytest.mark.mlflow
def test_a_new_policy_has_no_previous_policy(client, model_name, registry, tmp_path, capsys):
    head = write(tmp_path / "p.yaml", policy_text(model_name))
    missing = str(tmp_path / "not-on-main.yaml")

    code, out, _ = preview(capsys, "--base", missing, "--head", head, "--format", "markdown")
    assert code == 0
    assert "Base policy: none: a new policy file" in out
    assert f"no previous policy: {missing} does not exist" in out
    assert "**4 new decisions (no previous policy)**" in out


@pytest.mark.mlflow
def test_the_production_version_outside_the_window_is_still_the_reference(
        client, model_name, registry, tmp_path, capsys):
    head = write(tmp_path / "p.yaml", policy_text(model_name, regression="2%"))
    code, out, _ = preview(capsys, "--base", head, "--head", head, "--last", "1",
                           "--format", "json")
    assert code == 0
    row = json.loads(out)["rows"][0]
    # Version 4 (rmse 60) against Production version 1 (rmse 50), not against nothing.
    assert row["version"] == "4" and "Production 50" in row["head"]["reasons"][0]


@pytest.mark.mlflow
def test_an_unregistered_model_is_said_not_an_error(tracking_uri, model_name, tmp_path, capsys):
    head = write(tmp_path / "p.yaml", policy_text(model_name))
    code, out, _ = preview(capsys, "--base", head, "--head", head)
    assert code == ExitCode.OK
    assert f"model {model_name!r} is not registered yet" in out


@pytest.mark.mlflow
@pytest.mark.parametrize("prefix", ["it's", 'it\'s "quoted"'])
def test_model_names_with_quotes(client, tracking_uri, tmp_path, capsys, model_name, prefix):
    """' is quoted with ", and a name holding both quotes (no filter can say it) counts down."""
    name = f"{prefix}-{model_name}"
    experiment_id = client.create_experiment(f"preview-{model_name}")
    client.create_registered_model(name)
    for rmse in (50.0, 51.0, 52.0):
        add_version(client, name, experiment_id, rmse)
    client.delete_model_version(name, "2")
    yaml_name = "'" + name.replace("'", "''") + "'"
    head = write(tmp_path / "p.yaml", policy_text(yaml_name))
    code, out, _ = preview(capsys, "--base", head, "--head", head, "--format", "json")
    assert code == 0
    assert [r["version"] for r in json.loads(out)["rows"]] == ["3", "1"]


@pytest.mark.mlflow
@pytest.mark.parametrize("side", ["head", "base"])
def test_an_invalid_policy_is_exit_2_and_names_file_line_key(client, model_name, registry,
                                                             tmp_path, capsys, side):
    good = write(tmp_path / "good.yaml", policy_text(model_name))
    bad = write(tmp_path / "bad.yaml", policy_text(model_name, max="seventy"))
    args = {"head": good, "base": good, side: bad}
    before = snapshot(client, model_name)

    code, _, err = preview(capsys, "--base", args["base"], "--head", args["head"],
                           "--base-label", "main:policies/p.yaml")
    assert code == ExitCode.INVALID_INPUT
    name = bad if side == "head" else "main:policies/p.yaml"
    assert f"{name}:6:" in err and "metrics.rmse.max" in err
    assert snapshot(client, model_name) == before


@pytest.mark.parametrize("args", [["--last", "0"], ["--last", "x"], ["--format", "html"]])
def test_bad_options_are_exit_2(tmp_path, capsys, args):
    head = write(tmp_path / "p.yaml", policy_text("m"))
    assert preview(capsys, "--base", head, "--head", head, *args)[0] == ExitCode.INVALID_INPUT


def test_an_unreachable_registry_is_exit_3_not_an_unknown_model(tmp_path, capsys):
    # conftest points MLFLOW_TRACKING_URI at a closed loopback port for tests without a server.
    head = write(tmp_path / "p.yaml", policy_text("m"))
    code, _, err = preview(capsys, "--base", head, "--head", head)
    assert code == ExitCode.REGISTRY
    assert "not registered" not in err and "unknown model" not in err


@pytest.mark.mlflow
def test_rules_that_need_re_scoring_are_named_not_replayed(client, model_name, registry, tmp_path,
                                                          capsys):
    text = policy_text(model_name) + textwrap.dedent("""\
        evaluation: {data: "sklearn:load_diabetes", target: target}
        budgets:
          size_mb: {max: 1}
        """)
    head = write(tmp_path / "p.yaml", text.replace(
        "metrics:\n", "metrics:\n  mae: {goal: minimize, source: evaluation, max: 1}\n"))
    code, out, _ = preview(capsys, "--base", head, "--head", head, "--format", "markdown")
    assert code == 0
    assert "> Not replayed (they need re-scoring; the gate applies them): mae (source: " \
           "evaluation), size_mb (budget)" in out
    # Decided on the logged rules alone: version 2 (rmse 52 vs 50, 5% allowed) passes.
    assert "| 2 | promoted | promoted | same |" in out


@pytest.mark.mlflow
def test_a_policy_moved_to_another_model_has_no_previous_decisions(client, model_name, registry,
                                                                   tmp_path, capsys):
    base = write(tmp_path / "base.yaml", policy_text(f"{model_name}-old"))
    head = write(tmp_path / "head.yaml", policy_text(model_name))
    code, out, _ = preview(capsys, "--base", base, "--head", head, "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["changed"] == 4
    assert {r["change"] for r in report["rows"]} == {"new"}
    assert any("moves the policy from model" in note for note in report["notes"])
