"""The composite action (action.yml), run by tests/workflow_runner.py from a small workflow that
uses it, against the real MLflow test server.

Version 1 of a model holds @Production; version 2 is better, version 3 breaks the policy's bound.
In one workspace, in this order: a dry run of version 2 (decided, nothing moves), a gate of version
2 (promoted: the outputs, the JSON report and the job summary say so), a gate of version 3
(rejected: the step fails with exit 1, the alias stays), a rollback (back to version 1) and a call
with an unknown `action` (refused with exit 2 before anything is installed or contacted).
Promote comes from the runner's tool cache, seeded as a restored install of the PyPI release
(`seed_promote_install`): no pip here. Last, the source install (`promote-version: ""`), used as
another repository's action: its install is named by a digest of the action's own files, so a
changed file is another install. Every credential is a fake value unique to this run; none may
appear in any output.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from workflow_runner import (
    Event,
    Runner,
    RunnerError,
    RunResult,
    scratch_copy,
    seed_promote_install,
)

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parent.parent
RELEASE = "0.2.0"
PYTHON = "3.11"
POLICY = """\
model: {model}
metrics:
  rmse: {{goal: minimize, max: 70}}
  r2: {{goal: maximize, min: 0.3}}
"""
# What each version's run logged: 1 holds @Production, 2 is better, 3 is over the rmse bound.
VERSIONS = {"1": {"rmse": 60.0, "r2": 0.40}, "2": {"rmse": 55.0, "r2": 0.45},
            "3": {"rmse": 80.0, "r2": 0.45}}

WORKFLOW = """\
name: action-test
on:
  workflow_dispatch:
    inputs:
      action: {{type: string, default: gate}}
      candidate: {{type: string, default: ""}}
permissions:
  contents: read
jobs:
  promote:
    runs-on: ubuntu-latest
    outputs:
      decision: ${{{{ steps.promote.outputs.decision }}}}
    steps:
      - uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8 # v5.0.0
        with:
          persist-credentials: false
      - id: promote
        uses: {uses}
        with:
          policy: policies/action.yaml
          action: ${{{{ inputs.action }}}}
          candidate: ${{{{ inputs.candidate }}}}
          promote-version: "{version}"
          tracking-uri: ${{{{ secrets.MLFLOW_TRACKING_URI }}}}
          tracking-username: ${{{{ secrets.MLFLOW_TRACKING_USERNAME }}}}
          tracking-password: ${{{{ secrets.MLFLOW_TRACKING_PASSWORD }}}}
          tracking-token: ${{{{ secrets.MLFLOW_TRACKING_TOKEN }}}}
      - name: After the action
        if: always()
        shell: bash
        env:
          REPORT: ${{{{ steps.promote.outputs.report }}}}
          PROMOTE: ${{{{ steps.promote.outputs.promote }}}}
        run: |
          echo "$PROMOTE"
          if command -v promote; then echo "promote is on the job's PATH"; fi
          if [ -n "$REPORT" ]; then jq -r '"report outcome: \\(.outcome)"' "$REPORT"; fi
