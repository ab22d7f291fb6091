"""The GitHub Actions workflows are product code: schema-valid, zizmor-clean, least privilege.

Two linters run as tests (check-jsonschema with GitHub's workflow schema, zizmor offline with
every persona, auditor included), each also shown a broken workflow so a linter that silently
checks nothing would fail here; `action.yml` at the root, when there is one, goes through both
too. The rest are the rules of docs/github-actions.md the linters do not enforce: read-only
top-level permissions, actions pinned to a commit with the version beside it, secrets and inputs
reaching scripts only through `env:`, and the alias moved only from the production environment,
one run per model at a time (the scheduled watch and rollout and the abort of a rollout included:
they share the gate's group). The jobs live in the reusable workflows (`on: workflow_call`); this
repository's promote.yml, policy-check.yml and monitor.yml are thin callers of them: one job,
secrets passed by name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
# Each caller and the reusable workflow it calls.
CALLERS = {"promote.yml": "reusable-train-and-gate.yml",
           "policy-check.yml": "reusable-policy-check.yml",
           "monitor.yml": "reusable-monitor.yml"}
EXPECTED = {"ci.yml", *CALLERS, *CALLERS.values()}
TRAIN, POLICY_CHECK, MONITOR = CALLERS.values()
ACTION = REPO / "action.yml"
PRODUCTION = "${{ inputs.production-environment }}"
READ_ONLY = "${{ inputs.read-environment }}"
SELF = re.compile(r"^(?:\$|\.)/\.github/workflows/reusable-[\w-]+\.yml$")
SECRETS = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
           "MLFLOW_TRACKING_TOKEN", "PROMOTE_LOG_URI", "PROMOTE_EVENTS_URLS",
           "PROMOTE_EVENTS_SECRET", "PROMOTE_NOTIFY_URLS"}
EVENT_SECRETS = {"PROMOTE_EVENTS_URLS", "PROMOTE_EVENTS_SECRET", "PROMOTE_NOTIFY_URLS"}
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)\s*(?:#\s*(?P<comment>.*))?$", re.M)

# A workflow that breaks the rules the linters are meant to catch.
BAD_WORKFLOW = """\
name: bad
on: pull_request_target
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}"
"""


def tool(name: str) -> str:
    """The linter installed next to this interpreter (the test extra), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it is in the test extra (pip install -e '.[test]')")
    return found


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True; GitHub reads it as "on".
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job_id, step) for job_id, job in workflow["jobs"].items()
            for step in job.get("steps", [])]


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in WORKFLOW_FILES}


def test_the_workflows_exist():
    assert {path.name for path in WORKFLOW_FILES} >= EXPECTED


# --------------------------------------------------------------------------------------------
# Linters


def test_schema_valid():
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOW_FILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not ACTION.exists(), reason="no action.yml at the root")
def test_action_schema_valid():
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions",
                           str(ACTION)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_an_invalid_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: true\n    colour: blue\n")
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0


def zizmor(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([tool("zizmor"), "--offline", "--no-progress", "--format", "json", *args],
                          capture_output=True, text=True)
    # Exit codes: 0 clean, 10-14 findings by severity; anything else is a failure to run.
    assert proc.returncode in {0, 10, 11, 12, 13, 14}, proc.stderr
    findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return findings


def describe(findings: list[dict[str, Any]]) -> str:
    """One line per location: `file:line: ident: annotation`."""
    lines = []
    for finding in findings:
        for loc in finding.get("locations", []):
            path = loc["symbolic"]["key"].get("Local", {}).get("verbatim_path", "?")
            row = loc["concrete"]["location"]["start_point"]["row"] + 1
            lines.append(f"{path}:{row}: {finding['ident']}: {loc['symbolic'].get('annotation')}")
    return "\n".join(lines)


PERSONAS = ["regular", "pedantic", "auditor"]


@pytest.mark.parametrize("persona", PERSONAS)
def test_zizmor_reports_nothing(persona):
    findings = zizmor("--persona", persona, *map(str, WORKFLOW_FILES))
    assert findings == [], describe(findings)


@pytest.mark.skipif(not ACTION.exists(), reason="no action.yml at the root")
@pytest.mark.parametrize("persona", PERSONAS)
def test_zizmor_reports_nothing_on_the_action(persona):
    findings = zizmor("--persona", persona, str(ACTION))
    assert findings == [], describe(findings)


def test_zizmor_auditor_flags_secrets_outside_an_environment(tmp_path):
    """The rule that put the dry run and the preview in `registry-read`."""
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\npermissions: {}\njobs:\n  read:\n"
                   "    runs-on: ubuntu-latest\n    steps:\n      - env:\n"
                   "          TOKEN: ${{ secrets.TOKEN }}\n        run: test -n \"$TOKEN\"\n")
    assert "secrets-outside-env" in {f["ident"] for f in zizmor("--persona", "auditor", str(bad))}


