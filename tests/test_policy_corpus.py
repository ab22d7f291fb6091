"""The policy language, pinned by a corpus of fixtures.

tests/data/policies/valid/*.yaml must load. Each tests/data/policies/invalid/*.yaml states the exact
issues it must produce in leading `# expect: LINE:COL: key: message` comments (one per issue, in
order); the file name is left out since it is the fixture's own path. Cases that cannot be a
committed file (too large, not UTF-8, zero bytes) are generated below.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from pathlib import Path

import pytest

from promotion.policy.load import Issue, PolicyError, load_policy, parse_policy
from promotion.policy.model import Budget, Candidate, Evaluation, Margin, MetricRule
from promotion.policy.yamlfile import MAX_BYTES, MAX_DEPTH, read_document

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "data" / "policies"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
SHIPPED = REPO / "policies" / "diabetes-regressor.yaml"
MARKER = "promote-pwned-marker"  # what the !!python/object/apply fixture would create


def expectations(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


def issue_lines(error: PolicyError, name: str) -> list[str]:
    lines = error.lines()
    assert all(line.startswith(f"{name}:") for line in lines), lines
    return [line.removeprefix(f"{name}:") for line in lines]


def test_the_corpus_is_large_enough_and_every_fixture_states_its_issues() -> None:
    assert len(VALID) >= 4
    assert len(INVALID) >= 30
    for path in INVALID:
        assert expectations(path), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_policy_reports_exactly_the_expected_issues(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative `touch` in a hostile fixture would land here
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert issue_lines(info.value, str(path)) == expectations(path)
    assert all(isinstance(issue, Issue) and issue.file == str(path)
               for issue in info.value.issues)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_policy_loads(path: Path) -> None:
    policy = load_policy(path)
    assert policy.path == str(path)
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_documented_example_means_what_its_comments_say() -> None:
    policy = load_policy(FIXTURES / "valid" / "example.yaml")
    assert policy.model == "diabetes-regressor"
    assert policy.alias == "Production"
    assert policy.candidate == Candidate("latest")
    assert policy.when_no_production == "promote"
    assert policy.metrics == (
        MetricRule("rmse", "minimize", max=70.0, min_improvement=Margin(0.01, relative=True)),
        MetricRule("r2", "maximize", min=0.35, max_regression=Margin(0.02)),
    )
    assert policy.require_tags == (("data_validated", "true"),)
    assert policy.evaluation is None and policy.budgets == ()


def test_the_extension_example() -> None:
    policy = load_policy(FIXTURES / "valid" / "extension.yaml")
    assert policy.evaluation == Evaluation(
        data=str(FIXTURES.resolve() / "valid" / "data" / "diabetes-eval.csv"),
        target="target", confidence=0.95, resamples=2000, seed=0, test_size=None)
    assert os.path.isabs(policy.evaluation.data)
    rmse = policy.metrics[0]
    assert (rmse.source, rmse.significant, rmse.min_improvement) == ("evaluation", True, Margin(0))
    assert policy.budgets == (Budget("latency_p95_ms", max_increase=Margin(0.2, relative=True)),
                              Budget("size_mb", max=50.0))


def test_sklearn_evaluation_gets_the_default_test_size_only_when_unset() -> None:
    policy = load_policy(FIXTURES / "valid" / "extension-sklearn.yaml")
    assert policy.evaluation is not None
    assert (policy.evaluation.data, policy.evaluation.test_size) == ("sklearn:load_diabetes", 0.25)
    assert policy.candidate == Candidate("alias", "challenger")
    text = "model: m\nevaluation: {data: 'sklearn:load_iris', target: target}\n" \
           "metrics: {accuracy: {goal: maximize, source: evaluation, min: 0.9}}\n"
    evaluation = parse_policy(text, "p.yaml").evaluation
    assert evaluation is not None and evaluation.test_size == 0.25


def test_anchors_aliases_and_merge_keys_share_rules() -> None:
    policy = load_policy(FIXTURES / "valid" / "anchors.yaml")
    rmse, mae, r2 = policy.metrics
    assert (mae.goal, mae.max, mae.min_improvement) == (rmse.goal, 75.0, Margin(0.5))
    assert (r2.goal, r2.min, r2.max_regression) == ("maximize", -1.0, Margin(0.0, relative=True))
    assert policy.model == 'team\'s "diabetes" model v2'
    assert policy.candidate == Candidate("version", "12")


def test_the_shipped_policy_is_valid_and_validates_in_milliseconds() -> None:
    policy = load_policy(SHIPPED)
    assert policy.model == "diabetes-regressor"
    assert {m.name: m.goal for m in policy.metrics} == {"rmse": "minimize", "r2": "maximize",
                                                       "mae": "minimize"}
    assert policy.require_tags == (("data_validated", "true"),)
    assert SHIPPED.read_text().startswith("# yaml-language-server: $schema=schema.json\n")
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        load_policy(SHIPPED)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.05


# --------------------------------------------------------------------------------------------
# Cases generated at run time


def _issues_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return issue_lines(info.value, str(path))


def test_a_file_over_1_mib_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"model: m\nmetrics: {rmse: {goal: minimize, max: 1}}\n"
                     + b"# padding\n" * (MAX_BYTES // 10))
    assert path.stat().st_size > MAX_BYTES
    assert _issues_of(path) == [f" file is larger than 1 MiB ({path.stat().st_size} bytes)"]


def test_a_file_of_exactly_1_mib_is_read(tmp_path: Path) -> None:
    head = b"model: m\nmetrics: {rmse: {goal: minimize, max: 1}}\n"
    path = tmp_path / "limit.yaml"
    path.write_bytes(head + b"#" * (MAX_BYTES - len(head)))
    assert load_policy(path).model == "m"


def test_bytes_that_are_not_utf8_are_refused_with_their_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: m\nmetrics: {rmse: {goal: minimize, max: 1}}\n"
                     "require_tags: {owner: 'José'}\n".encode("latin-1"))
    assert _issues_of(path) == ["3:27: not UTF-8: invalid byte 0xe9"]


def test_a_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    assert _issues_of(path) == [
        "1:1: the file is empty; a policy is a mapping with at least 'model' and 'metrics'"]


def test_deep_nesting_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    (line,) = _issues_of(path)
    assert line.endswith(f": nesting deeper than {MAX_DEPTH} levels")


def test_a_missing_file_and_a_directory_are_reported_as_issues(tmp_path: Path) -> None:
    assert _issues_of(tmp_path / "nope.yaml") == [
        " cannot read the file: No such file or directory"]
    assert _issues_of(tmp_path)[0].startswith(" cannot read the file: ")


def test_python_tags_execute_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-yaml"
    text = ("model: m\nmetrics: {rmse: {goal: minimize, max: 1}}\n"
            f"require_tags: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(PolicyError):
        parse_policy(text, "hostile.yaml")
    assert not marker.exists()


def test_crlf_line_endings_and_a_byte_order_mark_are_fine() -> None:
    text = "\ufeffmodel: m\r\nmetrics:\r\n  rmse: {goal: minimize, max: seventy}\r\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode("utf-8"), "crlf.yaml")
    assert info.value.lines() == [
        "crlf.yaml:3:31: metrics.rmse.max: expected a finite number, got 'seventy'"]


# --------------------------------------------------------------------------------------------
# The API around the corpus


def test_parse_policy_takes_text_or_bytes_and_a_display_name(tmp_path: Path) -> None:
    raw = SHIPPED.read_bytes()
    from_bytes = parse_policy(raw, "main:policies/diabetes-regressor.yaml")
    from_text = parse_policy(raw.decode("utf-8"), "main:policies/diabetes-regressor.yaml")
    assert from_bytes == from_text
    assert from_bytes.path == "main:policies/diabetes-regressor.yaml"
    assert from_bytes.sha256 == hashlib.sha256(raw).hexdigest() == load_policy(SHIPPED).sha256


def test_evaluation_data_paths_start_at_base_dir(tmp_path: Path) -> None:
    (tmp_path / "eval.csv").write_text("x,target\n1,2\n")
    text = ("model: m\nevaluation: {data: eval.csv, target: target}\n"
            "metrics: {rmse: {goal: minimize, source: evaluation, max: 1}}\n")
    policy = parse_policy(text, "elsewhere/p.yaml", base_dir=str(tmp_path))
    assert policy.evaluation is not None
    assert policy.evaluation.data == str(tmp_path / "eval.csv")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "elsewhere/p.yaml")
    assert info.value.lines() == ["elsewhere/p.yaml:2:20: evaluation.data: file not found: "
                                  "'eval.csv' (paths are relative to the policy file)"]
    unchecked = parse_policy(text, "elsewhere/p.yaml", check_files=False)
    assert unchecked.evaluation is not None
    assert unchecked.evaluation.data == os.path.abspath("elsewhere/eval.csv")


def test_policy_error_is_invalid_input_with_one_line_per_issue() -> None:
    from promotion.errors import ExitCode, InvalidInput

    with pytest.raises(PolicyError) as info:
        load_policy(FIXTURES / "invalid" / "many-issues.yaml")
    error = info.value
    assert isinstance(error, InvalidInput) and error.exit_code == ExitCode.INVALID_INPUT
    assert len(error.issues) == len(error.lines()) == 7
    assert str(error) == f"{error.lines()[0]} (and 6 more)"
    first = error.issues[0]
    assert (first.line, first.col, first.key) == (9, 8, "alias")


def test_positions_are_recorded_for_keys_and_values() -> None:
    document = read_document(SHIPPED.read_bytes(), "p.yaml")
    text = SHIPPED.read_text().splitlines()
    for path, (line, col) in document.positions.keys.items():
        assert text[line - 1][col - 1:].startswith(str(path[-1])), path
    line, col = document.positions.values[("metrics", "rmse", "max")]
    assert text[line - 1][col - 1:].startswith("70")


# --------------------------------------------------------------------------------------------
# Positions kept by the loaded policy (for problems found later, e.g. while re-scoring)

POSITIONED = """\
model: m
evaluation:
  data: sklearn:load_diabetes
  target: target
