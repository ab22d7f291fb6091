"""`promote policy validate` and `promote policy schema`: in-process, and as real processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promotion.cli import run
from promotion.commands.policy import github_annotation, policy_files
from promotion.policyfile import Issue

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "data" / "policies"
VALID_DIR = FIXTURES / "valid"
INVALID_DIR = FIXTURES / "invalid"
EXAMPLE = VALID_DIR / "example.yaml"
BAD = INVALID_DIR / "threshold-not-number.yaml"


def expected_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{path}:{line.removeprefix('# expect: ')}" for line in lines
            if line.startswith("# expect: ")]


def test_valid_directory_exits_0_and_lists_each_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "validate", str(VALID_DIR)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"ok  {p}" for p in sorted(VALID_DIR.glob("*.yaml"))]
    assert err == ""


def test_invalid_directory_exits_2_and_prints_every_issue_of_every_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["policy", "validate", str(INVALID_DIR)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    expected = [line for path in sorted(INVALID_DIR.glob("*.yaml"))
                for line in expected_lines(path)]
    assert err.splitlines() == expected


def test_mixed_files_print_ok_lines_and_issues(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "validate", str(EXAMPLE), str(BAD)]) == 2
    out, err = capsys.readouterr()
    assert out == f"ok  {EXAMPLE}\n"
    assert err.splitlines() == expected_lines(BAD)


def test_github_format_prints_annotations(capsys: pytest.CaptureFixture[str]) -> None:
    negative = INVALID_DIR / "negative-percent-margin.yaml"
    assert run(["policy", "validate", "--format", "github", str(BAD), str(negative)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"::error file={BAD},line=6,col=10::metrics.rmse.max: expected a finite number, "
        "got 'seventy'",
        f"::error file={negative},line=6,col=21::metrics.r2.max_regression: a margin cannot be "
        "negative, got '-2%25'",
    ]
    assert err.splitlines() == expected_lines(BAD) + expected_lines(negative)


def test_github_annotation_escaping() -> None:
    issue = Issue("dir,x/a:b.yaml", 3, 4, "metrics.r2", "100% wrong\r\nreally")
    assert github_annotation(issue) == (
        "::error file=dir%2Cx/a%3Ab.yaml,line=3,col=4::metrics.r2: 100%25 wrong%0D%0Areally")
    whole_file = Issue("p.yaml", 0, 0, "", "cannot read the file: Permission denied")
    assert github_annotation(whole_file) == "::error file=p.yaml::cannot read the file: " \
                                            "Permission denied"


def test_default_is_the_policies_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policies" / "team").mkdir(parents=True)
    shutil.copy(EXAMPLE, tmp_path / "policies" / "a.yaml")
    shutil.copy(EXAMPLE, tmp_path / "policies" / "team" / "b.yml")
    (tmp_path / "policies" / "schema.json").write_text("{}")
    (tmp_path / "policies" / "notes.txt").write_text("not a policy")
    monkeypatch.chdir(tmp_path)
    assert run(["policy", "validate"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == ["ok  policies/a.yaml", "ok  policies/team/b.yml"]


def test_without_a_policies_directory_the_default_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["policy", "validate"]) == 2
    assert "no policies/ directory here" in capsys.readouterr().err


def test_a_directory_without_policies_and_a_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(["policy", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: no *.yaml or *.yml files in this directory\n"
    missing = tmp_path / "missing.yaml"
    assert run(["policy", "validate", str(missing)]) == 2
    assert capsys.readouterr().err == f"{missing}: cannot read the file: No such file or " \
                                      "directory\n"


def test_policy_files_keeps_explicit_paths_and_drops_duplicates() -> None:
    assert policy_files([str(EXAMPLE), str(EXAMPLE)]) == [str(EXAMPLE)]


def test_the_repository_policies_are_valid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert run(["policy", "validate"]) == 0
    assert "ok  policies/diabetes-regressor.yaml" in capsys.readouterr().out.splitlines()


def test_schema_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "schema"]) == 0
    assert capsys.readouterr().out == (REPO / "policies" / "schema.json").read_text()


def test_policy_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "validate" in out and "schema" in out


def test_the_pre_commit_hook_runs_the_validator_on_policy_files() -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["entry"], hook["language"]) == (
        "promote-policy-validate", "promote policy validate", "python")
    import re

    files = re.compile(hook["files"])
    assert files.search("policies/diabetes-regressor.yaml")
    assert files.search("policies/team/x.yml")
    assert not files.search("policies/schema.json")
    assert not files.search("train/config.yaml")


# --------------------------------------------------------------------------------------------
# Real processes


def test_the_promote_entry_point(tmp_path: Path) -> None:
    promote = Path(sys.executable).parent / "promote"
    if not promote.exists():
        pytest.skip("the promote script is not installed in this environment")
    ok = subprocess.run([str(promote), "policy", "validate"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert "ok  policies/diabetes-regressor.yaml" in ok.stdout.splitlines()
    bad = subprocess.run([str(promote), "policy", "validate", str(BAD)], capture_output=True,
                         text=True, timeout=60)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.splitlines() == expected_lines(BAD)


def test_validation_never_imports_mlflow() -> None:
    code = (
        "import sys\n"
        "from promotion.policies import load_policy\n"
        "from promotion.cli import run\n"
        "policy = load_policy('policies/diabetes-regressor.yaml')\n"
        "assert policy.model == 'diabetes-regressor'\n"
        "assert run(['policy', 'validate', 'policies', 'tests/data/policies/valid']) == 0\n"
        "assert run(['policy', 'validate', 'tests/data/policies/invalid']) == 2\n"
        "assert run(['policy', 'schema']) == 0\n"
        "leaked = sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.'))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