def test_zizmor_flags_a_dangerous_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    idents = {f["ident"] for f in zizmor(str(bad))}
    assert {"unpinned-uses", "template-injection", "dangerous-triggers"} <= idents, idents


# --------------------------------------------------------------------------------------------
# The rules the linters do not check


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_top_level_permissions_are_read_only(path):
    workflow = load(path)
    assert workflow.get("permissions") == {"contents": "read"}
    for job_id, job in workflow["jobs"].items():
        granted = job.get("permissions", {})
        assert all(v in {"read", "none"} for v in granted.values()), (job_id, granted)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    uses = USES_LINE.findall(path.read_text(encoding="utf-8"))
    assert uses, "no actions used?"
    for ref, comment in uses:
        if SELF.match(ref):  # a reusable workflow of this repository, at the caller's commit
            assert (WORKFLOWS / ref.rsplit("/", 1)[1]).is_file(), ref
            continue
        assert PINNED.match(ref), f"{ref}: pin the full 40-character commit SHA"
        assert re.fullmatch(r"v\d+(\.\d+)*", comment.strip()), f"{ref}: add '# vX.Y.Z'"


def test_each_action_has_one_pin_across_workflows():
    """The workflows and the root action.yml alike."""
    pins: dict[str, set[str]] = {}
    for path in [*WORKFLOW_FILES, *([ACTION] if ACTION.exists() else [])]:
        for ref, _ in USES_LINE.findall(path.read_text(encoding="utf-8")):
            if SELF.match(ref):
                continue
            action, sha = ref.split("@")
            pins.setdefault(action, set()).add(sha)
    assert {a: s for a, s in pins.items() if len(s) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_checkout_never_persists_credentials(path):
    for job_id, step in steps(load(path)):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, job_id


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_scripts_hold_no_expressions(path):
    """Inputs and secrets reach `run:` scripts through env only: no template injection."""
    for job_id, step in steps(load(path)):
        assert "${{" not in step.get("run", ""), (job_id, step.get("name"))


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_secrets_only_in_step_env(path):
    """In a step's `env:`, under the name MLflow or Promote reads; in a caller, in the `secrets:`
    of the call, each under its own name."""
    workflow = load(path)
    outside = dict(workflow)
    outside["jobs"] = {job_id: {k: v for k, v in job.items() if k not in ("steps", "secrets")}
                       for job_id, job in workflow["jobs"].items()}
    assert "secrets." not in json.dumps(outside), "secrets at workflow or job level"
    for job_id, job in workflow["jobs"].items():
        if "secrets" in job:
            assert "uses" in job, job_id
            assert isinstance(job["secrets"], dict), f"{job_id}: pass secrets by name, not inherit"
            for name, value in job["secrets"].items():
                assert name in SECRETS, (job_id, name)
                assert str(value) == f"${{{{ secrets.{name} }}}}", (job_id, name)
    for job_id, step in steps(workflow):
        rest = {k: v for k, v in step.items() if k != "env"}
        assert "secrets." not in json.dumps(rest), (job_id, step.get("name"))
        for name, value in step.get("env", {}).items():
            if "secrets." in str(value):
                # The secret lands in the variable MLflow reads, under the same name, nothing else.
                assert name in SECRETS, (job_id, name)
                assert str(value) == f"${{{{ secrets.{name} }}}}", (job_id, name)


def test_event_secrets_reach_only_the_steps_that_decide(workflows):
    """Decision events and notifications leave from the steps that make a decision, and from
    no other (a dry run or a plan sends nothing and needs no such secret)."""
    found = {(name, job_id, step.get("name")) for name in workflows
             for job_id, step in steps(workflows[name])
             if EVENT_SECRETS & set(step.get("env", {}))}
    assert {(w, j, s) for w, j, s in found} == {
        (TRAIN, "gate", "Gate every version trained in this run"),
        (TRAIN, "gate", "Gate"), (TRAIN, "rollback", "Roll back"),
        (TRAIN, "abort-rollout", "Abort the rollout"), (MONITOR, "watch", "Watch"),
        (MONITOR, "rollout", "Judge the step in force")}
    for workflow, job_id, name in found:
        env = next(step for j, step in steps(workflows[workflow])
                   if j == job_id and step.get("name") == name)["env"]
        assert set(env) >= EVENT_SECRETS, (workflow, job_id, name)


def test_promote_triggers(workflows):
    on = workflows["promote.yml"]["on"]
    assert on["push"]["branches"] == ["main"]
    assert set(on["push"]["paths"]) == {"train/**", "policies/**", "promotion/**"}
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"policy", "candidate", "action"}
    assert inputs["action"]["type"] == "choice"
    assert inputs["action"]["options"] == ["gate", "dry-run", "rollback", "abort-rollout"]


