"""The committed JSON Schema is the generated one, and it agrees with the validator.

Agreement is checked on the whole fixture corpus: every valid fixture passes both; every invalid
fixture fails both, except the ones marked `# schema: skip (reason)`. Those are invalid for reasons
a JSON Schema cannot see, and the reason is stated in the fixture:

- the YAML cannot be read into data at all (syntax, several documents, unsafe tags, alias bombs,
  duplicate keys - a JSON object cannot even hold those), so there is nothing to give the schema;
- JSON has no NaN or infinity, so `type: number` cannot exclude them;
- a rule compares two values (min <= max, candidate alias != guarded alias, a rollout's canary
  alias != guarded alias, a rollout's steps increasing);
- a rule depends on the file system (evaluation.data must exist).

For those that do read into data, the test checks the schema indeed accepts them, so a marker
cannot hide a case the schema should have caught.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from promotion.policy.load import policy_schema
from promotion.policy.yamlfile import PolicyError, read_document
from promotion.report.policy import schema_text

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "policies" / "schema.json"
FIXTURES = Path(__file__).parent / "data" / "policies"
VALID = [*sorted((FIXTURES / "valid").glob("*.yaml")), *sorted((REPO / "policies").glob("*.yaml"))]
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))


def schema_skip_reason(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# schema: skip"):
            return line.removeprefix("# schema: skip").strip(" ()") or None
    return None


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def data_of(path: Path) -> Any:
    return read_document(path.read_bytes(), str(path)).data


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(policy_schema()), (
        "policies/schema.json is stale: run `promote policy schema > policies/schema.json`")


def test_schema_declares_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {"model", "alias", "candidate", "when_no_production",
                                         "evaluation", "metrics", "require_tags", "budgets",
                                         "watch", "rollout"}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_policies_pass_the_schema(path: Path, validator: Any) -> None:
    errors = [e.message for e in validator.iter_errors(data_of(path))]
    assert errors == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_policies_fail_the_schema_unless_marked(path: Path, validator: Any) -> None:
    reason = schema_skip_reason(path)
    try:
        data = data_of(path)
    except PolicyError:
        assert reason, f"{path.name} does not read into data: mark it '# schema: skip (why)'"
        return
    valid_for_schema = validator.is_valid(data)
    if reason:
        assert valid_for_schema, f"{path.name} is marked skip but the schema rejects it: unmark it"
    else:
        assert not valid_for_schema, f"the schema accepts {path.name}"


@pytest.mark.skipif(shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
                    is None, reason="check-jsonschema is not installed")
def test_check_jsonschema_accepts_the_shipped_and_valid_policies() -> None:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe
    files = [str(p) for p in VALID]
    result = subprocess.run([exe, "--schemafile", str(SCHEMA_FILE), *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
