"""The workflows, run here: their `run:` steps in a scratch copy of the repository, against the
real MLflow test server, with the files and variables a GitHub runner provides
(tests/workflow_runner.py).

One story per module, told through promote.yml as GitHub would trigger it. Version 1 is already in
Production (registered by the test with worse metrics than the trainer reaches), then:
  push            trains version 2 and promotes it: Production 2, Production-previous 1;
  dry-run         gates version 1 by hand: decided (rejected) and reported, nothing moves;
  rollback        puts Production back on version 1;
  bad candidate   a dispatch with a nonsense candidate fails with exit 2, nothing moves;
  bad policy      a rollback of every policy at once, or a "policy" outside policies/, is refused;
  no secret       a push without MLFLOW_TRACKING_URI fails before training: nothing registered.
Then policy-check.yml on three pull requests: an edit whose preview changes decisions, an invalid
policy annotated on its line, and an edit from a fork (no secrets: validated, preview skipped).

The `test` job of promote.yml runs `make test`, i.e. this very suite: the runner treats it as
passed without running it (it would recurse). Every credential is a fake value unique to this run;
none may appear in any log, output, summary, artifact or registry tag. Not exercised here:
GitHub's own machinery (environment reviewers, concurrency queues, secret masking, permissions,
the hosted runners, the real actions' code) — docs/github-actions.md lists it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from workflow_runner import Event, Runner, RunResult, scratch_copy, seed_venv

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parent.parent
PROMOTE = REPO / ".github" / "workflows" / "promote.yml"
POLICY_CHECK = REPO / ".github" / "workflows" / "policy-check.yml"
RECURSES = "runs `make test`, i.e. this suite: it would recurse"

# The linear trainer scores rmse ~53.4 and r2 ~0.48 on its holdout: better than the seeded version.
SEEDED = {"rmse": 60.0, "r2": 0.40, "mae": 50.0}
POLICY = """\
model: {model}
metrics:
  rmse: {{goal: minimize, max: 70, max_regression: 1%}}
  r2: {{goal: maximize, min: 0.3}}
require_tags:
  data_validated: "true"
"""

CANDIDATE = """\
model: {model}
estimator: linear
params: {{}}
data: sklearn:load_diabetes
split: {{test_size: 0.25, seed: 42}}
"""


def fake_secrets(server: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    user, password = f"smokeuser{tag}", f"smokepass{tag}"
    scheme, rest = server.split("://", 1)
    # The server runs without auth and ignores these; they are here to be looked for in the output.
    return {"MLFLOW_TRACKING_URI": f"{scheme}://{user}:{password}@{rest}",
            "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_TRACKING_TOKEN": f"smoketoken{tag}"}


def secret_values(secrets: dict[str, str]) -> list[str]:
    """What must never be printed: each credential (the URI itself is fine once redacted)."""
    return [secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"],
            secrets["MLFLOW_TRACKING_TOKEN"]]


def workspace(root: Path, model: str) -> Path:
    """A scratch copy whose only policy and training config are this run's, for its own model."""
    ws = scratch_copy(REPO, root)
    seed_venv(ws)
    for directory in (ws / "policies", ws / "train" / "candidates"):
        for old in [*directory.glob("*.yaml"), *directory.glob("*.yml")]:
            if old.name != "schema.json":
                old.unlink()
    (ws / "policies" / "smoke.yaml").write_text(POLICY.format(model=model))
    (ws / "train" / "candidates" / "linear.yaml").write_text(CANDIDATE.format(model=model))
    return ws


