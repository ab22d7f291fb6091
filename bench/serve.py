"""Serving speed, side by side: promote serve (batching off and on), mlflow models serve, MLServer.

One run, on this machine, loopback only, one model (the seed's diabetes random forest,
train/candidates/random-forest.yaml, trained by `promote train` into a throwaway SQLite store and
aliased Production; `--model linear` for the linear baseline; the same `promote train` trains the
other one too, a second version of the same registered model for the swap phase below), the same
request rows (ROWS rows of load_diabetes, 1 by default), five servers started once and measured
one after another:

  1. promote serve NAME --max-batch-rows 0           batching off: each request scored alone
  2. promote serve NAME                              batching on, its defaults (--max-batch-rows
                                                     64 --max-batch-wait-ms 2)
  3. mlflow models serve -m models:/NAME@Production --env-manager local
  4. mlserver start REPO, the mlserver_mlflow.MLflowRuntime on the model's directory (downloaded
     from models:/NAME@Production), no adaptive batching, MLflow's protocol at /invocations
  5. the same with adaptive batching (max_batch_size 32, max_batch_time 0.005), V2 inference
     protocol: POST /v2/models/NAME/infer

Rows 1, 2, 3 and 4 get the same body: {"dataframe_split": {"columns": [...], "data": [...]}}.
Row 5 gets the same rows as a V2 request, one FP64 input per column of shape [ROWS, 1]; the
runtime decodes them with the pandas codec, which it takes from the model's column signature,
so the request needs no content_type of its own. Every server's answer is checked to be
promote serve's predictions before the load. Each promote serve has its own inference log
(SQLite, its default: every request and its rows; --promote-log-uri none turns it off; the other
servers log no inference) and cache in the temporary directory; MLServer runs with `debug` off (no
access log, as promote serve by default) and its default of 1 parallel worker (parallel_workers:
one inference process beside the HTTP process; gRPC and metrics servers on free loopback ports).
A promote serve without --max-batch-rows has no batching: row 2 is then skipped (said why) and
row 1 runs without the flag.

MLServer 1.7.1 (the bench-mlserver extra) cannot share promote's venv: it needs fastapi<0.116,
starlette<0.47 and protobuf<7, older than those installed with mlflow 3.17 here. Unless the
running interpreter already has it, it gets a venv of its own under ~/.cache/promote-bench/
(created once: the extra, the model's requirements.txt pins of mlflow, scikit-learn and skops,
and this interpreter's numpy and pandas). The model loads there as saved: MLflow keeps the skops
trusted types (the forest's sklearn.tree._tree.Tree) in the MLmodel file, so
mlflow.pyfunc.load_model needs no setting.

Load: wrk (one thread, CONCURRENCY keep-alive connections, closed loop; p50 and p99 from its
latency histogram; errors are non-2xx answers and socket errors) or, when wrk is not on PATH, a
threaded stdlib client, which takes CPU from the servers on a small machine. At each concurrency
(1, 8 and 32 by default) each server is warmed up for WARMUP s, then measured for ROUNDS rounds
of SECONDS s, the order of the servers reversed every round. Printed: req/s (median of rounds),
p50 and p99 (median of rounds), errors; the ratios of promote serve with batching on to each
other server; the goals:
  c=32: promote serve (batching on) >= 5x mlflow models serve and >= 1.5x MLServer V2 with
        adaptive batching in req/s, with a lower p99 than both;
  c=1:  promote serve's p50 with batching on within 1 ms of its p50 with batching off;
  swap: zero failed requests while Production moves under load, with batching on.

The swap phase, once the five servers are stopped: a fresh promote serve with batching on (its
defaults) and --poll-interval 1, under the same load at concurrency 32 for SWAP_SECONDS s; SWAP_AT
s in, Production moves to the other version. Printed: requests, errors (non-2xx answers and
socket errors), req/s and p99 of the phase; then GET /version must name the new version, and its
serving_since, less the time of the move, tells how soon the endpoint served it.

    .venv/bin/python bench/serve.py [--seconds 5] [--rounds 2] [--warmup 2] [--concurrency 32]
                                    [--rows 1] [--model linear] [--client python]
                                    [--promote-log-uri none]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from serve_servers import (
    BIN,
    REPO,
    Round,
    Target,
    free_port,
    mlserver_bin,
    mlserver_repository,
    mlserver_versions,
    post,
    python_load,
    server,
    wrk_load,
    wrk_version,
)

MODEL = "diabetes-regressor"
CONFIGS = {"random-forest": "train/candidates/random-forest.yaml",  # the seed's model
           "linear": "train/candidates/linear.yaml"}
OFF, ON = "promote serve, batching off", "promote serve, batching on"
MLFLOW, MLS_INV, MLS_V2 = ("mlflow models serve", "MLServer, /invocations",
                           "MLServer, V2 + adaptive batching")
CONCURRENCY = [1, 8, 32]
SWAP_SECONDS, SWAP_AT, SWAP_CONCURRENCY = 12.0, 3.0, 32
# Imports MLflow and reads the registry once, says "ready", then moves the alias when told (a
# line on stdin) and prints the time of the move: the move itself takes milliseconds, not the
# seconds of an MLflow import.
MOVE_ALIAS = """import sys, time, mlflow
client = mlflow.MlflowClient()
client.get_registered_model(sys.argv[1])
print("ready", flush=True)
if not sys.stdin.readline():
    sys.exit(1)
