"""The servers and load generators of bench/serve.py: process lifecycle, MLServer's own venv and
model repository, and the two clients (wrk, or a threaded stdlib client when wrk is missing)."""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MLSERVER_EXTRA = "bench-mlserver"
WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(BODY, "rb"))
wrk.body = f:read("*a")
f:close()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class Target:
    """A running server and what to send it."""
    label: str
    url: str  # host:port
    path: str  # the scoring endpoint
    body: bytes
    body_file: Path


@dataclass(frozen=True)
class Round:
    rate: float  # completed requests per second
    p50: float  # ms
    p99: float  # ms
    errors: int  # non-2xx answers and socket errors (timeouts included)
    requests: int = 0  # completed requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             alive: Callable[[], bool] = lambda: True, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            break
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise RuntimeError(f"{what}\n{tail}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextmanager
def server(tmp: Path, env: dict[str, str], name: str, argv: list[str], port: int,
           health: str, timeout: float = 240) -> Iterator[str]:
    """Start `argv` in its own process group; yield host:port once `health` answers 200; stop the
    whole group (MLServer's inference workers included) on the way out."""
    log_path = tmp / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"127.0.0.1:{port}"
        try:
            wait_for(lambda: healthy(f"http://{url}{health}"), timeout,
                     f"{name} never became healthy", alive=lambda: proc.poll() is None,
                     log=log_path)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def post(url: str, path: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- MLServer --------------------------------------------------------------------------------

def mlserver_requirements(model_dir: Path) -> list[str]:
    """The bench-mlserver extra, plus the model's own pins (requirements.txt: mlflow,
    scikit-learn, skops) and numpy/pandas at the versions of this interpreter."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = list(project["optional-dependencies"][MLSERVER_EXTRA])
    model = [line.strip() for line in (model_dir / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    science = [f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "pandas")]
    return [*extra, *model, *science]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "promote-bench"


def mlserver_bin(model_dir: Path) -> tuple[Path, str]:
    """The `mlserver` executable, and how it was installed. This interpreter's own when the
    extra is installed here; otherwise a venv of its own under the cache directory, created once
    and brought up to date when the requirements change (the extra cannot share promote's venv:
    mlserver 1.7.1 needs fastapi<0.116, starlette<0.47 and protobuf<7)."""
    if importlib.util.find_spec("mlserver_mlflow") is not None:
        return BIN / "mlserver", f"this interpreter's ({sys.prefix})"
    wanted = mlserver_requirements(model_dir)
    version = next(r.split("==")[1] for r in wanted if r.startswith("mlserver=="))
    venv = cache_root() / f"mlserver-{version}"
    stamp = venv / "bench-requirements.txt"
    text = "\n".join(wanted) + "\n"
    if stamp.exists() and stamp.read_text() == text and (venv / "bin" / "mlserver").exists():
        return venv / "bin" / "mlserver", f"its own venv, {venv} (already there)"
    print(f"creating MLServer's venv at {venv} (once): pip install {' '.join(wanted)}",
          flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", *wanted], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n{out.stderr[-2000:]}")
    stamp.write_text(text)
    return venv / "bin" / "mlserver", f"its own venv, {venv} (created now)"


def mlserver_versions(mlserver: Path) -> str:
    code = ("import importlib.metadata as m; print(' '.join(f'{n} {m.version(n)}' for n in "
            "('mlserver', 'mlserver-mlflow', 'mlflow', 'scikit-learn', 'skops', 'uvloop')))")
    out = subprocess.run([str(mlserver.parent / "python"), "-c", code], capture_output=True,
                         text=True)
    return out.stdout.strip() or out.stderr.strip()[-300:]


def mlserver_repository(root: Path, name: str, model_dir: Path, batching: bool) -> int:
    """A model repository for `mlserver start root`: settings.json (free ports for HTTP, gRPC and
    metrics on loopback; debug off, which turns off its access log as promote serve's is by
    default) and one model-settings.json with the MLflow runtime. Returns the HTTP port."""
    ports = [free_port() for _ in range(3)]
    (root / name).mkdir(parents=True)
    settings = {"host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1],
                "metrics_port": ports[2], "debug": False}
    model: dict[str, object] = {"name": name, "implementation": "mlserver_mlflow.MLflowRuntime",
                                "parameters": {"uri": str(model_dir)}}
    if batching:
        model.update(max_batch_size=32, max_batch_time=0.005)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    (root / name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return ports[0]


# --- load ------------------------------------------------------------------------------------

def wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0] if first else "wrk"


def wrk_load(target: Target, seconds: float, concurrency: int, tmp: Path) -> Round:
    """One wrk run: one thread (light on a 2-core machine), `concurrency` keep-alive connections,
    closed loop. Its done() hook prints the figures: p50 and p99 from wrk's latency histogram."""
    script = tmp / f"wrk-{hashlib.sha1(str(target.body_file).encode()).hexdigest()[:8]}.lua"
    if not script.exists():
        script.write_text(f"local BODY = {json.dumps(str(target.body_file))}\n{WRK_SCRIPT}")
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
            "--latency", "-s", str(script), f"http://{target.url}{target.path}"]
    out = subprocess.run(argv, capture_output=True, text=True)
    found = re.search(r"^RESULT ((?:\d+ ?){9})$", out.stdout, re.M)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1000:]}{out.stderr}")
    requests, duration_us, p50_us, p99_us, *errors = (int(v) for v in found.group(1).split())
    return Round(requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, sum(errors),
                 requests)


def python_load(target: Target, seconds: float, concurrency: int, tmp: Path) -> Round:
    """Closed loop over `concurrency` keep-alive connections (stdlib http.client, one thread
    each), for `seconds`: the fallback when wrk is missing (it takes CPU from the servers)."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}

    def worker() -> None:
        conn = http.client.HTTPConnection(target.url, timeout=60)
        mine, failed = [], 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                conn.request("POST", target.path, body=target.body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(target.url, timeout=60)
            mine.append(time.perf_counter() - started)
            failed += not 200 <= status < 300
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def p(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return Round(len(latencies) / elapsed, p(0.50), p(0.99), errors[0], len(latencies))