@dataclass
class Story:
    model: str
    server: str
    secrets: dict[str, str]
    workspace: Path
    runs: dict[str, RunResult] = field(default_factory=dict)
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)  # state after each run

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.server, registry_uri=self.server)

    def snapshot(self) -> dict[str, Any]:
        """Aliases, versions and every version tag: what any write would change."""
        client = self.client()
        found = client.search_registered_models(f"name = '{self.model}'")
        if not found:
            return {"aliases": {}, "versions": []}
        versions = client.search_model_versions(f"name = '{self.model}'")
        return {"aliases": dict(found[0].aliases),
                "versions": sorted((int(mv.version), sorted(mv.tags.items()))
                                   for mv in versions)}

    def seed_production(self) -> None:
        """Version 1, logged by hand with SEEDED metrics, holding @Production."""
        client = self.client()
        run_id = client.create_run(client.create_experiment(f"seed-{self.model}")).info.run_id
        for key, value in SEEDED.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id)
        client.create_registered_model(self.model)
        client.create_model_version(self.model, f"runs:/{run_id}/model", run_id=run_id,
                                    tags={"data_validated": "true"})
        client.set_registered_model_alias(self.model, "Production", "1")


@pytest.fixture(scope="module")
def story(mlflow_server, tmp_path_factory) -> Story:
    model = f"smoke-{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("workflow-smoke")
    ws = workspace(root / "ws", model)
    s = Story(model, mlflow_server, fake_secrets(mlflow_server), ws)
    runner = Runner(ws, root / "runner", secrets=s.secrets, assume_success={"test": RECURSES})

    s.seed_production()
    steps = [
        ("push", runner, Event.push("1" * 40)),
        ("dry-run", runner, Event.dispatch(policy="policies/smoke.yaml", candidate="1",
                                           action="dry-run")),
        ("rollback", runner, Event.dispatch(policy=model, action="rollback")),
        ("bad-candidate", runner, Event.dispatch(policy="policies/smoke.yaml",
                                                 candidate="nonsense", action="gate")),
        ("rollback-all", runner, Event.dispatch(action="rollback")),
        ("outside-policies", runner, Event.dispatch(policy="train/candidates/linear.yaml")),
        ("no-secret", Runner(ws, root / "runner-no-secret", secrets={},
                             assume_success={"test": RECURSES}), Event.push("2" * 40)),
    ]
    s.registry["before"] = s.snapshot()
    for name, who, event in steps:
        s.runs[name] = who.run(PROMOTE, event)
        s.registry[name] = s.snapshot()
    return s


def aliases(story: Story, after: str) -> dict[str, str]:
    """Production and Production-previous after a step (training also sets @challenger)."""
    return {k: v for k, v in story.registry[after]["aliases"].items() if k.startswith("Prod")}


def test_the_test_job_is_not_run_here_and_says_why(story):
    job = story.runs["push"].job("test")
    assert job.result == "success" and not job.legs and "recurse" in job.reason


def test_push_trains_then_promotes_when_the_policy_passes(story):
    run = story.runs["push"]
    assert aliases(story, "before") == {"Production": "1"}
    assert [run.job(j).result for j in ("plan", "train", "gate")] == ["success"] * 3, \
        run.describe()
    assert run.job("dry-run").result == run.job("rollback").result == "skipped"
    assert "version 2" in run.job("train").legs[0].steps[-1].stdout
    assert aliases(story, "push") == {"Production": "2", "Production-previous": "1"}
    assert run.job("gate").outputs == {"decision": "promoted", "candidate_version": "2",
                                       "production_version": "1"}


def test_the_gate_runs_in_production_queued_per_model(story):
    leg = story.runs["push"].job("gate").legs[0]
    assert leg.matrix == {"policy": "policies/smoke.yaml", "model": story.model,
                          "alias": "Production"}
    assert leg.environment == "production"
    assert leg.concurrency == {"group": f"promote-{story.model}", "cancel-in-progress": False}


def test_the_summary_holds_the_decision_table(story):
    summary = story.runs["push"].job("gate").summary
    assert f"Promote `{story.model}`" in summary
    assert "| check | candidate | Production | bound | result | reason |" in summary
    assert "| rmse max_regression |" in summary


