"""What installing Promote costs: the full install vs the slim base a gate on logged metrics needs.

Each scenario gets a fresh venv (`python3 -m venv`) under a temporary directory and one cold
`pip install --no-cache-dir` (no pip cache; pip's own configuration, such as find-links or extra
indexes, applies as it would for any install on this machine). Printed per scenario: the wall time
of the install, the size of site-packages (`du`) and the number of installed distributions.

  full: Promote with every extra (`.[all]`), i.e. everything `make install` puts in a venv; on a
        tree without extras, the plain install (which then carried everything).
  slim: `mlflow-skinny` (the version constraints.txt pins for mlflow) + pyyaml + click +
        pydantic, and Promote itself with `--no-deps`: the least `promote gate` on logged metrics
        needs.
  base: `pip install -c constraints.txt <wheel>` with no extra (only when the tree has extras):
        what pip resolves for the base install; it should equal `slim`.

Promote's wheel is built once, from a copy of the source tree, before any timing.
Usage: python bench/install.py [--runs N] [--only full,slim,base]. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_QUIET = ["--quiet", "--disable-pip-version-check", "--no-cache-dir"]


def _pin(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(rf"\s*{re.escape(name)}\s*==\s*(\S+)\s*", line)
        if match:
            return match.group(1)
    raise SystemExit(f"constraints.txt pins no version of {name}")


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project.get("optional-dependencies", {}))


def build_wheel(work: Path) -> Path:
    """Build Promote's wheel from a copy of the tree (the build never writes into the tree)."""
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "mlruns", "mlartifacts",
            "*.db", ".pytest_cache", ".mypy_cache", ".ruff_cache",
        ),
    )
    out = work / "wheel"
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(out), str(source))
    return next(out.glob("*.whl"))


def _pip(python: str, *args: str) -> None:
    """pip, its stderr shown without the lines about configured indexes it skipped."""
    proc = subprocess.run([python, "-m", "pip", *args[:1], *PIP_QUIET, *args[1:]],
                          stderr=subprocess.PIPE, text=True, check=False)
    shown = [line for line in proc.stderr.splitlines() if "is ignored:" not in line]
    if shown:
        print("\n".join(shown), file=sys.stderr)
    proc.check_returncode()


def scenarios(wheel: Path) -> dict[str, list[list[str]]]:
    """Scenario name -> the pip install argument lists it runs, in order."""
    constraints = ["-c", str(ROOT / "constraints.txt")]
    has_all = "all" in _extras()
    full = f"{wheel}[all]" if has_all else str(wheel)
    slim_deps = [f"mlflow-skinny=={_pin('mlflow')}", "pyyaml", "click", "pydantic"]
    result = {
        "full": [[*constraints, full]],
        "slim": [[*constraints, *slim_deps], ["--no-deps", str(wheel)]],
    }
    if has_all:
        result["base"] = [[*constraints, str(wheel)]]
    return result


def measure(work: Path, name: str, installs: list[list[str]]) -> dict[str, object]:
    venv = work / f"venv-{name}"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    started = time.perf_counter()
    for args in installs:
        _pip(python, "install", *args)
    seconds = time.perf_counter() - started
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    du = subprocess.run(["du", "-sk", str(site)], check=True, capture_output=True, text=True)
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    ).stdout
    names = sorted(p["name"].lower() for p in json.loads(listed))
    names = [n for n in names if n not in {"pip", "setuptools", "wheel"}]
    heavy = [n for n in ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "matplotlib",
                         "sqlalchemy", "fastapi", "apprise") if n in names]
    shutil.rmtree(venv, ignore_errors=True)
    return {"seconds": seconds, "mb": int(du.stdout.split()[0]) / 1024, "packages": len(names),
            "heavy": heavy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promote-install-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        plan = scenarios(wheel)
        if args.only:
            plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
        print(f"cold pip install --no-cache-dir into a fresh venv ({wheel.name})")
        print(f"  {'run':>3}  {'scenario':<8} {'time':>8} {'site-packages':>14} {'packages':>9}")
        rows: dict[str, list[dict[str, object]]] = {}
        for run in range(1, args.runs + 1):
            for name, installs in plan.items():
                row = measure(work, name, installs)
                rows.setdefault(name, []).append(row)
                print(f"  {run:>3}  {name:<8} {row['seconds']:>7.1f}s {row['mb']:>11.0f} MB"
                      f" {row['packages']:>9}", flush=True)
        for name, runs in rows.items():
            print(f"  {name}: heavy packages present: {', '.join(runs[0]['heavy']) or 'none'}")
        if "full" in rows and "slim" in rows:
            full, slim = rows["full"][-1], rows["slim"][-1]
            saved = 1 - float(slim["mb"]) / float(full["mb"])  # type: ignore[arg-type]
            print(f"  slim vs full (last run): {saved:.0%} less on disk, "
                  f"{int(full['packages']) - int(slim['packages'])} fewer packages")  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