"""


def fake_secrets(server: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    user, password = f"actionuser{tag}", f"actionpass{tag}"
    scheme, rest = server.split("://", 1)
    # The server runs without auth and ignores these; they are here to be looked for in the output.
    return {"MLFLOW_TRACKING_URI": f"{scheme}://{user}:{password}@{rest}",
            "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_TRACKING_TOKEN": f"actiontoken{tag}"}


def write_workflow(path: Path, uses: str, version: str) -> Path:
    path.write_text(WORKFLOW.format(uses=uses, version=version))
    return path


def source_digest(action_dir: Path) -> str:
    """What the action names a source install by: sha256sum of its build files, summed again."""
    files = [p for name in ("pyproject.toml", "constraints.txt", "promotion")
             for p in ([action_dir / name] if (action_dir / name).is_file()
                       else (action_dir / name).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  "
                      f"{p.relative_to(action_dir).as_posix()}\n"
                      for p in sorted(files, key=lambda p: p.relative_to(action_dir).as_posix()
                                      .encode()))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


@dataclass
class Story:
    model: str
    server: str
    secrets: dict[str, str]
    workspace: Path
    tool_cache: Path
    runs: dict[str, RunResult] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)  # after each run

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.server, registry_uri=self.server)

    def snapshot(self) -> dict[str, str]:
        return dict(self.client().get_registered_model(self.model).aliases)

    def step(self, run: str):
        """The step that used the action."""
        (leg,) = self.runs[run].job("promote").legs
        return leg.step("promote")


@pytest.fixture(scope="module")
def story(mlflow_server, tmp_path_factory) -> Story:
    from helpers import add_version

    root = tmp_path_factory.mktemp("action")
    model = f"action-{uuid.uuid4().hex[:10]}"
    ws = scratch_copy(REPO, root / "ws")
    (ws / "policies" / "action.yaml").write_text(POLICY.format(model=model))
    s = Story(model, mlflow_server, fake_secrets(mlflow_server), ws, root / "tool-cache")
    # The PyPI release, as actions/cache restores it: a venv whose promote runs this tree.
    seed_promote_install(s.tool_cache, RELEASE, PYTHON, ws)
    client = s.client()
    for version, metrics in VERSIONS.items():
        assert add_version(client, model, metrics) == version
    client.set_registered_model_alias(model, "Production", "1")

    workflow = write_workflow(root / "action-test.yml", "./", RELEASE)
    s.aliases["before"] = s.snapshot()
    for name, inputs in [("dry-run", {"action": "dry-run", "candidate": "2"}),
                         ("gate", {"action": "gate", "candidate": "2"}),
                         ("rejected", {"action": "gate", "candidate": "3"}),
                         ("rollback", {"action": "rollback"}),
                         ("unknown-action", {"action": "promote-everything"})]:
        runner = Runner(ws, root / f"runner-{name}", secrets=s.secrets, tool_cache=s.tool_cache)
        s.runs[name] = runner.run(workflow, Event.dispatch(**inputs))
        s.aliases[name] = s.snapshot()
    return s


def test_the_install_is_the_restored_one(story):
    step = story.step("gate")
    assert story.step("gate").step("Restore the install").outputs == {"cache-hit": "true"}
    assert step.step("Install Promote").outcome == "skipped"
    # Later steps of the job get its path as an output; the job's PATH is left alone.
    (leg,) = story.runs["gate"].job("promote").legs
    after = leg.step("After the action")
    assert after.stdout.splitlines()[0] == str(
        story.tool_cache / "mlflow-promote" / RELEASE / PYTHON / "bin" / "promote")
    assert "on the job's PATH" not in after.stdout


def test_a_dry_run_decides_and_moves_nothing(story):
    step = story.step("dry-run")
    assert (step.outcome, step.returncode) == ("success", 0), story.runs["dry-run"].describe()
    assert step.outputs["decision"] == "promoted"
    assert step.outputs["candidate_version"] == "2"
    assert json.loads(Path(step.outputs["report"]).read_text())["dry_run"] is True
    assert story.aliases["dry-run"] == story.aliases["before"] == {"Production": "1"}


def test_the_gate_promotes_and_says_so(story):
    run = story.runs["gate"]
    step = story.step("gate")
    assert (step.outcome, step.returncode) == ("success", 0), run.describe()
    assert {k: v for k, v in step.outputs.items() if k not in {"report", "promote"}} == {
        "decision": "promoted", "candidate_version": "2", "production_version": "1"}
    report = Path(step.outputs["report"])
    assert report.name == "decision.json" and report.parent.name == "promote"
    kept = json.loads(report.read_text())
    assert (kept["outcome"], kept["candidate"]["version"], kept["applied"]) == ("promoted", "2",
                                                                                True)
    assert run.job("promote").outputs == {"decision": "promoted"}
    assert f"Promote `{story.model}`" in step.summary and "| rmse max |" in step.summary
    assert story.aliases["gate"] == {"Production": "2", "Production-previous": "1"}


def test_a_rejected_candidate_fails_the_step_and_moves_nothing(story):
    run = story.runs["rejected"]
    step = story.step("rejected")
    assert (step.outcome, step.returncode) == ("failure", 1), run.describe()
    assert run.job("promote").result == "failure"
    assert (step.outputs["decision"], step.outputs["candidate_version"]) == ("rejected", "3")
    assert json.loads(Path(step.outputs["report"]).read_text())["outcome"] == "rejected"
    assert story.aliases["rejected"] == story.aliases["gate"]
    # A later step with `if: always()` still reads the report.
    (leg,) = run.job("promote").legs
    assert "report outcome: rejected" in leg.step("After the action").stdout


def test_a_rollback_moves_the_alias_back(story):
    step = story.step("rollback")
    assert (step.outcome, step.returncode) == ("success", 0), story.runs["rollback"].describe()
    assert story.aliases["rollback"] == {"Production": "1", "Production-previous": "2"}
    assert {k: v for k, v in step.outputs.items() if k not in {"report", "promote"}} == {
        "decision": "rollback", "candidate_version": "2", "production_version": "1"}
    assert Path(step.outputs["report"]).name == "rollback.json"
    assert f"### Promote `{story.model}`: rollback of @Production" in step.summary


def test_an_unknown_action_is_refused_before_anything_runs(story):
    step = story.step("unknown-action")
    assert (step.outcome, step.returncode) == ("failure", 2)
    assert step.annotations() == ["::error::input action is 'promote-everything': expected gate, "
                                  "dry-run, rollback or watch"]
    assert [s.outcome for s in step.steps[1:]] == ["skipped"] * (len(step.steps) - 1)
    assert step.outputs == {"decision": "", "candidate_version": "", "production_version": "",
                            "report": "", "promote": ""}
    assert story.aliases["unknown-action"] == story.aliases["rollback"]


def test_no_credential_appears_anywhere(story):
    values = [story.secrets[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                         "MLFLOW_TRACKING_TOKEN")]
    texts = [(f"{name}: {where}", text) for name, run in story.runs.items()
             for where, text in run.texts()]
    texts += [(str(p), p.read_text()) for run in ("dry-run", "gate", "rejected", "rollback")
              for p in [Path(story.step(run).outputs["report"])]]
    assert [where for where, text in texts for value in values if value in text] == []
    assert all(story.step(run).stdout for run in story.runs)  # there was output to look at


def test_a_source_install_is_named_by_the_action_files(story, tmp_path):
    """`promote-version: ""`, the action used from another repository: its install is named by a
    digest of the action's build files (a changed file, another install), restored here."""
    action = scratch_copy(REPO, tmp_path / "action-repo")
    workflow = write_workflow(tmp_path / "source.yml", f"mlflow-promote/promote@{'a' * 40}", "")
    seen = []
    for change in ("", "\n"):
        with (action / "promotion" / "__init__.py").open("a") as f:
            f.write(change)
        name = f"src-{source_digest(action)}"
        seed_promote_install(story.tool_cache, name, PYTHON, action)
        runner = Runner(story.workspace, tmp_path / f"runner-{len(seen)}", secrets=story.secrets,
                        tool_cache=story.tool_cache,
                        repositories={"mlflow-promote/promote": action})
        run = runner.run(workflow, Event.dispatch(action="dry-run", candidate="2"))
        (leg,) = run.job("promote").legs
        step = leg.step("promote")
        assert (step.outcome, step.outputs["decision"]) == ("success", "promoted"), run.describe()
        named = step.step("Name the install")
        assert named.outputs == {"name": name, "dir": str(
            story.tool_cache / "mlflow-promote" / name / PYTHON)}
        assert step.step("Restore the install").outputs == {"cache-hit": "true"}
        assert step.step("Install Promote").outcome == "skipped"
        seen.append(name)
    assert seen[0] != seen[1]
    assert story.aliases["unknown-action"] == story.snapshot()  # dry runs: nothing moved
    assert sorted(p.name for p in (story.tool_cache / "mlflow-promote").iterdir()) == sorted(
        [RELEASE, *seen])