def test_promote_job_order(workflows):
    jobs = workflows[TRAIN]["jobs"]
    assert "test" in _list(jobs["train"]["needs"])
    assert {"train", "plan"} <= set(_list(jobs["gate"]["needs"]))
    assert jobs["test"]["if"] == "inputs.action == 'train-and-gate' && inputs.test-command != ''"
    (step,) = [s for s in jobs["test"]["steps"] if "run" in s]
    assert step["env"]["TEST_COMMAND"] == "${{ inputs.test-command }}"
    assert workflows["promote.yml"]["jobs"]["promote"]["with"]["test-command"] == "make test"


def test_the_action_input_routes_the_train_and_gate_workflow(workflows):
    spec = workflows[TRAIN]["on"]["workflow_call"]["inputs"]["action"]
    assert (spec["type"], spec["default"]) == ("string", "train-and-gate")
    jobs = workflows[TRAIN]["jobs"]
    for job_id in ("dry-run", "rollback", "abort-rollout"):
        assert jobs[job_id]["if"] == f"inputs.action == '{job_id}'"
    assert "github.event_name" not in json.dumps(jobs)  # the action decides, not the event
    call = workflows["promote.yml"]["jobs"]["promote"]["with"]
    assert call["action"] == ("${{ github.event_name == 'push' && 'train-and-gate' || "
                              "inputs.action }}")


def _environment_default(workflow: dict[str, Any], name: str) -> str:
    return str(workflow["on"]["workflow_call"]["inputs"][name]["default"])


@pytest.mark.parametrize(("workflow", "job_id"), [
    (TRAIN, "gate"), (TRAIN, "rollback"), (TRAIN, "abort-rollout"),
    (MONITOR, "watch"), (MONITOR, "rollout")])
def test_only_the_production_environment_moves_the_alias(workflows, workflow, job_id):
    job = workflows[workflow]["jobs"][job_id]
    assert job["environment"] == PRODUCTION
    assert _environment_default(workflows[workflow], "production-environment") == "production"
    assert job["concurrency"]["group"] == "promote-${{ matrix.model }}"
    assert job["concurrency"]["cancel-in-progress"] is False
    # Waiting jobs queue up: without it a scheduled watch would cancel a waiting gate.
    assert job["concurrency"]["queue"] == "max"
    # One group for every job that can move a model's alias, whatever the workflow.
    assert job["concurrency"] == workflows[TRAIN]["jobs"]["gate"]["concurrency"]


@pytest.mark.parametrize(("workflow", "job_id"), [(TRAIN, "dry-run"), (POLICY_CHECK, "preview")])
def test_read_only_jobs_run_in_the_read_only_environment(workflows, workflow, job_id):
    """Their secrets are a read-only MLflow user's, kept in an environment of their own (no
    reviewers, every branch): the write credentials stay in `training` and `production`."""
    job = workflows[workflow]["jobs"][job_id]
    assert job["environment"] == READ_ONLY
    assert _environment_default(workflows[workflow], "read-environment") == "registry-read"
    assert "concurrency" not in job  # it moves nothing: it need not wait for the gate