def test_the_decision_is_kept_as_an_artifact(story):
    run = story.runs["push"]
    decision = json.loads((run.artifacts / "decision-0" / "decision.json").read_text())
    assert (decision["outcome"], decision["candidate"]["version"]) == ("promoted", "2")


def test_a_dry_run_dispatch_moves_nothing(story):
    run = story.runs["dry-run"]
    job = run.job("dry-run")
    assert run.job("gate").result == "skipped" and run.job("train").result == "skipped"
    assert job.legs[0].environment is None  # no approval needed to look
    # Version 1 against Production 2 would be rejected (rmse 60 vs ~53.4): exit 1 fails the job,
    # and the decision still reaches the outputs and the summary...
    assert job.result == "failure" and job.legs[0].step("gate").returncode == 1, run.describe()
    assert job.outputs["decision"] == "rejected"
    assert (job.outputs["candidate_version"], job.outputs["production_version"]) == ("1", "2")
    assert "| rmse max_regression |" in job.summary
    # ...but nothing at all was written: aliases and every tag as they were.
    assert story.registry["dry-run"] == story.registry["push"]


def test_a_rollback_dispatch_moves_it_back(story):
    run = story.runs["rollback"]
    assert run.job("rollback").result == "success", run.describe()
    leg = run.job("rollback").legs[0]
    assert leg.matrix["model"] == story.model  # the `policy` input named the model
    assert leg.environment == "production"
    assert leg.concurrency["group"] == f"promote-{story.model}"
    assert aliases(story, "rollback") == {"Production": "1", "Production-previous": "2"}
    assert "Rollback of" in run.job("rollback").summary


def test_a_bad_dispatch_input_fails_and_leaves_the_registry_alone(story):
    run = story.runs["bad-candidate"]
    step = run.job("gate").legs[0].step("gate")
    assert step.returncode == 2 and "nonsense" in step.stderr
    assert story.registry["bad-candidate"] == story.registry["rollback"]


@pytest.mark.parametrize(("run", "message"), [
    ("rollback-all", "a rollback needs the policy input"),
    # Only files under policies/ are gated: they are the ones CODEOWNERS makes reviewers approve.
    ("outside-policies", "no policy under policies/ matches 'train/candidates/linear.yaml'"),
])
def test_a_dispatch_naming_no_reviewed_policy_is_refused(story, run, message):
    result = story.runs[run]
    plan = result.job("plan")
    assert plan.result == "failure"
    annotations = plan.legs[0].step("plan").annotations()
    assert any(a.startswith(f"::error::{message}") for a in annotations), result.describe()
    assert {result.job(j).result for j in ("gate", "dry-run", "rollback")} == {"skipped"}
    assert story.registry[run] == story.registry["bad-candidate"]


def test_without_the_tracking_secret_nothing_is_trained(story):
    run = story.runs["no-secret"]
    train = run.job("train")
    assert train.result == "failure"
    step = train.legs[0].steps[-1]
    assert step.returncode == 2
    assert "::error::secret MLFLOW_TRACKING_URI is not set" in step.stdout
    assert run.job("gate").result == "skipped"
    assert story.registry["no-secret"] == story.registry["bad-candidate"]
    assert not list(story.workspace.rglob("mlflow.db"))  # nor a local store instead


def test_no_secret_value_appears_anywhere(story, pr_runs):
    secrets = secret_values(story.secrets)
    leaks = [(where, secret) for run in [*story.runs.values(), *pr_runs.values()]
             for where, text in run.texts() for secret in secrets if secret in text]
    assert leaks == []
    # Nor in what the registry keeps: version tags, the training runs' tags and params. One
    # exception: MLflow records who created a run as `mlflow.user`, the authenticated user name
    # (an identity, which an auth-enabled server records anyway; never a password or token).
    client = story.client()
    user = story.secrets["MLFLOW_TRACKING_USERNAME"]
    for mv in client.search_model_versions(f"name = '{story.model}'"):
        kept = json.dumps([mv.tags, mv.source, mv.description])
        if mv.run_id:
            data = client.get_run(mv.run_id).data
            assert data.tags.get("mlflow.user") in (None, user)
            tags = {k: v for k, v in data.tags.items() if k != "mlflow.user"}
            kept += json.dumps([tags, data.params])
        assert not [s for s in secrets if s in kept], mv.version