client.set_registered_model_alias(sys.argv[1], "Production", sys.argv[2])
print(time.time(), flush=True)
"""


@dataclass(frozen=True)
class Swap:
    """The swap phase: the load while Production moved, and what GET /version said after."""
    old: str
    new: str
    load: Round
    moved_after: float  # seconds into the load
    served: str | None  # GET /version's version after the load
    first_served_after: float | None  # its serving_since less the time of the move (s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="per server, concurrency and round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="default 2")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds per server and concurrency (default 2)")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="connections; repeatable (default 1, 8 and 32)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="random-forest")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator (auto: wrk when on PATH)")
    parser.add_argument("--promote-log-uri", default=None, metavar="URI",
                        help="promote serve's inference log (default: a SQLite file of its own "
                             "per server, its default kind; 'none' turns it off)")
    args = parser.parse_args()
    args.concurrency = args.concurrency or CONCURRENCY
    with tempfile.TemporaryDirectory(prefix="promote-bench-serve-") as tmp:
        return run(Path(tmp), args)


def machine(when: str) -> None:
    one, five, fifteen = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f} "
          f"at {when}", flush=True)


def run(tmp: Path, args: argparse.Namespace) -> int:
    # mlflow models serve runs `uvicorn` from PATH: the venv's own, like everything else here.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONWARNINGS": "ignore"}
    machine("start")
    wrk = wrk_version()
    use_wrk = args.client == "wrk" or (args.client == "auto" and wrk is not None)
    if args.client == "wrk" and wrk is None:
        sys.exit("wrk is not on PATH (apt-get install wrk)")
    print(f"load generator: {wrk if use_wrk else 'threaded stdlib http.client (wrk not used)'}")
    print(f"versions: {python_versions()}")
    version, other = train(tmp, env, args.model)
    set_alias(env, version)
    model_dir = download(tmp, env)
    bodies = write_bodies(tmp, args.rows)
    with ExitStack() as stack:
        targets = start_servers(stack, tmp, env, model_dir, bodies, args.promote_log_uri)
        check_same_predictions(targets)
        load = wrk_load if use_wrk else python_load
        results = measure(targets, args, load, tmp)
        batching = any(t.label == ON for t in targets)
    swap = swap_phase(tmp, env, bodies["split"], args.promote_log_uri, load,
                      (version, other), args.warmup) if batching else None
    report(results, args)
    goals(results)
    swap_goal(swap)
    machine("end")
    return 0


def python_versions() -> str:
    import importlib.metadata as m

    names = ("mlflow", "mlflow-promote", "scikit-learn", "skops")
    return ", ".join(f"{n} {m.version(n)}" for n in names)


def train(tmp: Path, env: dict[str, str], label: str) -> tuple[str, str]:
    """Train the config, and the other one, with the product's own trainer, in one call: the
    registered versions (the measured model's, the other's)."""
    other = next(name for name in CONFIGS if name != label)
    started = time.monotonic()
    out = subprocess.run([str(BIN / "promote"), "train", str(REPO / CONFIGS[label]),
                          str(REPO / CONFIGS[other]), "--json"],
                         cwd=tmp, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"promote train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    trained = json.loads(out.stdout)["trained"]
    versions = tuple(str(next(t["version"] for t in trained
                              if Path(t["config"]).name == Path(CONFIGS[name]).name))
                     for name in (label, other))
    print(f"trained {label} and {other}: {MODEL} versions {versions[0]} and {versions[1]} in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    return versions[0], versions[1]


def alias_mover(env: dict[str, str], version: str) -> Callable[[], float]:
    """A process ready to point Production at `version`; calling the result moves it and returns
    the time of the move (epoch seconds)."""
    proc = subprocess.Popen([sys.executable, "-c", MOVE_ALIAS, MODEL, version], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        sys.exit(f"could not read {MODEL} from the registry to move its alias")

    def move() -> float:
        out, _ = proc.communicate("go\n", timeout=120)
        if proc.returncode != 0:
            sys.exit(f"moving {MODEL}@Production to version {version} failed")
        return float(out.split()[-1])

    return move


def set_alias(env: dict[str, str], version: str) -> float:
    """Point Production at `version`; the time of the move."""
    return alias_mover(env, version)()


def download(tmp: Path, env: dict[str, str]) -> Path:
    """The Production version's model directory, for MLServer."""
    dst = tmp / "model"
    code = ("import mlflow, sys; mlflow.artifacts.download_artifacts("
            f"'models:/{MODEL}@Production', dst_path=sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(dst)], env=env, check=True,
                   capture_output=True)
    return dst