metrics:
  rmse: {goal: minimize, max: 70, source: evaluation}
"""


def test_a_loaded_policy_places_later_issues_where_its_file_had_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POSITIONED)
    policy = load_policy(path)
    path.write_text("# moved down\n" * 5 + POSITIONED)  # the file changes after loading
    assert str(policy.issue(("evaluation", "target"), "no column 'target'")) == \
        f"{path}:4:11: evaluation.target: no column 'target'"
    assert str(policy.issue(("metrics", "rmse", "source"), "x")) == \
        f"{path}:6:43: metrics.rmse.source: x"
    # A key the file does not have: its nearest ancestor's place.
    assert (policy.issue(("budgets", "size_mb"), "x").line,
            policy.issue(("evaluation", "seed"), "x").line) == (1, 2)
    error = policy.error(("evaluation", "data"), "file not found")
    assert isinstance(error, PolicyError)
    assert error.lines() == [f"{path}:3:9: evaluation.data: file not found"]


def test_a_policy_built_in_code_gets_file_level_issues() -> None:
    from promotion.policy.model import Policy

    policy = Policy(path="p.yaml", sha256="", model="m",
                    metrics=(MetricRule("rmse", "minimize", max=1.0),))
    assert policy.positions is None
    assert policy.error(("evaluation",), "missing").lines() == ["p.yaml: evaluation: missing"]


def test_positions_are_not_part_of_a_policys_value() -> None:
    import dataclasses

    first = parse_policy(POSITIONED, "p.yaml")
    second = parse_policy("\n\n" + POSITIONED.replace(", ", ",  "), "p.yaml")
    assert first.positions != second.positions
    same = dataclasses.replace(second, sha256=first.sha256)
    assert same == first and hash(same) == hash(first)
    assert "positions" not in repr(first)