@pytest.mark.parametrize(("given", "message"), [
    ({"tracking-uri": ""}, "input tracking-uri is empty"),
    ({"policy": "policies/missing.yaml"}, "input policy: policies/missing.yaml: no such file"),
    ({"action": "rollback", "candidate": "2"}, "input candidate is for gate and dry-run"),
    ({"action": "watch"}, "input log-uri is empty"),
    ({"promote-version": "0.2.0 --index-url=http://example.com"},
     "input promote-version is '0.2.0 --index-url=http://example.com'"),
    ({"extras": "monitor]; x"}, "input extras is 'monitor]; x'"),
])
def test_bad_inputs_are_refused_before_anything_is_installed(story, tmp_path, given, message):
    with_ = {"policy": "policies/action.yaml", "tracking-uri": "${{ secrets.MLFLOW_TRACKING_URI }}",
             "promote-version": RELEASE, **given}
    workflow = {"name": "refusal", "on": {"workflow_dispatch": {}},
                "jobs": {"promote": {"runs-on": "ubuntu-latest", "steps": [
                    {"id": "promote", "uses": "./", "with": with_}]}}}
    path = tmp_path / "refusal.yml"
    path.write_text(yaml.safe_dump(workflow))
    run = Runner(story.workspace, tmp_path / "runner", secrets=story.secrets,
                 tool_cache=tmp_path / "empty-tool-cache").run(path, Event.dispatch())
    (leg,) = run.job("promote").legs
    step = leg.step("promote")
    assert (step.outcome, step.returncode) == ("failure", 2), run.describe()
    (annotation,) = step.annotations()
    assert annotation.startswith(f"::error::{message}")
    assert [s.outcome for s in step.steps[1:]] == ["skipped"] * (len(step.steps) - 1)
    assert not (tmp_path / "empty-tool-cache" / "mlflow-promote").exists()


# --------------------------------------------------------------------------------------------
# The runner's composite actions, on two small actions of this test's own