def write_bodies(tmp: Path, rows: int) -> dict[str, Path]:
    """The same rows, as MLflow's dataframe_split and as a V2 inference request."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.drop(columns="target").head(rows)
    split = {"dataframe_split": {"columns": list(frame.columns),
                                 "data": frame.to_numpy().tolist()}}
    v2 = {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(frame), 1],
                      "data": frame[c].tolist()} for c in frame.columns]}
    paths = {"split": tmp / "body-split.json", "v2": tmp / "body-v2.json"}
    paths["split"].write_text(json.dumps(split))
    paths["v2"].write_text(json.dumps(v2))
    return paths


def start_servers(stack: ExitStack, tmp: Path, env: dict[str, str], model_dir: Path,
                  bodies: dict[str, Path], log_uri: str | None) -> list[Target]:
    """Start each server, one at a time; those that cannot run are skipped, with the reason."""
    targets: list[Target] = []

    def add(label: str, argv: list[str], port: int, health: str, path: str, body: str,
            cwd: Path = tmp) -> None:
        print(f"{label}: {' '.join(argv)}", flush=True)
        try:
            url = stack.enter_context(server(cwd, env, label.split(",")[0].replace(" ", "-"),
                                             argv, port, health))
        except RuntimeError as exc:
            print(f"{label}: skipped: {exc}")
            return
        targets.append(Target(label, url, path, bodies[body].read_bytes(), bodies[body]))

    batching = "--max-batch-rows" in subprocess.run(
        [str(BIN / "promote"), "serve", "--help"], capture_output=True, text=True).stdout
    for label, flags in ((OFF, ["--max-batch-rows", "0"]), (ON, [])):
        if not batching and label == ON:
            print(f"{ON}: skipped: this promote serve has no --max-batch-rows (no batching)")
            continue
        port = free_port()
        add(label, [str(BIN / "promote"), "serve", MODEL, "--port", str(port),
                    "--log-uri", log_uri or f"sqlite:///{tmp / f'log-{port}.db'}",
                    "--cache-dir", str(tmp / f"cache-{port}"), *(flags if batching else [])],
            port, "/health", "/invocations", "split")
    port = free_port()
    add(MLFLOW, [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@Production",
                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        port, "/health", "/invocations", "split")
    try:
        mlserver, how = mlserver_bin(model_dir)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"MLServer: skipped: it could not be installed: {exc}")
        return targets
    print(f"MLServer: {how}; {mlserver_versions(mlserver)}")
    for label, batching_on, path, body in (
            (MLS_INV, False, "/invocations", "split"),
            (MLS_V2, True, f"/v2/models/{MODEL}/infer", "v2")):
        root = tmp / f"mlserver-{'batching' if batching_on else 'plain'}"
        port = mlserver_repository(root, MODEL, model_dir, batching_on)
        add(label, [str(mlserver), "start", str(root)], port, f"/v2/models/{MODEL}/ready", path,
            body, cwd=root)
    return targets


def predictions(target: Target) -> list[float]:
    status, body = post(target.url, target.path, target.body)
    if status != 200:
        sys.exit(f"{target.label} answered {status}: {body[:500]!r}")
    answer = json.loads(body)
    values = answer["outputs"][0]["data"] if "outputs" in answer else answer["predictions"]
    return [float(v) for v in values]


def check_same_predictions(targets: list[Target]) -> None:
    if not targets:
        sys.exit("no server could be started")
    reference = predictions(targets[0])
    for target in targets[1:]:
        got = predictions(target)
        if len(got) != len(reference) or not all(
                math.isclose(a, b, rel_tol=1e-9) for a, b in zip(got, reference, strict=True)):
            sys.exit(f"{target.label} disagrees with {targets[0].label}: {got} vs {reference}")
    print(f"predictions: the same from all {len(targets)} servers ({reference[:3]}...)")


def measure(targets: list[Target], args: argparse.Namespace, load,
            tmp: Path) -> dict[int, dict[str, list[Round]]]:
    """concurrency -> server label -> its rounds. Every round reverses the order of the servers,
    so that the noise of a shared machine falls on all alike."""
    results: dict[int, dict[str, list[Round]]] = {}
    turn = 0
    for c in args.concurrency:
        results[c] = {t.label: [] for t in targets}
        for target in targets:
            load(target, args.warmup, c, tmp)
        for _ in range(args.rounds):
            order = targets if turn % 2 == 0 else targets[::-1]
            turn += 1
            for target in order:
                results[c][target.label].append(load(target, args.seconds, c, tmp))
        print(f"measured at concurrency {c}", flush=True)
    return results


def swap_phase(tmp: Path, env: dict[str, str], body: Path, log_uri: str | None, load,
               versions: tuple[str, str], warmup: float) -> Swap:
    """A fresh promote serve with batching on (its defaults), polling the alias every second,
    under load at concurrency SWAP_CONCURRENCY for SWAP_SECONDS s; SWAP_AT s in, Production
    moves from the measured version to the other one."""
    old, new = versions
    port = free_port()
    argv = [str(BIN / "promote"), "serve", MODEL, "--port", str(port),
            "--log-uri", log_uri or f"sqlite:///{tmp / f'log-{port}.db'}",
            "--cache-dir", str(tmp / f"cache-{port}"), "--poll-interval", "1"]
    print(f"swap phase: {' '.join(argv)}", flush=True)
    with server(tmp, env, "promote-serve-swap", argv, port, "/health") as url:
        target = Target(f"{ON}, swap", url, "/invocations", body.read_bytes(), body)
        load(target, warmup, SWAP_CONCURRENCY, tmp)
        move = alias_mover(env, new)
        rounds: list[Round] = []
        failures: list[Exception] = []

        def run_load() -> None:
            try:
                rounds.append(load(target, SWAP_SECONDS, SWAP_CONCURRENCY, tmp))
            except Exception as exc:  # raised again below, in the main thread
                failures.append(exc)

        thread = threading.Thread(target=run_load)
        started = time.time()
        thread.start()
        time.sleep(max(0.0, started + SWAP_AT - time.time()))
        moved = move()
        thread.join()
        if failures:
            raise failures[0]
        with urllib.request.urlopen(f"http://{url}/version", timeout=10) as answer:
            document = json.loads(answer.read())
    served = document.get("version")
    since = document.get("serving_since")
    first = (datetime.fromisoformat(since).timestamp() - moved
             if served == new and since else None)
    print(f"measured the swap ({MODEL}@Production: version {old} -> {new})", flush=True)
    return Swap(old, new, rounds[0], moved - started, served, first)


def summary(rounds: list[Round]) -> tuple[float, float, float, int]:
    return (statistics.median(r.rate for r in rounds), statistics.median(r.p50 for r in rounds),
            statistics.median(r.p99 for r in rounds), sum(r.errors for r in rounds))


def report(results: dict[int, dict[str, list[Round]]], args: argparse.Namespace) -> None:
    print(f"\nload: {args.rounds} round{'s' * (args.rounds != 1)} of {args.seconds:g} s per "
          f"server and concurrency (after {args.warmup:g} s of warm-up), {args.rows} "
          f"row{'s' * (args.rows != 1)} per request; req/s, p50 and p99: medians of the rounds")
    print(f"{'c':>4}  {'server':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for c, by_server in results.items():
        for label, rounds in by_server.items():
            rate, p50, p99, errors = summary(rounds)
            print(f"{c:>4}  {label:34} {rate:9.1f} {p50:8.2f} {p99:8.2f} {errors:7d}")
    first = next(iter(results.values()))
    reference = ON if ON in first else OFF if OFF in first else None
    if reference is None:
        return
    print(f"\nratios, {reference} vs each (throughput: higher is better; "
          "p99: lower is better)")
    print(f"{'c':>4}  {'vs':34} {'throughput':>10} {'p99':>8}")
    for c, by_server in results.items():
        rate, _, p99, _ = summary(by_server[reference])
        for label, rounds in by_server.items():
            if label != reference:
                other_rate, _, other_p99, _ = summary(rounds)
                print(f"{c:>4}  {label:34} {'x' + format(rate / other_rate, '.2f'):>10} "
                      f"{'x' + format(p99 / other_p99, '.2f'):>8}")


def goals(results: dict[int, dict[str, list[Round]]]) -> None:
    print("\ngoals:")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    at32 = results.get(32, {})
    if ON not in at32:
        print("  c=32, promote serve (batching on) vs mlflow models serve and MLServer V2: "
              "not measured (" + ("no batching in this promote serve" if 32 in results
                                  else "concurrency 32 not run") + ")")
    else:
        rate, _, p99, _ = summary(at32[ON])
        for other, factor in ((MLFLOW, 5.0), (MLS_V2, 1.5)):
            if other not in at32:
                print(f"  c=32 vs {other}: not measured (skipped)")
                continue
            o_rate, _, o_p99, _ = summary(at32[other])
            print(f"  c=32 req/s >= {factor:g}x {other}: {verdict(rate >= factor * o_rate)} "
                  f"(x{rate / o_rate:.2f}); p99 lower: {verdict(p99 < o_p99)} "
                  f"({p99:.2f} vs {o_p99:.2f} ms)")
    at1 = results.get(1, {})
    if ON in at1 and OFF in at1:
        on, off = summary(at1[ON])[1], summary(at1[OFF])[1]
        print(f"  c=1 p50 batching on within 1 ms of batching off: {verdict(on - off <= 1.0)} "
              f"({on:.2f} vs {off:.2f} ms)")
    else:
        print("  c=1 p50 batching on within 1 ms of batching off: not measured "
              f"({'no batching in this promote serve' if 1 in results else 'c=1 not run'})")


def swap_goal(swap: Swap | None) -> None:
    """The swap phase's figures and its goal, after the other goals."""
    goal = f"swap under c={SWAP_CONCURRENCY} with batching on: zero failed requests"
    if swap is None:
        print(f"  {goal}: not measured ({ON} did not run)")
        return
    r = swap.load
    ok = r.errors == 0 and swap.served == swap.new
    note = "" if swap.served == swap.new else "; the new version was not served by the end"
    print(f"  {goal}: {'met' if ok else 'NOT met'} ({r.errors} errors of {r.requests}{note})")
    print(f"    a fresh {ON} (--poll-interval 1), c={SWAP_CONCURRENCY} for {SWAP_SECONDS:g} s; "
          f"Production moved from version {swap.old} to {swap.new} {swap.moved_after:.1f} s in")
    print(f"    requests {r.requests}, errors {r.errors}, {r.rate:.1f} req/s, "
          f"p99 {r.p99:.2f} ms")
    after = ("" if swap.first_served_after is None
             else f", first served {swap.first_served_after:.2f} s after the move")
    print(f"    GET /version after the load: version {swap.served}{after}")


if __name__ == "__main__":
    if "-h" not in sys.argv[1:] and "--help" not in sys.argv[1:]:
        print(__doc__.splitlines()[0])
    sys.exit(main())
