"""Threads or processes for scoring: does the seed's random forest release the GIL?

The seed's model (RandomForestRegressor, 100 trees, depth 6, max_features 3, on load_diabetes)
is fitted here, then called in a closed loop for SECONDS s by:
  1 thread, 2 threads, 2 processes (forked after the fit)
at 1 row and at 32 rows per call. Printed: predict calls per second in all, and the speed-up over
one thread. If the forest released the GIL, 2 threads would score about as fast as 2 processes;
if not, 2 threads score no faster than one, and only processes (or fewer, larger calls: batching)
use a second core. `promote serve` scores batches in a process of its own for this reason
(docs/serving.md, "Batching").

    .venv/bin/python bench/scoring_workers.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
import warnings


def fit():
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    model = RandomForestRegressor(n_estimators=100, max_depth=6, max_features=3,
                                  random_state=42).fit(x, y)
    return model, x


def loop(model, rows, seconds: float) -> int:
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        model.predict(rows)
        calls += 1
    return calls


def threads(model, rows, count: int, seconds: float) -> float:
    done = [0] * count

    def work(i: int) -> None:
        done[i] = loop(model, rows, seconds)

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - started)


def processes(model, rows, count: int, seconds: float) -> float:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def work() -> None:
        queue.put(loop(model, rows, seconds))

    started = time.perf_counter()
    workers = [context.Process(target=work) for _ in range(count)]
    for w in workers:
        w.start()
    total = sum(queue.get() for _ in workers)
    for w in workers:
        w.join()
    return total / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    # sklearn warns that its delayed() runs outside its Parallel in the forked processes.
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    model, x = fit()
    print(f"{'rows':>5} {'scorers':16} {'calls/s':>9} {'rows/s':>9} {'x 1 thread':>11}")
    for n in (1, 32):
        rows = x.head(n)
        loop(model, rows, 0.5)  # warm up
        base = threads(model, rows, 1, args.seconds)
        for label, rate in (("1 thread", base),
                            ("2 threads", threads(model, rows, 2, args.seconds)),
                            ("2 processes", processes(model, rows, 2, args.seconds))):
            print(f"{n:5d} {label:16} {rate:9.1f} {rate * n:9.0f} {rate / base:11.2f}")
    print(f"machine: load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
