"""Cold-start time of `promote --help` and `promote --version` vs `python -c "import mlflow"`.

Goal: `promote --help` <= 0.3 s on the reference machine (2 cores), i.e. it must not import mlflow.
Prints medians of several fresh processes; asserts nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 7
BIN = Path(sys.executable).parent


def cold(argv: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    promote = str(BIN / "promote")
    rows = [
        ("promote --help", cold([promote, "--help"])),
        ("promote --version", cold([promote, "--version"])),
        ("python -m promotion --help", cold([sys.executable, "-m", "promotion", "--help"])),
        ('python -c "import mlflow"', cold([sys.executable, "-c", "import mlflow"], runs=3)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"cold start, median of {RUNS} fresh processes (import mlflow: 3)")
    for name, seconds in rows:
        print(f"  {name:<{width}}  {seconds * 1000:7.0f} ms")
    help_s, mlflow_s = rows[0][1], rows[-1][1]
    print(
        f"  goal: promote --help <= 300 ms -> {'met' if help_s <= 0.3 else 'NOT met'}; "
        f"{mlflow_s / help_s:.1f}x faster than import mlflow"
    )


if __name__ == "__main__":
    main()
