"""How long the main job takes: `promote demo` (what `make demo` runs) on a fresh clone's setup.

Each round copies train/ and policies/ into a new temporary directory and runs `promote demo`
there twice, on the embedded default (a SQLite store created by the first run), exactly as
`make demo` does after the install step. It prints the wall time of each process and where the
time goes (the demo's own phases; "interpreter start and exit" is the rest: Python start-up,
the CLI, and tearing down a process that has MLflow and scikit-learn loaded). Goal: <= 30 s for
train all + gate all + load + predict. Figures depend on the machine's load, which is printed.

    python bench/demo.py [-n 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 30.0


def promote_command() -> list[str]:
    script = Path(sys.executable).parent / ("promote.exe" if os.name == "nt" else "promote")
    return [str(script)] if script.exists() else [sys.executable, "-m", "promotion"]


def run_demo(workdir: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    start = time.perf_counter()
    out = subprocess.run([*promote_command(), "demo", "--json"], cwd=workdir, env=env,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"promote demo failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout)


def breakdown(wall: float, result: dict) -> list[tuple[str, float]]:
    phases = [(p["name"], p["seconds"]) for p in result["phases"]]
    return [("interpreter start and exit", wall - sum(s for _, s in phases)), *phases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=1,
                        help="fresh directories to run the demo in (twice each)")
    rounds = parser.parse_args().rounds

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"promote demo, embedded SQLite store; {os.cpu_count()} cores, load average {load:.2f}")
    walls: dict[str, list[float]] = {"first": [], "second": []}
    for i in range(rounds):
        with tempfile.TemporaryDirectory(prefix="promote-bench-demo-") as tmp:
            workdir = Path(tmp)
            shutil.copytree(REPO / "train", workdir / "train",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(REPO / "policies", workdir / "policies")
            for which in ("first", "second"):
                wall, result = run_demo(workdir)
                walls[which].append(wall)
                outcomes = ", ".join(f"v{g['version']} {g['outcome']}" for g in result["gates"])
                print(f"\nround {i + 1}, {which} run: {wall:.1f} s wall  "
                      f"(@{result['alias']} -> version {result['production_after']}; {outcomes})")
                for name, seconds in breakdown(wall, result):
                    print(f"  {name:<32} {seconds:6.2f} s  {seconds / wall:5.0%}")
    print()
    for which, values in walls.items():
        median = statistics.median(values)
        verdict = "within" if median <= GOAL_S else "OVER"
        print(f"{which} run (median of {len(values)}): {median:.1f} s, {verdict} the "
              f"{GOAL_S:.0f} s goal")


if __name__ == "__main__":
    main()
