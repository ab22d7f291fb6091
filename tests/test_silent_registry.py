"""A registry that accepts connections and never answers: the command ends, truthfully, within
the documented bound (README: "How long a failure takes").

The real silent server is run with the request timeout scaled down to 2 s (the retries and the
backoff are Promote's defaults), so the suite does not wait half a minute; the default timeout's
bound follows from the same arithmetic, checked below."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import write_policy

from promotion.cli import run
from promotion.errors import ExitCode

DOCUMENTED_WORST_CASE_S = 34  # 3 attempts of 10 s, plus 2 s of backoff (and jitter)


def worst_case_s(settings: dict[str, str]) -> float:
    """One request to a silent server: every attempt times out; urllib3 sleeps 0 s before the
    first retry, then backoff_factor * 2**(k-1), each plus up to the jitter."""
    attempts = int(settings["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) + 1
    timeout = float(settings["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    factor = float(settings["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter = float(settings["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"])
    sleeps = sum(factor * 2 ** (k - 1) for k in range(2, attempts))
    return attempts * timeout + sleeps + jitter * (attempts - 1)


def test_the_default_settings_bound_a_silent_registry_as_documented():
    from promotion.registry.client import RETRY_DEFAULTS

    assert worst_case_s(RETRY_DEFAULTS) <= DOCUMENTED_WORST_CASE_S < 60


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts every connection, reads what is sent, never writes a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_gate_against_a_silent_registry_ends_in_exit_3_within_the_bound(
        silent_server, tmp_path, monkeypatch, capsys):
    from promotion.registry.client import RETRY_DEFAULTS

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        monkeypatch.delenv(name, raising=False)  # Promote's defaults, as a user gets them
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    bound = worst_case_s({**RETRY_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    policy = write_policy(tmp_path / "p.yaml", "m", {
        "metrics": {"rmse": {"goal": "minimize", "max": 1.0}}})
    started = time.monotonic()
    code = run(["--tracking-uri", silent_server, "gate", str(policy)])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    print(f"\nsilent registry, 2 s timeout: exit {code} after {took:.1f} s (bound {bound:.1f} s; "
          f"with the default 10 s: {DOCUMENTED_WORST_CASE_S} s)")
    assert code == ExitCode.REGISTRY
    assert err.startswith("@Production not read; nothing moved: "), err
    # The bound is the promise (README), not a speed goal: slack for a loaded machine.
    assert took < bound + 10, (took, bound)
