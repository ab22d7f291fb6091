"""The layout is part of the product: the layer contract, sizes, and where imports stand.

The contract lives in pyproject.toml ([tool.importlinter]) and is described in
docs/architecture.md; this test runs it and prints its report, so a broken layer fails the suite.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "promotion"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def test_the_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    report = proc.stdout[proc.stdout.find("Contracts"):] if "Contracts" in proc.stdout \
        else proc.stdout
    print(report)  # shown with -s, and in the failure output below
    assert proc.returncode == 0, report + proc.stderr
    assert "0 broken" in report


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_too_long():
    long = {str(p.relative_to(REPO)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules above {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions above {MAX_FUNCTION_LINES} lines: {long}"


def test_promotes_own_modules_are_imported_at_the_top():
    """Only third-party imports (mlflow, numpy, ...) may be deferred into functions."""
    inside = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                names = ([a.name for a in inner.names] if isinstance(inner, ast.Import)
                         else [inner.module or ""] if isinstance(inner, ast.ImportFrom) else [])
                if any(n == "promotion" or n.startswith("promotion.") for n in names):
                    inside.append(f"{path.relative_to(REPO)}:{inner.lineno}")
    assert not inside, f"promotion imports inside functions: {inside}"


@pytest.mark.parametrize("argv", [["--help"], ["gate", "--help"], ["policy", "--help"],
                                  ["policy", "validate", "policies"], ["webhooks", "--help"],
                                  ["webhooks", "ensure", "--help"],
                                  ["webhooks", "test", "--help"], ["init", "--help"],
                                  ["--version"]])
def test_light_commands_do_not_import_mlflow(argv):
    code = ("import sys; from promotion.cli import run; rc = run(sys.argv[1:]); "
            "print('RC', rc, 'HEAVY', sorted(m for m in ('mlflow', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.stdout.strip().splitlines()[-1] == "RC 0 HEAVY []", proc.stdout + proc.stderr