def test_training_runs_in_its_environment(workflows):
    assert workflows[TRAIN]["jobs"]["train"]["environment"] == "${{ inputs.training-environment }}"
    assert _environment_default(workflows[TRAIN], "training-environment") == "training"


def test_every_job_with_secrets_names_an_environment(workflows):
    for name, workflow in workflows.items():
        for job_id, job in workflow["jobs"].items():
            if "steps" in job and "secrets." in json.dumps(job["steps"]):
                assert job.get("environment"), (name, job_id)


def test_jobs_outside_production_cannot_move_the_alias(workflows):
    for name, workflow in workflows.items():
        for job_id, job in workflow["jobs"].items():
            if job.get("environment") == PRODUCTION:
                continue
            for step in job.get("steps", []):
                script = step.get("run", "")
                assert "promote rollback" not in script, (name, job_id)
                assert "promote watch" not in script, (name, job_id)  # a breach rolls back
                assert "promote rollout" not in script, (name, job_id)  # it moves aliases
                if "promote gate" in script:
                    assert "--dry-run" in script, (name, job_id)


def test_gate_outputs(workflows):
    jobs = workflows[TRAIN]["jobs"]
    for job_id in ("gate", "dry-run"):
        assert set(jobs[job_id]["outputs"]) == {"decision", "candidate_version",
                                                 "production_version"}
    outputs = workflows[TRAIN]["on"]["workflow_call"]["outputs"]
    assert set(outputs) == {"matrix", "versions", "decision", "candidate_version",
                            "production_version"}
    assert outputs["decision"]["value"] == ("${{ jobs.gate.outputs.decision || "
                                            "jobs.dry-run.outputs.decision }}")


def test_policy_check_runs_on_pull_requests_only(workflows):
    on = workflows["policy-check.yml"]["on"]
    assert set(on) == {"pull_request"}  # never pull_request_target: no secrets for fork code
    assert on["pull_request"]["paths"] == ["policies/**"]
    call = workflows["policy-check.yml"]["jobs"]["check"]["with"]
    assert call["preview-last"] == "${{ vars.PROMOTE_PREVIEW_LAST || '20' }}"
    scripts = " ".join(s.get("run", "") for _, s in steps(workflows[POLICY_CHECK]))
    assert "promote policy validate --format github" in scripts
    assert "promote policy preview" in scripts
    assert 'git show "origin/$BASE_REF:' in scripts


def test_monitor_triggers(workflows):
    on = workflows["monitor.yml"]["on"]
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert [entry["cron"] for entry in on["schedule"]] == ["*/15 * * * *"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"policy", "dry_run"}
    assert (inputs["policy"]["type"], inputs["policy"]["required"]) == ("string", False)
    assert (inputs["dry_run"]["type"], inputs["dry_run"]["default"]) == ("boolean", False)
    # A scheduled run has no inputs: the call still passes a boolean.
    call = workflows["monitor.yml"]["jobs"]["monitor"]["with"]
    assert call["dry-run"] == "${{ inputs.dry_run == true }}"
    spec = workflows[MONITOR]["on"]["workflow_call"]["inputs"]["dry-run"]
    assert (spec["type"], spec["default"]) == ("boolean", False)


def test_monitor_plans_the_watched_policies_and_watches_each_once(workflows):
    jobs = workflows[MONITOR]["jobs"]
    assert set(jobs) == {"plan", "watch", "rollout"}
    plan = " ".join(s.get("run", "") for s in jobs["plan"]["steps"])
    assert "promote policy validate --format github" in plan
    assert 'promote policy list --select "$POLICY" --watched --format github-matrix' in plan
    assert 'promote policy list --select "$POLICY" --rollouts --format github-matrix' in plan
    watch = jobs["watch"]
    assert watch["needs"] == "plan"
    assert watch["strategy"] == {"fail-fast": False,
                                 "matrix": "${{ fromJSON(needs.plan.outputs.matrix) }}"}
    (step,) = [s for s in watch["steps"] if "promote watch" in s.get("run", "")]
    assert ('promote watch "$POLICY" --once ${dry_run:+--dry-run} --report-dir '
            '"$RUNNER_TEMP/watch"') in step["run"]
    assert step["env"]["DRY_RUN"] == "${{ inputs.dry-run }}"
    # A breach (exit 1) must make the job red: that is the alert.
    assert not any(s.get("continue-on-error") for s in watch["steps"])
    assert watch.get("continue-on-error") is None


