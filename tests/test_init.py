"""`promote init`: a working starting point written into a real git repository.

The unit tests write into fresh `git init` directories and check what was written with the real
tools: `promote policy validate`, the training config reader, check-jsonschema and zizmor (as
tests/test_workflows_lint.py runs them), and this repository's own workflows (the generated
callers must call the same reusable workflows with inputs and secrets they declare). They also
check what init refuses: an existing file (nothing written, bytes and times unchanged), a
directory that is not a git work tree, bad options.

The end-to-end test (marker `mlflow`) runs the generated promote.yml on a push with the local
workflow runner, against the real MLflow test server: the train job registers versions, the gate
job promotes one, and `Production` is on it in the registry. Then the generated policy-check.yml
on a pull request.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from promotion import __version__
from promotion.cli import run
from promotion.policy.load import load_policy

REPO = Path(__file__).resolve().parent.parent
OWN_WORKFLOWS = REPO / ".github" / "workflows"
GENERATED = ("promote.yml", "policy-check.yml", "monitor.yml")
SHA = "0123456789abcdef0123456789abcdef01234567"
USES = re.compile(r"^\s*uses:\s*(?P<ref>\S+)\s*#\s*(?P<comment>.*)$", re.M)


def git_init(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_init(tmp_path / "fraud-detector")


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`promote init ARGS` in this process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


def targets(model: str) -> list[str]:
    return [f"policies/{model}.yaml", f"train/candidates/{model}.yaml",
            *(f".github/workflows/{name}" for name in GENERATED)]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file outside .git: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def load_workflow(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as True
        data["on"] = data.pop(True)
    return data


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    if not beside.exists():
        pytest.fail(f"{name} is not installed: it is in the test extra")
    return str(beside)


# --------------------------------------------------------------------------------------------
# What init writes


def test_writes_a_starting_point_that_validates(repo, capsys):
    code, out, err = init(capsys, str(repo))
    assert code == 0, err
    for rel in [*targets("fraud-detector"), ".github/CODEOWNERS"]:
        assert (repo / rel).is_file(), rel
        assert rel in out
    for needed in ("MLFLOW_TRACKING_URI", "training", "production", "registry-read"):
        assert needed in out
    # The real validator, as a user would run it.
    code, out, err = init_validate(capsys, repo / "policies")
    assert code == 0, err
    assert f"ok  {repo / 'policies' / 'fraud-detector.yaml'}" in out

    policy = load_policy(repo / "policies" / "fraud-detector.yaml")
    assert (policy.model, policy.alias) == ("fraud-detector", "Production")
    assert [(m.name, m.goal) for m in policy.metrics] == [("rmse", "minimize")]
    first = (repo / "policies" / "fraud-detector.yaml").read_text().splitlines()[0]
    assert first == ("# yaml-language-server: $schema=https://raw.githubusercontent.com/"
                     f"mlflow-promote/promote/v{__version__}/policies/schema.json")


def init_validate(capsys, path: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(["policy", "validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_training_config_is_one_promote_train_accepts(repo, capsys):
    from promotion.training.config import load_config

    assert init(capsys, str(repo), "--model", "fraud")[0] == 0
    config = load_config(repo / "train" / "candidates" / "fraud.yaml")
    assert config.model == "fraud"


def test_one_rule_per_metric(repo, capsys):
    code, _, err = init(capsys, str(repo), "--model", "churn", "--metric", "r2:maximize",
                        "--metric", "mae:minimize", "--metric", "roc_auc:maximize")
    assert code == 0, err
    policy = load_policy(repo / "policies" / "churn.yaml")
    rules = {m.name: m for m in policy.metrics}
    assert [(m.name, m.goal) for m in policy.metrics] == [
        ("r2", "maximize"), ("mae", "minimize"), ("roc_auc", "maximize")]
    assert rules["r2"].min == 0 and rules["roc_auc"].min == 0.5
    assert rules["r2"].min_improvement is not None  # the first must improve
    assert rules["mae"].max_regression is not None  # the others must not regress


def test_a_model_name_that_is_no_file_name(repo, capsys):
    code, _, err = init(capsys, str(repo), "--model", "Fraud Detector")
    assert code == 0, err
    policy = load_policy(repo / "policies" / "Fraud-Detector.yaml")
    assert policy.model == "Fraud Detector"


def test_the_default_model_is_the_directory_name_made_valid(tmp_path, capsys):
    repo = git_init(tmp_path / "My Repo!")
    assert init(capsys, str(repo))[0] == 0
    assert load_policy(repo / "policies" / "My-Repo.yaml").model == "My-Repo"


def test_the_test_command_only_when_the_repository_has_one(repo, tmp_path, capsys):
    assert init(capsys, str(repo))[0] == 0
    job = only_job(load_workflow(repo / ".github" / "workflows" / "promote.yml"))
    assert "test-command" not in job["with"]
    assert "# test-command: make test" in (repo / ".github/workflows/promote.yml").read_text()

    other = git_init(tmp_path / "with-tests")
    (other / "Makefile").write_text("install:\n\ttrue\n\ntest: install\n\tpytest\n")
    assert init(capsys, str(other))[0] == 0
    job = only_job(load_workflow(other / ".github" / "workflows" / "promote.yml"))
    assert job["with"]["test-command"] == "make test"


# --------------------------------------------------------------------------------------------
# Never overwrite; CODEOWNERS once


def test_a_second_run_writes_nothing_and_names_every_file(repo, capsys):
    assert init(capsys, str(repo))[0] == 0
    before = snapshot(repo)
    code, _, err = init(capsys, str(repo))
    assert code == 2
    for rel in targets("fraud-detector"):
        assert rel in err
    assert ".github/CODEOWNERS" not in err  # appended to, never a reason to stop
    assert snapshot(repo) == before


def test_one_existing_file_stops_everything(repo, capsys):
    (repo / "policies").mkdir()
    (repo / "policies" / "fraud-detector.yaml").write_text("mine\n")
    before = snapshot(repo)
    code, _, err = init(capsys, str(repo))
    assert code == 2
    assert "policies/fraud-detector.yaml" in err and "--force" in err
    assert "train/candidates" not in err
    assert snapshot(repo) == before
    assert not (repo / ".github").exists()


def test_force_overwrites_and_codeowners_gets_its_lines_once(repo, capsys):
    codeowners = repo / ".github" / "CODEOWNERS"
    codeowners.parent.mkdir()
    codeowners.write_text("*  @acme/everyone")  # no final newline
    assert init(capsys, str(repo))[0] == 0
    policy = repo / "policies" / "fraud-detector.yaml"
    generated = policy.read_bytes()
    policy.write_text("edited\n")
    code, out, err = init(capsys, str(repo), "--force")
    assert code == 0, err
    assert "overwrote policies/fraud-detector.yaml".replace(" ", "") in out.replace(" ", "")
    assert policy.read_bytes() == generated
    text = codeowners.read_text()
    assert text.startswith("*  @acme/everyone\n")
    assert text.count("# Promote: policies decide") == 1
    # Without --owner the lines are a placeholder, commented out, and the next steps say so.
    assert "\n/policies/" not in text and "# /policies/" in text
    assert "@your-org/ml-platform" in out


def test_owners_are_written_uncommented(repo, capsys):
    code, _, err = init(capsys, str(repo), "--owner", "@acme/ml", "--owner", "ops@acme.example")
    assert code == 0, err
    lines = (repo / ".github" / "CODEOWNERS").read_text().splitlines()
    assert "/policies/              @acme/ml ops@acme.example" in lines
    assert "/.github/workflows/     @acme/ml ops@acme.example" in lines


# --------------------------------------------------------------------------------------------
# Refusals


def test_refuses_a_directory_that_is_not_a_git_work_tree(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    code, _, err = init(capsys, str(plain))
    assert code == 2
    assert str(plain) in err and "git" in err
    assert list(plain.iterdir()) == []


def test_refuses_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "missing"
    code, _, err = init(capsys, str(missing))
    assert code == 2
    assert str(missing) in err
    assert not missing.exists()


def test_refuses_a_directory_below_the_top_of_the_work_tree(repo, capsys):
    below = repo / "sub"
    below.mkdir()
    code, _, err = init(capsys, str(below))
    assert code == 2
    assert str(below) in err
    assert list(below.iterdir()) == []


@pytest.mark.parametrize(("option", "value"), [
    ("--metric", "rmse"), ("--metric", "rmse:down"), ("--metric", ""), ("--metric", ":minimize"),
    ("--metric", "rm se:minimize"), ("--model", "a/b"), ("--model", " "), ("--ref", "v1 #x"),
    ("--ref", "-x"), ("--owner", "acme"),
])
def test_bad_options_are_refused_by_name(repo, capsys, option, value):
    code, _, err = init(capsys, str(repo), option, value)
    assert code == 2
    assert option in err
    assert [p.name for p in repo.iterdir()] == [".git"]


def test_a_metric_given_twice_is_refused(repo, capsys):
    code, _, err = init(capsys, str(repo), "--metric", "rmse:minimize", "--metric",
                        "rmse:maximize")
    assert code == 2 and "--metric" in err and "twice" in err


def test_help_does_not_import_mlflow():
    code = ("import sys; from promotion.cli import run; rc = run(sys.argv[1:]); "
            "print('RC', rc, 'HEAVY', sorted(m for m in ('mlflow', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, "init", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip().splitlines()[-1] == "RC 0 HEAVY []", proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# The workflows: linted, and callers of the reusable workflows like this repository's own


def only_job(workflow: dict[str, Any]) -> dict[str, Any]:
    (job,) = workflow["jobs"].values()
    return job


@pytest.fixture
def pinned(repo: Path, capsys) -> Path:
    code, _, err = init(capsys, str(repo), "--ref", SHA)
    assert code == 0, err
    return repo / ".github" / "workflows"


def test_workflows_are_schema_valid(pinned):
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *(str(pinned / n) for n in GENERATED)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def zizmor(files: list[Path]) -> list[dict[str, Any]]:
    proc = subprocess.run([tool("zizmor"), "--offline", "--no-progress", "--persona=regular",
                           "--format", "json", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode in {0, 10, 11, 12, 13, 14}, proc.stderr
    findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return findings


def test_pinned_workflows_are_zizmor_clean(pinned):
    assert zizmor([pinned / n for n in GENERATED]) == []


def test_a_tag_ref_is_only_flagged_as_unpinned(repo, capsys):
    """The default ref is the release tag: zizmor asks for a commit, and so do the next steps."""
    code, out, _ = init(capsys, str(repo))
    assert code == 0
    findings = zizmor([repo / ".github" / "workflows" / n for n in GENERATED])
    assert {f["ident"] for f in findings} == {"unpinned-uses"}
    assert len(findings) == len(GENERATED)
    assert "git ls-remote" in out and "--ref" in out


def test_each_workflow_calls_its_reusable_workflow_pinned_with_explicit_secrets(pinned):
    for name, reusable in (("promote.yml", "reusable-train-and-gate.yml"),
                           ("policy-check.yml", "reusable-policy-check.yml"),
                           ("monitor.yml", "reusable-monitor.yml")):
        text = (pinned / name).read_text()
        ((ref, comment),) = USES.findall(text)
        assert ref == f"mlflow-promote/promote/.github/workflows/{reusable}@{SHA}"
        assert comment.strip() == f"v{__version__}"
        job = only_job(load_workflow(pinned / name))
        assert isinstance(job["secrets"], dict), "secrets: inherit"
        assert "secrets: inherit" not in text
        assert "promote-source" not in job.get("with", {})
        declared = load_workflow(OWN_WORKFLOWS / reusable)["on"]["workflow_call"]
        assert set(job.get("with", {})) <= set(declared.get("inputs") or {}), name
        assert set(job["secrets"]) <= set(declared.get("secrets") or {}), name
        for secret, value in job["secrets"].items():
            assert value == f"${{{{ secrets.{secret} }}}}", (name, secret)


def test_workflows_mirror_this_repositorys_callers(pinned):
    """Same triggers, permissions, concurrency, inputs and secrets as the callers this repository
    runs itself, but Promote from PyPI (no promote-source) and no test command by default."""
    for name in GENERATED:
        ours, theirs = load_workflow(OWN_WORKFLOWS / name), load_workflow(pinned / name)
        mine, own = only_job(theirs), only_job(ours)
        assert list(theirs["jobs"]) == list(ours["jobs"]), name
        assert theirs["permissions"] == ours["permissions"], name
        assert theirs.get("concurrency") == ours.get("concurrency"), name
        assert set(theirs["on"]) == set(ours["on"]), name
        for event, spec in ours["on"].items():
            if isinstance(spec, dict):
                spec = {k: v for k, v in spec.items() if k != "paths"}
                assert {k: v for k, v in (theirs["on"][event] or {}).items()
                        if k != "paths"} == spec, (name, event)
        assert mine["secrets"] == own["secrets"], name
        skip = {"promote-source", "test-command"}
        assert ({k: v for k, v in mine.get("with", {}).items() if k not in skip}
                == {k: v for k, v in own.get("with", {}).items() if k not in skip}), name
        assert {k: v for k, v in mine.items() if k not in {"uses", "with", "secrets"}} == \
            {k: v for k, v in own.items() if k not in {"uses", "with", "secrets"}}, name
        reusable = mine["uses"].split("/")[-1].split("@")[0]
        assert own["uses"] in {f"./.github/workflows/{reusable}", f"$/.github/workflows/{reusable}"}
    paths = load_workflow(pinned / "promote.yml")["on"]["push"]["paths"]
    assert "promotion/**" not in paths and {"train/**", "policies/**"} <= set(paths)


# --------------------------------------------------------------------------------------------
# End to end: the generated workflows run, against the real MLflow server


LINEAR = """\
model: {model}
description: A second candidate, the linear baseline.
estimator: linear
params: {{}}
data: sklearn:load_diabetes
split: {{test_size: 0.25, seed: 42}}
"""


@pytest.mark.mlflow
def test_the_generated_workflows_train_gate_and_check(mlflow_server, tmp_path, capsys):
    from mlflow import MlflowClient
    from workflow_runner import Event, Runner, seed_promote_install

    model = f"init-e2e-{uuid.uuid4().hex[:8]}"
    ws = git_init(tmp_path / "project")
    code, _, err = init(capsys, str(ws), "--model", model)
    assert code == 0, err
    (ws / "train" / "candidates" / "linear.yaml").write_text(LINEAR.format(model=model))
    git = ["git", "-C", str(ws), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "Promote"], check=True)

    tool_cache = tmp_path / "toolcache"
    seed_promote_install(tool_cache, __version__, "3.11", REPO)
    runner = Runner(ws, tmp_path / "runner", secrets={"MLFLOW_TRACKING_URI": mlflow_server},
                    repositories={"mlflow-promote/promote": REPO}, tool_cache=tool_cache)
    result = runner.run(ws / ".github" / "workflows" / "promote.yml", Event.push())
    assert result.jobs["promote"].result == "success", result.describe()
    called = result.jobs["promote"].called
    assert (called["train"].result, called["gate"].result) == ("success", "success")
    passed = only_job(load_workflow(ws / ".github" / "workflows" / "promote.yml"))["secrets"]
    assert result.jobs["promote"].secrets == sorted(passed)  # by name, as written

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model}'"))
    assert versions == [1, 2]
    outputs = result.jobs["promote"].outputs
    holder = client.get_model_version_by_alias(model, "Production")
    assert outputs["decision"] == "promoted"
    assert holder.version == outputs["production_version"]
    assert holder.tags.get("data_validated") == "true"

    event = Event.pull_request(1, "main", "edit-policy", "0" * 40)
    checked = Runner(ws, tmp_path / "runner-pr", repositories={"mlflow-promote/promote": REPO},
                     tool_cache=tool_cache).run(ws / ".github" / "workflows" / "policy-check.yml",
                                                event)
    assert checked.jobs["check"].result == "success", checked.describe()
    assert checked.jobs["check"].called["validate"].result == "success"
    assert checked.jobs["check"].outputs["previewed"] == "false"  # no credentials: skipped