# --------------------------------------------------------------------------------------------
# policy-check.yml on pull requests


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=smoke", "-c", "user.email=smoke@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=ws, check=True,
                          capture_output=True, text=True).stdout.strip()


def pull_request(root: Path, model: str, edited_policy: str) -> tuple[Path, Event]:
    """A git checkout as a pull_request run sees it: origin/main, and HEAD with the edit."""
    ws = workspace(root, model)
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "base")
    git(ws, "update-ref", "refs/remotes/origin/main", "HEAD")
    (ws / "policies" / "smoke.yaml").write_text(edited_policy)
    git(ws, "commit", "-qam", "edit the policy")
    return ws, Event.pull_request(7, "main", "tighten-policy", git(ws, "rev-parse", "HEAD"))


@pytest.fixture(scope="module")
def pr_runs(story, tmp_path_factory) -> dict[str, RunResult]:
    root = tmp_path_factory.mktemp("policy-check")
    runs = {}
    tightened = POLICY.format(model=story.model).replace("min: 0.3", "min: 0.99")
    ws, event = pull_request(root / "ws-edit", story.model, tightened)
    runs["edit"] = Runner(ws, root / "runner-edit", secrets=story.secrets).run(POLICY_CHECK, event)
    broken = POLICY.format(model=story.model).replace("max: 70", "max: seventy")
    ws, event = pull_request(root / "ws-broken", story.model, broken)
    runs["broken"] = Runner(ws, root / "runner-broken", secrets=story.secrets).run(POLICY_CHECK,
                                                                                   event)
    # A pull request from a fork: GitHub gives it no secrets.
    ws, event = pull_request(root / "ws-fork", story.model, tightened)
    runs["fork"] = Runner(ws, root / "runner-fork", secrets={}).run(POLICY_CHECK, event)
    for ws_dir in root.glob("ws-*"):
        shutil.rmtree(ws_dir / ".git", ignore_errors=True)
    return runs


def test_a_policy_edit_gets_its_preview_in_the_summary(pr_runs, story):
    run = pr_runs["edit"]
    assert run.job("validate").result == "success", run.describe()
    assert run.job("preview").result == "success", run.describe()
    summary = run.job("preview").summary
    assert "### Policy preview: `policies/smoke.yaml`" in summary
    assert "Base policy: `main:policies/smoke.yaml`" in summary
    # Production is version 1 now; version 2 passed under the base and fails r2 >= 0.99.
    assert "| 2 | promoted | **rejected** | **changed** |" in summary
    assert "| 1 | already | already | same |" in summary
    # Read-only: the preview wrote nothing.
    assert story.snapshot() == story.registry["no-secret"]


def test_an_invalid_policy_is_annotated_on_its_line_and_not_previewed(pr_runs):
    run = pr_runs["broken"]
    validate = run.job("validate")
    assert validate.result == "failure"
    annotations = validate.legs[0].step("Validate every policy (annotations on the offending "
                                        "lines)").annotations()
    assert any(a.startswith("::error file=policies/smoke.yaml,line=3,") and "rmse" in a
               for a in annotations), annotations
    assert run.job("preview").result == "skipped"


def test_a_pull_request_without_secrets_is_validated_and_not_previewed(pr_runs):
    run = pr_runs["fork"]
    assert run.job("validate").result == "success", run.describe()
    assert run.job("preview").result == "success", run.describe()
    assert "preview skipped" in run.job("preview").summary
    assert "Policy preview" not in run.job("preview").summary