def test_monitor_judges_each_rollout_once(workflows):
    jobs = workflows[MONITOR]["jobs"]
    rollout = jobs["rollout"]
    assert rollout["needs"] == "plan"
    assert rollout["if"] == "needs.plan.outputs.rollout_count != '0'"
    assert rollout["strategy"] == {"fail-fast": False,
                                   "matrix": "${{ fromJSON(needs.plan.outputs.rollouts) }}"}
    assert set(jobs["plan"]["outputs"]) == {"matrix", "count", "rollouts", "rollout_count"}
    (step,) = [s for s in rollout["steps"] if "promote rollout" in s.get("run", "")]
    assert 'promote rollout "$POLICY" --once ${dry_run:+--dry-run} --json' in step["run"]
    assert step["env"]["DRY_RUN"] == "${{ inputs.dry-run }}"
    assert step["env"]["PROMOTE_LOG_URI"] == "${{ secrets.PROMOTE_LOG_URI }}"
    # An abort after a breach (exit 1) must make the job red: that is the alert.
    assert not any(s.get("continue-on-error") for s in rollout["steps"])
    assert rollout.get("continue-on-error") is None
    (kept,) = [s for s in rollout["steps"] if s.get("uses", "").startswith("actions/upload-")]
    assert (kept["if"], kept["with"]["name"]) == ("${{ !cancelled() }}",
                                                  "rollout-${{ strategy.job-index }}")


def test_an_abort_of_a_rollout_names_one_policy_and_why(workflows):
    jobs = workflows[TRAIN]["jobs"]
    plan = " ".join(s.get("run", "") for s in jobs["plan"]["steps"])
    assert "abort-rollout) PER_ALIAS=yes ROLLOUTS=yes ;;" in plan
    assert '[ -n "$PER_ALIAS$ROLLOUTS" ] && [ -z "$POLICY" ]' in plan  # never every policy
    job = jobs["abort-rollout"]
    assert job["if"] == "inputs.action == 'abort-rollout'"
    (step,) = [s for s in job["steps"] if "promote rollout" in s.get("run", "")]
    assert 'promote rollout "$POLICY" --abort --reason "' in step["run"]
    assert "PROMOTE_LOG_URI" not in step["env"]  # an abort reads no traffic
    assert not any(s.get("continue-on-error") for s in job["steps"])


def test_monitor_keeps_the_watch_like_the_gate_keeps_its_decision(workflows):
    gate = workflows[TRAIN]["jobs"]["gate"]["steps"]
    watch = workflows[MONITOR]["jobs"]["watch"]["steps"]
    upload = "actions/upload-artifact@"
    (kept,) = [s for s in watch if s.get("uses", "").startswith(upload)]
    assert kept["uses"] in {s.get("uses") for s in gate}
    assert kept["if"] == "${{ !cancelled() }}"  # a red watch is kept too
    assert kept["with"]["path"] == "${{ runner.temp }}/watch"  # watch.json, watch.md, chart.png
    assert kept["with"]["name"] == "watch-${{ strategy.job-index }}"


SETUP = 5  # checkout, setup-python, the install's name and extras, its cache, the install
# The extras each job installs besides the caller's `extras` (every other job: none).
JOB_EXTRAS = {(TRAIN, "train"): "train", (MONITOR, "watch"): "monitor,postgres",
              (MONITOR, "rollout"): "monitor,postgres"}


