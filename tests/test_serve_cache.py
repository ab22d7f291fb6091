"""When the registry cannot be read: `promote serve` against the real MLflow test server behind a
fault-injecting proxy (tests/faultproxy.py).

While serving, a registry that refuses connections, or one that takes a request and never
answers (a link that drops packets), turns /health `degraded` (still 200) and back to `ok` once
it answers, and no scoring request fails meanwhile. Every version served is kept in the local
cache; a restart while the registry cannot be read serves the cached version. Without a usable
cache entry the start still ends with exit 3.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from faultproxy import DownFrom, FaultProxy, Hang
from test_serve import Endpoint, _wait_until, expected, serving, split_payload
from test_serve_multi import Runs, log_runs

from promotion.cli import run
from promotion.errors import ExitCode
from promotion.serve.cache import ServeCache
from promotion.serve.state import Served

pytestmark = pytest.mark.mlflow

POLL = 0.5
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def no_backoff(monkeypatch):
    """An unreachable registry fails the start at once (no pause between the retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


@pytest.fixture(scope="module")
def runs(mlflow_server: str) -> Runs:
    return log_runs(mlflow_server, "ab", measure=False)


def with_credentials(url: str) -> str:
    """The proxy's URL with basic-auth credentials (the test server ignores them)."""
    return url.replace("http://", "http://alice:s3cret@")


def health(endpoint: Endpoint) -> dict:
    r = endpoint.get("/health")
    assert r.status_code == 200, r.text
    return r.json()


def until_status(endpoint: Endpoint, status: str, answers: list[int]) -> dict:
    """Poll /health (scoring a request each time) until its status is `status`."""
    found: dict = {}

    def reached() -> bool:
        answers.append(endpoint.post(split_payload()).status_code)
        found.update(health(endpoint))
        return found["status"] == status

    _wait_until(reached, 60, lambda: f"never {status}: {found}\n{endpoint.log()[-3000:]}")
    return found


def test_a_registry_that_stops_answering_is_reported_then_a_restart_serves_the_cache(
        proxy: FaultProxy, client, model_name, runs, tmp_path):
    cache = tmp_path / "cache"
    uri = with_credentials(proxy.url)
    client.set_registered_model_alias(model_name, "Production",
                                      runs.register(client, model_name, "a"))
    args = ("--cache-dir", str(cache), "--poll-interval", str(POLL), "--registry-timeout", "20")
    answers: list[int] = []
    proxy.arm(None)
    with serving(uri, model_name, *args) as endpoint:
        document = health(endpoint)
        assert document["status"] == "ok" and document["registry"] == {
            "status": "ok", "since": None, "last_ok_at": document["registry"]["last_ok_at"],
            "served_from": "registry"}
        # Refused connections: the next check fails.
        proxy.arm(DownFrom(1))
        document = until_status(endpoint, "degraded", answers)
        assert document["registry"]["status"] == "unreachable"
        assert document["registry"]["since"] > document["registry"]["last_ok_at"]
        proxy.arm(None)
        assert until_status(endpoint, "ok", answers)["registry"]["since"] is None
        # A check that never gets an answer: degraded while it still waits (3 poll intervals).
        proxy.arm(Hang(1, seconds=5))
        document = until_status(endpoint, "degraded", answers)
        assert not proxy.requests[0].done.is_set(), "the hung check was answered"
        proxy.arm(None)
        until_status(endpoint, "ok", answers)
        assert set(answers) == {200}, answers  # no request failed meanwhile
        client.set_registered_model_alias(model_name, "Production",
                                          runs.register(client, model_name, "b"))
        _wait_until(lambda: endpoint.post(split_payload()).headers["X-Model-Version"] == "2",
                    60, lambda: endpoint.log()[-3000:])
        pointer = ServeCache(cache, uri).pointer(model_name, "Production")
        _wait_until(lambda: json.loads(pointer.read_text())["version"] == "2", 30)
        assert "s3cret" not in endpoint.log()

    kept = json.loads(pointer.read_text())
    assert kept["previous_version"] == "1" and kept["run_id"] == runs.uris["b"][1]
    every_file = "".join(p.read_text(errors="replace") for p in cache.rglob("*") if p.is_file())
    assert "s3cret" not in every_file and "alice" not in every_file

    # The restart: the registry refuses every connection. The same registry, without the
    # credentials, has the same cache.
    proxy.arm(DownFrom(1))
    with serving(proxy.url, model_name, *args) as endpoint:
        document = health(endpoint)
        assert document["status"] == "degraded" and document["version"] == "2"
        assert document["registry"]["status"] == "unreachable"
        assert document["registry"]["served_from"] == "cache"
        assert document["registry"]["last_ok_at"] is None
        r = endpoint.post(split_payload())
        assert r.status_code == 200 and r.json()["predictions"] == pytest.approx(expected("b"))
        assert "starting from version 2 in the local cache" in endpoint.log()
        proxy.arm(None)
        document = until_status(endpoint, "ok", answers)
        assert document["registry"]["served_from"] == "cache"  # the same version, kept
        assert document["registry"]["last_ok_at"] is not None
        version = endpoint.get("/version").json()
        assert version["in_sync"] is True and version["version"] == "2"


def test_without_a_cached_version_an_unreachable_registry_is_exit_3(tmp_path, capsys,
                                                                   no_backoff):
    code = run(["--tracking-uri", NOWHERE, "serve", "m", "--port", "0", "--cache-dir",
                str(tmp_path)])
    assert code == ExitCode.REGISTRY
    err = capsys.readouterr().err
    assert "m@Production: the registry cannot be read and there is no cached version" in err
    assert "127.0.0.1:9" in err
    assert run(["--tracking-uri", NOWHERE, "serve", "m", "--port", "0", "--cache-dir",
                "none"]) == ExitCode.REGISTRY
    assert "(--cache-dir none)" in capsys.readouterr().err


def fake_version(root: Path) -> Served:
    root.mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    return Served(version="4", model=None, loaded_at=time.time(), load_seconds=0.0,
                  model_dir=str(root))


def test_the_start_names_the_model_the_cache_holds_nothing_of(tmp_path, capsys, no_backoff):
    ServeCache(tmp_path / "cache", NOWHERE).keep("a", "Production", fake_version(tmp_path / "a"))
    code = run(["--tracking-uri", NOWHERE, "serve", "a", "b", "--port", "0", "--cache-dir",
                str(tmp_path / "cache")])
    assert code == ExitCode.REGISTRY
    err = capsys.readouterr().err
    assert "b@Production: the registry cannot be read and there is no cached version" in err


def test_a_corrupt_pointer_is_a_warning_and_nothing_else_means_exit_3(tmp_path, capsys,
                                                                      caplog, no_backoff):
    pointer = ServeCache(tmp_path, NOWHERE).pointer("m", "Production")
    pointer.parent.mkdir(parents=True)
    pointer.write_text('{"schema_version": 1, "model": "m", "alias": "Prod')
    caplog.set_level(logging.WARNING, "promotion.serving")
    code = run(["--tracking-uri", NOWHERE, "serve", "m", "--port", "0", "--cache-dir",
                str(tmp_path)])
    assert code == ExitCode.REGISTRY
    assert f"ignoring the cache pointer {pointer}" in caplog.text
    assert "no cached version" in capsys.readouterr().err


def test_a_bad_spec_or_budget_is_one_line_and_exit_2(capsys):
    for args, words in ((["a/x"], "model spec 'a/x'"), (["a", "a@B"], "named twice"),
                        (["a", "--lazy", "b"], "--lazy b"),
                        (["a", "--memory-budget", "lots"], "--memory-budget: 'lots'")):
        assert run(["serve", *args, "--port", "0"]) == ExitCode.INVALID_INPUT
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
