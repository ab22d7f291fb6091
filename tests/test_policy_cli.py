"""`promote policy validate` and `promote policy schema`: in-process, and as real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promotion.cli import run
from promotion.policy.files import policy_files
from promotion.policy.issues import Issue
from promotion.policy.listing import PolicyEntry, list_policies
from promotion.report.policy import github_annotation

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
        "from promotion.policy.load import load_policy\n"
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


# --------------------------------------------------------------------------------------------
# promote policy list


LISTED = """\
model: {model}
alias: {alias}
metrics:
  rmse: {{goal: minimize, max: 70}}
"""


def policy_tree(root: Path, files: dict[str, tuple[str, str]]) -> None:
    """Write policies/<name> for each name -> (model, alias)."""
    for name, (model, alias) in files.items():
        path = root / "policies" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LISTED.format(model=model, alias=alias))


@pytest.fixture
def listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with four policies: two for one (model, alias), one in a subdirectory."""
    policy_tree(tmp_path, {"a.yaml": ("churn", "Production"), "b.yaml": ("churn", "Production"),
                           "c.yml": ("churn", "Staging"), "team/d.yaml": ("fraud", "Production")})
    (tmp_path / "policies" / "schema.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def matrix(out: str) -> list[tuple[str, str, str]]:
    assert out.endswith("\n") and out.count("\n") == 1  # one line, for $GITHUB_OUTPUT
    document = json.loads(out)
    assert list(document) == ["include"]
    return [(e["policy"], e["model"], e["alias"]) for e in document["include"]]


def test_list_prints_every_policy_in_file_order(
    listed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["policy", "list"]) == 0
    assert capsys.readouterr() == ("policies/a.yaml: churn@Production\n"
                                   "policies/b.yaml: churn@Production\n"
                                   "policies/c.yml: churn@Staging\n"
                                   "policies/team/d.yaml: fraud@Production\n", "")


def test_list_as_a_github_matrix(listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "list", "--format", "github-matrix"]) == 0
    out, err = capsys.readouterr()
    assert matrix(out) == [("policies/a.yaml", "churn", "Production"),
                           ("policies/b.yaml", "churn", "Production"),
                           ("policies/c.yml", "churn", "Staging"),
                           ("policies/team/d.yaml", "fraud", "Production")]
    assert err == ""


