"""How long a cold `promote policy validate` takes, next to a bare `import mlflow`.

Validation is meant for pre-commit hooks and CI annotations, so it must not pay for MLflow. Each
figure is the median wall time of N fresh processes (cold interpreter, warm disk cache).

    python bench/policy_validate.py [-n 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def medians(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each command. Rounds interleave the commands, so that a busy machine
    slows them all alike instead of skewing the ratio."""
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            timings[name].append(wall_seconds(argv))
    return {name: statistics.median(values) for name, values in timings.items()}


def promote_command() -> list[str]:
    script = Path(sys.executable).parent / ("promote.exe" if os.name == "nt" else "promote")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "promotion"]  # same code path, without the console script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=9, help="processes per measurement")
    runs = parser.parse_args().runs

    policies = sorted(str(p.relative_to(REPO)) for p in (REPO / "policies").glob("*.y*ml"))
    figures = medians({
        "validate": [*promote_command(), "policy", "validate", "policies"],
        "mlflow": [sys.executable, "-c", "import mlflow"],
        "baseline": [sys.executable, "-c", "pass"],
    }, runs)
    validate, mlflow, baseline = figures["validate"], figures["mlflow"], figures["baseline"]

    print(f"policies validated:            {', '.join(policies)}")
    print(f"runs per figure (median):      {runs}")
    print(f"python -c pass:                {baseline * 1000:8.1f} ms")
    print(f"promote policy validate:       {validate * 1000:8.1f} ms")
    print(f"python -c 'import mlflow':     {mlflow * 1000:8.1f} ms")
    print(f"ratio (import mlflow / validate): {mlflow / validate:5.1f}x  (goal: >= 5x)")


if __name__ == "__main__":
    main()