def _setup(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The set-up steps with the job's own extras left out."""
    found = []
    for step in job["steps"][:SETUP]:
        step = json.loads(json.dumps(step))
        step.get("env", {}).pop("JOB_EXTRAS", None)
        if step.get("uses", "").startswith("actions/checkout@"):
            step["with"].pop("fetch-depth", None)  # the preview reads the base branch
        found.append(step)
    return found


def test_every_job_installs_promote_alike(workflows):
    """PyPI (a venv in the tool cache, restored by actions/cache) or a source tree; the extras
    are the job's own then the caller's."""
    reference = _setup(workflows[TRAIN]["jobs"]["gate"])
    assert [s.get("name") or s["uses"].split("@")[0] for s in reference] == [
        "actions/checkout", "actions/setup-python", "Choose the Promote install",
        "Restore Promote", "Install Promote"]
    choose, cache, install = reference[2:]
    assert cache["if"] == "inputs.promote-source == ''"
    assert cache["with"]["path"] == ("${{ runner.tool_cache }}/mlflow-promote/"
                                     "${{ inputs.promote-version }}/${{ inputs.python-version }}")
    assert 'make -C "$PROMOTE_SOURCE" install' in install["run"]
    assert '"mlflow-promote${EXTRAS:+[$EXTRAS]}==$PROMOTE_VERSION"' in install["run"]
    assert 'if [ "$CACHE_HIT" != true ]' in install["run"]
    assert choose["env"]["EXTRAS"] == "${{ inputs.extras }}"
    for name in CALLERS.values():
        for job_id, job in workflows[name]["jobs"].items():
            if job_id == "test":  # the caller's own tests: no Promote needed
                continue
            assert _setup(job) == reference, (name, job_id)
            extras = job["steps"][2]["env"]["JOB_EXTRAS"]
            assert extras == JOB_EXTRAS.get((name, job_id), ""), (name, job_id)


def _promote_version() -> str:
    """The version the reusable workflows install by default: `promotion.__version__`."""
    found = re.search(r'^__version__\s*=\s*"([^"]+)"', (REPO / "promotion" / "__init__.py")
                      .read_text(encoding="utf-8"), re.M)
    return found.group(1) if found else "0.2.0"


@pytest.mark.parametrize("name", CALLERS.values())
def test_the_reusable_workflows_install_this_version_by_default(workflows, name):
    inputs = workflows[name]["on"]["workflow_call"]["inputs"]
    assert inputs["promote-version"]["default"] == _promote_version()
    assert inputs["python-version"]["default"] == "3.11"
    assert inputs["promote-source"]["default"] == ""
    assert inputs["extras"]["default"] == ""


@pytest.mark.parametrize("name", CALLERS.values())
def test_a_reusable_workflow_declares_every_secret_optional(workflows, name):
    """Optional, so that the step that needs a missing one says which (and a fork's pull request,
    with none, gets its preview skipped rather than a failed call)."""
    workflow = workflows[name]
    declared = workflow["on"]["workflow_call"]["secrets"]
    assert all(spec["required"] is False and spec["description"] for spec in declared.values())
    used = set(re.findall(r"secrets\.(\w+)", json.dumps(workflow["jobs"])))
    assert used == set(declared), name
    for spec in workflow["on"]["workflow_call"]["inputs"].values():
        assert spec["description"] and spec["required"] is False


@pytest.mark.parametrize(("caller", "called"), CALLERS.items())
def test_each_caller_is_thin(workflows, caller, called):
    """One job, which calls the reusable workflow of this repository with this repository's
    Promote source tree, and passes each secret it declares by name (never `inherit`)."""
    workflow = workflows[caller]
    ((job_id, job),) = workflow["jobs"].items()
    assert set(job) <= {"name", "uses", "with", "secrets"}, job_id
    assert SELF.match(job["uses"]) and job["uses"].endswith(f"/{called}")
    declared = workflows[called]["on"]["workflow_call"]
    assert set(job["with"]) <= set(declared["inputs"])
    assert job["with"]["promote-source"] == "."
    assert isinstance(job["secrets"], dict) and set(job["secrets"]) == set(declared["secrets"])
    assert "defaults" not in workflow and "env" not in workflow  # neither reaches called jobs


def test_ci_runs_make_test(workflows):
    on = workflows["ci.yml"]["on"]
    assert set(on) == {"push", "pull_request"}
    scripts = [s.get("run", "") for _, s in steps(workflows["ci.yml"])]
    assert "make test" in scripts


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------------------------
# Which jobs run for which event (the `if:` and `needs:` routing), and the local runner's reading
# of GitHub's expression language that the smoke tests rely on


def routes(path: Path, event, tmp_path, outputs: dict[str, dict[str, str]] | None = None
           ) -> set[str]:
    """The jobs of the called workflow that would run, every one that runs assumed to succeed
    (no step is executed), with the given outputs."""
    from workflow_runner import Runner

    jobs = load(WORKFLOWS / CALLERS[path.name])["jobs"]
    runner = Runner(tmp_path, tmp_path / "runner", assume_success={j: "routing" for j in jobs},
                    assume_outputs=outputs or {})
    result = runner.run(path, event)
    return {job_id for job_id, job in result.jobs.items()
            if job_id in jobs and job.result != "skipped"}


@pytest.mark.parametrize(("event", "jobs"), [
    ("push", {"test", "plan", "train", "gate"}),
    ("gate", {"plan", "gate"}),
    ("dry-run", {"plan", "dry-run"}),
    ("rollback", {"plan", "rollback"}),
    ("abort-rollout", {"plan", "abort-rollout"}),
])
def test_promote_routes_each_event_to_its_jobs(tmp_path, event, jobs):
    from workflow_runner import Event

    trigger = Event.push() if event == "push" else Event.dispatch(action=event)
    assert routes(WORKFLOWS / "promote.yml", trigger, tmp_path) == jobs


def test_policy_check_routes_a_pull_request(tmp_path):
    from workflow_runner import Event

    event = Event.pull_request(1, "main", "edit", "0" * 40)
    assert routes(WORKFLOWS / "policy-check.yml", event, tmp_path) == {"validate", "preview"}


@pytest.mark.parametrize(("event", "count", "rollout_count", "jobs"), [
    ("schedule", "2", "1", {"plan", "watch", "rollout"}),
    ("dispatch", "1", "0", {"plan", "watch"}),
    ("dispatch", "0", "1", {"plan", "rollout"}),
    # Nothing watched or rolled out: an empty matrix would fail the run.
    ("schedule", "0", "0", {"plan"}),
])
def test_monitor_routes_each_event_to_its_jobs(tmp_path, event, count, rollout_count, jobs):
    from workflow_runner import Event

    trigger = Event.schedule() if event == "schedule" else Event.dispatch(dry_run=True)

    def entries(n: int) -> str:
        return json.dumps({"include": [{"policy": f"policies/{i}.yaml", "model": f"m{i}",
                                        "alias": "Production"} for i in range(n)]})

    outputs = {"plan": {"count": count, "matrix": entries(int(count)),
                        "rollout_count": rollout_count, "rollouts": entries(int(rollout_count))}}
    assert routes(WORKFLOWS / "monitor.yml", trigger, tmp_path, outputs) == jobs


def test_runner_refuses_a_schedule_the_workflow_does_not_have(tmp_path):
    from workflow_runner import Event, RunnerError

    with pytest.raises(RunnerError, match="no schedule"):
        routes(WORKFLOWS / "monitor.yml", Event.schedule("0 * * * *"), tmp_path)


@pytest.mark.parametrize(("expression", "value"), [
    ("false && true || 'x'", "x"),  # && binds tighter than ||, and || returns an operand
    ("inputs.action || 'gate'", "gate"),
    ("inputs.candidate || 'latest'", "7"),
    ("'Push' == github.event_name", True),  # string comparison ignores case
    ("!(github.event_name == 'push') || inputs.candidate == 7", True),  # loose equality
    ("format('promote-{0}', matrix.model)", "promote-m"),
    ("fromJSON('{\"include\": [{\"a\": 1}]}').include[0].a", 1.0),
    ("needs.plan.outputs.matrix", None),
])
def test_runner_expressions(expression, value):
    from workflow_runner import evaluate

    context = {"github": {"event_name": "push"}, "inputs": {"action": "", "candidate": "7"},
               "matrix": {"model": "m"}, "needs": {}}
    assert evaluate(expression, context) == value


def test_runner_conditions_imply_success_unless_they_ask():
    from workflow_runner import condition

    context = {"github": {"event_name": "push"}}
    assert condition("github.event_name == 'push'", context, "success")
    assert not condition("github.event_name == 'push'", context, "skipped")
    assert not condition(None, context, "failure")
    assert condition("${{ !cancelled() }}", context, "failure")
    assert not condition("${{ !cancelled() }}", context, "cancelled")


def test_runner_reads_output_files_like_github(tmp_path):
    from workflow_runner import read_env_file

    path = tmp_path / "out"
    path.write_text("a=1\nb<<EOF_x\nline 1\nline=2\nEOF_x\nc=\n")
    assert read_env_file(path) == {"a": "1", "b": "line 1\nline=2", "c": ""}


def test_runner_substitutes_several_expressions_in_one_value():
    from workflow_runner import substitute

    context = {"runner": {"tool_cache": "/tc"}, "inputs": {"v": "0.2.0", "on": True}}
    assert substitute("${{ runner.tool_cache }}/p/${{ inputs.v }}", context) == "/tc/p/0.2.0"
    assert substitute("${{ inputs.on }}", context) is True  # a lone expression keeps its type


CALLED = """\
on:
  workflow_call:
    inputs:
      flag: {type: boolean, default: false}
      name: {type: string, required: true}
    secrets:
      TOKEN: {required: false}
    outputs:
      said: {value: "${{ jobs.say.outputs.said }}"}
permissions:
  contents: read
jobs:
  say:
    runs-on: ubuntu-latest
    outputs:
      said: ${{ steps.say.outputs.said }}
    steps:
      - id: say
        env:
          NAME: ${{ inputs.name }}
          FLAG: ${{ inputs.flag }}
          TOKEN: ${{ secrets.TOKEN }}
        run: echo "said=$NAME $FLAG ${#TOKEN}" >> "$GITHUB_OUTPUT"
"""


def _caller(tmp_path: Path, call: str) -> Path:
    workflows = tmp_path / "repo" / ".github" / "workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    (workflows / "called.yml").write_text(CALLED)
    (workflows / "caller.yml").write_text(
        "on: push\npermissions:\n  contents: read\njobs:\n  call:\n" + call)
    return workflows / "caller.yml"


@pytest.mark.parametrize(("uses", "mapped"), [
    ("$/.github/workflows/called.yml", False), ("./.github/workflows/called.yml", False),
    ("acme/tools/.github/workflows/called.yml@" + "0" * 40, True)])
def test_runner_calls_a_reusable_workflow(tmp_path, uses, mapped):
    from workflow_runner import Event, Runner

    caller = _caller(tmp_path, f"    uses: {uses}\n    with:\n      name: x\n"
                               "    secrets:\n      TOKEN: ${{ secrets.TOKEN }}\n")
    repositories = {"Acme/Tools": tmp_path / "repo"} if mapped else {}
    run = Runner(tmp_path, tmp_path / "runner", secrets={"TOKEN": "abc", "OTHER": "zz"},
                 repositories=repositories).run(caller, Event.push())
    call = run.job("call")
    assert (call.result, call.inputs, call.secrets) == ("success", {"flag": False, "name": "x"},
                                                        ["TOKEN"])
    assert call.outputs == {"said": "x false 3"}
    assert run.job("say") is run.job("call/say")


@pytest.mark.parametrize(("call", "message"), [
    ("    uses: $/.github/workflows/called.yml\n", "input name is required"),
    ("    uses: $/.github/workflows/called.yml\n    with:\n      name: x\n      nope: 1\n",
     "undeclared inputs"),
    ("    uses: $/.github/workflows/called.yml\n    with:\n      name: x\n      flag: 'yes'\n",
     "is a boolean"),
    ("    uses: $/.github/workflows/called.yml\n    with:\n      name: x\n"
     "    secrets:\n      OTHER: ${{ secrets.OTHER }}\n", "not declared"),
    ("    uses: acme/tools/.github/workflows/called.yml@v1\n", "not mapped"),
    ("    uses: $/.github/workflows/called.yml@v1\n", "takes no @ref"),
])
def test_runner_refuses_a_call_github_would_refuse(tmp_path, call, message):
    from workflow_runner import Event, Runner, RunnerError

    with pytest.raises(RunnerError, match=message):
        Runner(tmp_path, tmp_path / "runner").run(_caller(tmp_path, call), Event.push())