def test_list_as_json(listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "list", "--format", "json", "--select", "fraud"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert next(iter(document)) == "schema_version"  # first, like every --json document
    assert document == {"schema_version": 1, "kind": "policy-list", "policies": [
        {"policy": "policies/team/d.yaml", "model": "fraud", "alias": "Production",
         "watched": False, "rollout": False}]}


@pytest.mark.parametrize(("select", "expected"), [
    ("churn", ["policies/a.yaml", "policies/b.yaml", "policies/c.yml"]),  # every policy of it
    ("policies/c.yml", ["policies/c.yml"]),
    ("./policies/team/../c.yml", ["policies/c.yml"]),  # the same file, spelled differently
    ("", ["policies/a.yaml", "policies/b.yaml", "policies/c.yml", "policies/team/d.yaml"]),
])
def test_list_select_names_a_file_or_a_model(
    listed: Path, capsys: pytest.CaptureFixture[str], select: str, expected: list[str]
) -> None:
    assert run(["policy", "list", "--select", select, "--format", "github-matrix"]) == 0
    assert [policy for policy, _, _ in matrix(capsys.readouterr().out)] == expected


def test_list_select_by_absolute_path(listed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absolute = str(listed / "policies" / "a.yaml")
    assert run(["policy", "list", "--select", absolute]) == 0
    assert capsys.readouterr().out == "policies/a.yaml: churn@Production\n"


def test_list_per_alias_keeps_the_first_policy_of_each_model_and_alias(
    listed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["policy", "list", "--per-alias", "--format", "github-matrix"]) == 0
    assert matrix(capsys.readouterr().out) == [("policies/a.yaml", "churn", "Production"),
                                               ("policies/c.yml", "churn", "Staging"),
                                               ("policies/team/d.yaml", "fraud", "Production")]
    assert run(["policy", "list", "--per-alias", "--select", "policies/b.yaml"]) == 0
    assert capsys.readouterr().out == "policies/b.yaml: churn@Production\n"


WATCH_BLOCK = """\
watch:
  rules:
    error_rate: {max: 5%}
"""
ROLLOUT_BLOCK = """\
rollout:
  steps: [10%, 50%]
  rules:
    error_rate: {max: 5%}
"""


@pytest.fixture
def blocks(listed: Path) -> Path:
    """The `listed` repository where a.yaml is watched, c.yml rolls out and d.yaml does both."""
    for name, extra in {"a.yaml": WATCH_BLOCK, "c.yml": ROLLOUT_BLOCK,
                        "team/d.yaml": WATCH_BLOCK + ROLLOUT_BLOCK}.items():
        path = listed / "policies" / name
        path.write_text(path.read_text() + extra)
    return listed


@pytest.mark.parametrize(("flags", "expected"), [
    (["--watched"], [("policies/a.yaml", "churn", "Production"),
                     ("policies/team/d.yaml", "fraud", "Production")]),
    (["--rollouts"], [("policies/c.yml", "churn", "Staging"),
                      ("policies/team/d.yaml", "fraud", "Production")]),
    (["--watched", "--rollouts"], [("policies/team/d.yaml", "fraud", "Production")]),
    # Narrowed after the selection: a model whose policies have none of it lists nothing.
    (["--rollouts", "--select", "churn"], [("policies/c.yml", "churn", "Staging")]),
    (["--rollouts", "--select", "policies/a.yaml"], []),
    (["--watched", "--select", "policies/c.yml"], []),
])
def test_list_watched_or_rolling_out_keeps_the_policies_with_that_block(
    blocks: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
    expected: list[tuple[str, str, str]]
) -> None:
    # None is not an error (exit 0, an empty matrix): a repository may watch or roll out nothing.
    assert run(["policy", "list", *flags, "--format", "github-matrix"]) == 0
    out, err = capsys.readouterr()
    assert matrix(out) == expected and err == ""


def test_list_says_which_block_each_policy_has(
    blocks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["policy", "list", "--format", "json"]) == 0
    policies = json.loads(capsys.readouterr().out)["policies"]
    assert [(p["policy"], p["watched"], p["rollout"]) for p in policies] == [
        ("policies/a.yaml", True, False), ("policies/b.yaml", False, False),
        ("policies/c.yml", False, True), ("policies/team/d.yaml", True, True)]
    assert run(["policy", "list", "--rollouts", "--format", "github-matrix"]) == 0
    entries = json.loads(capsys.readouterr().out)["include"]
    assert [(e["watched"], e["rollout"]) for e in entries] == [(False, True), (True, True)]
    assert run(["policy", "list", "--rollouts"]) == 0  # text: the same entries, one a line
    assert capsys.readouterr().out == ("policies/c.yml: churn@Staging\n"
                                       "policies/team/d.yaml: fraud@Production\n")
    assert list_policies([], rollouts=True, per_alias=True).entries == (
        PolicyEntry("policies/c.yml", "churn", "Staging", rollout=True),
        PolicyEntry("policies/team/d.yaml", "fraud", "Production", watched=True, rollout=True))


def test_list_rollouts_of_a_selection_matching_nothing_is_still_exit_2(
    blocks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["policy", "list", "--rollouts", "--select", "nobody",
                "--format", "github-matrix"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("::error::no policy under policies/ matches 'nobody'")


@pytest.mark.parametrize("select", ["nobody", "policies/missing.yaml", "policies",
                                    "Churn"])  # model names are exact
def test_list_a_selection_matching_nothing_is_exit_2(
    listed: Path, capsys: pytest.CaptureFixture[str], select: str
) -> None:
    assert run(["policy", "list", "--select", select]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"no policy under policies/ matches {select!r}: ")


def test_list_only_counts_files_under_the_given_paths(
    listed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A valid policy elsewhere in the checkout (not reviewed as policies/ is) cannot be picked.
    policy_tree(listed / "elsewhere", {"x.yaml": ("churn", "Production")})
    outside = "elsewhere/policies/x.yaml"
    assert run(["policy", "list", "--select", outside, "--format", "github-matrix"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0] == (f"::error::no policy under policies/ matches {outside!r}: "
                                   "name a policy file there or a model (4 policy file(s) found)")
    # Given as a path, the other directory is what counts instead.
    assert run(["policy", "list", "elsewhere/policies", "--select", outside]) == 0
    assert capsys.readouterr().out == f"{outside}: churn@Production\n"
    assert run(["policy", "list", "elsewhere/policies", "--select", "policies/a.yaml"]) == 2
    assert "no policy under elsewhere/policies/ matches 'policies/a.yaml'" in \
        capsys.readouterr().err


def test_list_refuses_an_invalid_policy_with_annotations(
    listed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BAD, listed / "policies" / "bad.yaml")
    assert run(["policy", "list", "--format", "github-matrix", "--select", "fraud"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no matrix, not even a partial one
    assert err.splitlines() == [
        "::error file=policies/bad.yaml,line=6,col=10::metrics.rmse.max: expected a finite "
        "number, got 'seventy'",
        *[line.replace(str(BAD), "policies/bad.yaml") for line in expected_lines(BAD)]]


def test_list_without_policies_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["policy", "list", "--format", "github-matrix"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("::error::no policies/ directory here")


def test_list_refuses_a_matrix_github_would_refuse(
    listed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import promotion.report.policy as policy_report

    monkeypatch.setattr(policy_report, "MATRIX_LIMIT", 3)
    assert run(["policy", "list", "--format", "github-matrix"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "4 policies selected: a GitHub Actions matrix runs at most 3 jobs" in err
    assert run(["policy", "list", "--format", "github-matrix", "--select", "churn"]) == 0
    assert len(matrix(capsys.readouterr().out)) == 3
    assert run(["policy", "list"]) == 0  # the limit is GitHub's: other formats have none


def test_list_entries_as_a_function(listed: Path) -> None:
    listing = list_policies(["policies/team", "policies/a.yaml"], per_alias=True)
    assert listing.entries == (PolicyEntry("policies/team/d.yaml", "fraud", "Production"),
                               PolicyEntry("policies/a.yaml", "churn", "Production"))


def test_list_a_model_name_that_needs_escaping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "it's \"quoted\" \\ and ünïcode"
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "q.yaml").write_text(LISTED.format(model=json.dumps(name),
                                                                alias="Production"))
    monkeypatch.chdir(tmp_path)
    assert run(["policy", "list", "--select", name, "--format", "github-matrix"]) == 0
    assert matrix(capsys.readouterr().out) == [("policies/q.yaml", name, "Production")]


def test_list_never_imports_mlflow() -> None:
    code = (
        "import sys\n"
        "from promotion.cli import run\n"
        "assert run(['policy', 'list', '--format', 'github-matrix']) == 0\n"
        "assert run(['policy', 'list', '--select', 'nothing-like-this']) == 2\n"
        "leaked = sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.'))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_validate_never_imports_mlflow_numpy_or_pandas() -> None:
    code = ("import sys; from promotion.cli import run; "
            "rc = run(['policy', 'validate', 'policies/']); "
            "print('RC', rc, 'HEAVY', sorted(m for m in ('mlflow', 'numpy', 'pandas') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "RC 0 HEAVY []"


# --------------------------------------------------------------------------------------------
# Which files are policies: one rule for validate, list and the demo


def test_directories_are_searched_recursively_skipping_dot_names(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", ".draft.yaml", "notes.txt", "team/c.yaml",
                 ".github/d.yaml", "team/.e.yml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE, tmp_path / name)
    expected = [str(tmp_path / n) for n in ("a.yml", "b.yaml", "team/c.yaml")]
    assert policy_files([str(tmp_path)]) == expected
    assert policy_files([tmp_path, str(tmp_path / "b.yaml")]) == expected  # no duplicates


def test_the_demo_gates_with_the_policies_validate_sees(tmp_path: Path) -> None:
    from promotion.demo import policies_for

    model = yaml.safe_load(EXAMPLE.read_text())["model"]
    for name in ("a.yaml", "team/b.yml", ".hidden.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE, tmp_path / name)
    paths = [policy.path for policy in policies_for(model, tmp_path)]
    assert paths == policy_files([str(tmp_path)]) == [str(tmp_path / "a.yaml"),
                                                       str(tmp_path / "team" / "b.yml")]