INNER = """\
name: inner
description: appends to the job's files
inputs:
  word: {description: a word, required: true}
outputs:
  echoed: {description: the word back, value: "${{ steps.say.outputs.said }}"}
runs:
  using: composite
  steps:
    - id: say
      shell: bash
      env: {WORD: "${{ inputs.word }}"}
      run: |
        echo "said=$WORD" >> "$GITHUB_OUTPUT"
        echo "INNER_WORD=$WORD" >> "$GITHUB_ENV"
        mkdir -p "$RUNNER_TEMP/inner-bin" && echo "$RUNNER_TEMP/inner-bin" >> "$GITHUB_PATH"
        echo "inner says $WORD" >> "$GITHUB_STEP_SUMMARY"
"""
OUTER = """\
name: outer
description: uses the inner action, then reads what it left
inputs:
  word: {description: a word, required: false, default: "${{ runner.os }}-default"}
  fail: {description: fail the middle step, required: false, default: "no"}
outputs:
  both:
    description: both steps
    value: "both=${{ steps.inner.outputs.echoed }}+${{ steps.after.outputs.seen }}"
runs:
  using: composite
  steps:
    - id: inner
      uses: ./actions/inner
      with: {word: "${{ inputs.word }}"}
    - id: middle
      if: inputs.fail == 'yes'
      shell: bash
      run: exit 3
    - id: after
      shell: bash
      run: |
        echo "seen=$INNER_WORD:$(basename "$GITHUB_ACTION_PATH"):${PATH%%:*}" >> "$GITHUB_OUTPUT"
    - id: cleanup
      if: always()
      shell: bash
      run: echo "cleanup after $INNER_WORD"
"""


def _composite_run(tmp_path: Path, with_: dict[str, str],
                   uses: str = "./actions/outer") -> RunResult:
    ws = tmp_path / "ws"
    for name, text in (("inner", INNER), ("outer", OUTER)):
        (ws / "actions" / name).mkdir(parents=True, exist_ok=True)
        (ws / "actions" / name / "action.yml").write_text(text)
    workflow = {"name": "composite", "on": {"workflow_dispatch": {}}, "jobs": {"job": {
        "runs-on": "ubuntu-latest", "outputs": {"both": "${{ steps.outer.outputs.both }}"},
        "steps": [{"id": "outer", "uses": uses, "with": with_},
                  {"id": "later", "if": "always()", "shell": "bash",
                   "run": 'echo "later sees $INNER_WORD"'}]}}}
    path = tmp_path / "composite.yml"
    path.write_text(yaml.safe_dump(workflow))
    return Runner(ws, tmp_path / f"runner-{uuid.uuid4().hex[:6]}").run(path, Event.dispatch())


def test_the_runner_runs_a_composite_action_in_the_job(tmp_path):
    run = _composite_run(tmp_path, {})
    (leg,) = run.job("job").legs
    outer = leg.step("outer")
    assert (outer.outcome, [s.outcome for s in outer.steps]) == (
        "success", ["success", "skipped", "success", "success"]), run.describe()
    # The default evaluated in the runner context; GITHUB_ENV and GITHUB_PATH of the nested
    # action seen by the next steps; GITHUB_ACTION_PATH the outer action's directory.
    echoed, seen = outer.outputs["both"].removeprefix("both=").split("+")
    assert echoed == "Linux-default"
    word, action_dir, first_path = seen.split(":")
    assert (word, action_dir, Path(first_path).name) == ("Linux-default", "outer", "inner-bin")
    assert run.job("job").outputs == {"both": outer.outputs["both"]}
    assert outer.summary == "inner says Linux-default\n"
    assert leg.step("later").stdout == "later sees Linux-default\n"


def test_a_failed_composite_step_fails_the_action_with_its_code(tmp_path):
    run = _composite_run(tmp_path, {"word": "w", "fail": "yes"})
    (leg,) = run.job("job").legs
    outer = leg.step("outer")
    assert (outer.outcome, outer.returncode, leg.result) == ("failure", 3, "failure")
    assert [s.outcome for s in outer.steps] == ["success", "failure", "skipped", "success"]
    assert outer.outputs["both"] == "both=w+"
    assert "cleanup after w" in outer.stdout


@pytest.mark.parametrize(("uses", "with_", "message"), [
    ("./actions/outer", {"wrod": "x"}, "./actions/outer: unknown inputs ['wrod']"),
    ("./actions/inner", {}, "./actions/inner: input word is required"),
    ("./actions", {}, "no action.yml in"),
])
def test_the_runner_refuses_what_github_would_not_run(tmp_path, uses, with_, message):
    with pytest.raises(RunnerError, match=re.escape(message)):
        _composite_run(tmp_path, with_, uses)
