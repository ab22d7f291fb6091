"""Decision events: the payload, its signature, delivery with retries, Apprise for people, and
the promise that a delivery never changes a decision, its exit code, or shows a secret.

The endpoints are real HTTP servers on 127.0.0.1 (the standard library's), in threads; the gates
run in-process against the real MLflow test server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from helpers import REPO, add_version, aliases, rmse_policy, write_policy

from promotion import registry
from promotion.cli import run
from promotion.engine import records as record
from promotion.engine.decision import decide
from promotion.engine.facts import VersionFacts
from promotion.engine.records import Trigger
from promotion.engine.results import (
    GateResult,
    RollbackResult,
    RolloutConflict,
    RolloutResult,
    WatchResult,
)
from promotion.engine.rollout import RolloutState
from promotion.engine.signing import DELIVERY_ID_HEADER, SIGNATURE_HEADER, verify
from promotion.engine.step import StepDecision
from promotion.engine.watch import WatchCheck, WatchDecision
from promotion.errors import ExitCode
from promotion.gate import run_gate
from promotion.notify import announce, endpoints
from promotion.notify.config import from_env
from promotion.notify.redaction import Redactor
from promotion.registry.client import connect
from promotion.registry.records import EVENTS_TAG, NOTIFIED_TAG
from promotion.report import events

SCHEMA = json.loads((REPO / "docs" / "events.schema.json").read_text(encoding="utf-8"))
SECRET = "whsec-test-signing-secret"
TOKEN = "tok3nNeverShown9"
VARIABLES = ("PROMOTE_EVENTS_URLS", "PROMOTE_EVENTS_SECRET", "PROMOTE_NOTIFY_URLS",
             "PROMOTE_EVENTS_CONFIG")


def valid(event: dict) -> dict:
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(event)
    return event


# -- a receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that answers each POST with the next status of `answers`
    (then 200), after `delay` seconds, and keeps what it was sent."""

    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}  # as verify takes them
                outer.received.append(Received(self.path, headers, body))
                status = outer.answers.pop(0) if outer.answers else 200
                time.sleep(outer.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up first (a timeout under test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable from the caller's environment; retries without the production pauses."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(endpoints, "BACKOFF", (0.05, 0.05))


def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, urls: str = "",
              secret: str | None = SECRET, notify: str = "", config: str | None = None) -> None:
    monkeypatch.setenv("PROMOTE_EVENTS_URLS", urls)
    monkeypatch.setenv("PROMOTE_NOTIFY_URLS", notify)
    if secret:
        monkeypatch.setenv("PROMOTE_EVENTS_SECRET", secret)
    if config is not None:
        path = tmp_path / "events.yaml"
        path.write_text(config, encoding="utf-8")
        monkeypatch.setenv("PROMOTE_EVENTS_CONFIG", str(path))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def events_line(err: str) -> str:
    found = [line for line in err.splitlines() if line.startswith("events: ")]
    assert len(found) == 1, err
    return found[0]


# -- results built by hand: the payload of every kind, without a server ----------------------

TRIGGER = Trigger(actor="octocat", event="push", github=True, sha="c0ffee" * 6,
                  run_url="https://github.com/o/r/actions/runs/42")


def gate_result(model: str = "m", candidate: float = 0.4, **kwargs: object) -> GateResult:
    policy = rmse_policy(model)
    cand = VersionFacts(model, "2", "run-2", {"rmse": candidate}, source="s3://b/m/2")
    prod = VersionFacts(model, "1", "run-1", {"rmse": 0.5})
    values = {"policy": policy, "decision": decide(policy, cand, prod), "candidate": cand,
              "production": prod, "dry_run": False, "decided_at": "2030-01-01T00:00:00.000Z",
              "trigger": TRIGGER, "tracking_uri": "https://***@mlflow.example.com",
              "applied": True, "record_run_id": "r1"}
    values.update(kwargs)
    return GateResult(**values)  # type: ignore[arg-type]


def watch_result(action: str = "rollback") -> WatchResult:
    check = WatchCheck("error_rate", "max", "breach", "error_rate 0.2 breaches max <= 0.05",
                       live=0.2, bound=0.05)
    decision = WatchDecision("m", "Production", "2", "breach", action,  # type: ignore[arg-type]
                             (check,), in_bake=action == "rollback",
                             why_not_rollback=None if action == "rollback" else "after bake",
                             requests=500)
    rolled = RollbackResult("m", "Production", "1", "2", False, "2030-01-01T00:00:01.000Z",
                            TRIGGER, "http://mlflow", applied=True, record_run_id="r2",
                            kind="watch") if action == "rollback" else None
    return WatchResult(rmse_policy("m"), decision, None, 0.0, 900.0, False, "sqlite:///log.db",
                       "http://mlflow", TRIGGER, rollback=rolled,
                       record_run_id=rolled.record_run_id if rolled else "r3")


def rollout_result(action: str) -> RolloutResult:
    state = RolloutState("Production", "Production-canary", "2", "canary", (0.05, 0.5), 0,
                         "2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z", production="1")
    check = WatchCheck("error_rate", "max", "pass", "within", live=0.0, bound=0.01)
    decision = StepDecision("m", "Production", "Production-canary", "2", "1", 0, 2, 0.05,
                            "canary", "passing", action, (check,), 600, 1800.0,  # type: ignore
                            1800.0, "every rule passed for 30m")
    return RolloutResult(rmse_policy("m"), state, "1", False, "2030-01-01T00:30:00.000Z",
                         TRIGGER, "http://mlflow", decision=decision, applied=action != "wait",
                         record_run_id=None if action == "wait" else "r4")


def event_of(subject: object) -> dict | None:
    return events.payload(subject, event_id="5b0f6a1e-8d0b-4d8e-9b7a-1c2d3e4f5a6b",
                          now="2030-01-01T00:00:00.000Z")


def test_every_kind_of_decision_is_a_valid_event():
    gate = valid(event_of(gate_result()))
    assert (gate["kind"], gate["outcome"], gate["exit_code"]) == ("gate", "promoted", 0)
    assert gate["candidate"] == {"version": "2", "run_id": "run-2", "source": "s3://b/m/2"}
    assert gate["previous_version"] == "1" and gate["trigger"]["commit"] == "c0ffee" * 6
    assert [r["check"] for r in gate["rules"]] == ["rmse max", "rmse min_improvement"]

    rejected = valid(event_of(gate_result(candidate=0.52, applied=False)))
    assert (rejected["outcome"], rejected["exit_code"]) == ("rejected", 1)
    assert rejected["summary"].startswith("rmse min_improvement: 0.52 > 0.495")

    rolled = valid(event_of(watch_result("rollback")))
    assert (rolled["kind"], rolled["outcome"], rolled["applied"]) == ("watch", "rollback", True)
    assert (rolled["candidate"]["version"], rolled["previous_version"]) == ("1", "2")
    assert rolled["rules"][0]["status"] == "breach" and rolled["record_run_id"] == "r2"
    alert = valid(event_of(watch_result("alert")))
    assert (alert["outcome"], alert["applied"], alert["exit_code"]) == ("alert", False, 1)

    advanced = valid(event_of(rollout_result("advance")))
    assert (advanced["kind"], advanced["outcome"], advanced["alias"]) == \
        ("rollout", "advanced", "Production-canary")
    assert advanced["guarded_alias"] == "Production" and advanced["previous_version"] == "1"
    conflict = valid(event_of(RolloutConflict(rollout_result("promote"), "@Production moved")))
    assert (conflict["outcome"], conflict["exit_code"]) == ("conflict", 3)
    assert conflict["reasons"][0].startswith("@Production moved while deciding")


def test_no_decision_no_event():
    assert event_of(gate_result(dry_run=True)) is None
    assert event_of(rollout_result("wait")) is None
    quiet = WatchResult(rmse_policy("m"), None, None, 0.0, 900.0, False, "log", "uri", TRIGGER,
                        note="no version holds @Production")
    assert event_of(quiet) is None
    no_rollout = RolloutResult(rmse_policy("m"), None, "1", False, "2030-01-01T00:00:00.000Z",
                               TRIGGER, "uri", note="no rollout in progress")
    assert event_of(no_rollout) is None


def test_the_human_rendering_has_the_rule_table_and_the_run_link():
    event = event_of(gate_result(candidate=0.52, applied=False))
    assert events.title(event) == \
        "❌ Promote gate: m@Production version 2 rejected (stays on version 1)"
    body = events.markdown(event)
    assert "| check | value | reference | bound | result | reason |" in body
    assert "| rmse min_improvement | 0.52 | 0.5 | 0.495 | fail |" in body
    assert "[the GitHub Actions run](https://github.com/o/r/actions/runs/42)" in body


# -- configuration and redaction -------------------------------------------------------------


def test_configuration_comes_from_the_environment_and_an_optional_file(tmp_path):
    assert not from_env({}).configured
    config = from_env({"PROMOTE_EVENTS_URLS": "https://a.example/x, https://b.example/y?k=1,2",
                       "PROMOTE_NOTIFY_URLS": "mailto://u:p@x.org?to=a@x.org,b@x.org slack://T/B/C"})
    assert config.endpoints == ("https://a.example/x", "https://b.example/y?k=1,2")
    assert config.targets == ("mailto://u:p@x.org?to=a@x.org,b@x.org", "slack://T/B/C")
    assert config.secret is None and (config.timeout, config.attempts) == (5.0, 3)
    path = tmp_path / "events.yaml"
    path.write_text("timeout: 2\nattempts: 2\nnotify: {outcomes: [rejected, rollback]}\n")
    config = from_env({"PROMOTE_NOTIFY_URLS": "json://h/", "PROMOTE_EVENTS_CONFIG": str(path)})
    assert (config.timeout, config.attempts, config.problem) == (2.0, 2, None)
    assert config.notify.wants("gate", "rejected") and not config.notify.wants("gate", "promoted")
    assert config.events.wants("gate", "promoted")
    path.write_text("notify: {outcomes: [promotd]}\n")
    problem = from_env({"PROMOTE_NOTIFY_URLS": "json://h/",
                        "PROMOTE_EVENTS_CONFIG": str(path)}).problem
    assert problem is not None and "unknown 'promotd'" in problem


def test_redaction_removes_every_piece_of_a_configured_url():
    clean = Redactor([f"slack://{TOKEN}/Bsecondpart/Cthirdpart",
                      f"https://user:{TOKEN}x@hooks.example.com/hook/{TOKEN}y?token=zz"])
    said = clean(f"could not reach {TOKEN} at hooks.example.com: /hook/{TOKEN}y Bsecondpart")
    assert TOKEN not in said and "hooks.example.com" not in said and "Bsecondpart" not in said
    assert said.startswith("could not reach ***")


# -- delivery --------------------------------------------------------------------------------


def test_503_twice_then_200_is_delivered_after_three_attempts(receiver):
    receiver.answers = [503, 503, 200]
    body = events.encode(event_of(gate_result()))
    sent = endpoints.deliver(receiver.url(), body, secret=SECRET, timeout=2, attempts=3,
                             index=1, of=1, clean=str)
    assert (sent.ok, sent.attempts) == (True, 3)
    assert events.delivered([sent], signed=True) == \
        "delivered to 1 of 1 endpoints (endpoint 1 after 3 attempts)"
    # One delivery: one id for its three attempts, each signed afresh.
    assert len({r.headers[DELIVERY_ID_HEADER.lower()] for r in receiver.received}) == 1
    for r in receiver.received:
        assert verify(SECRET, r.headers, r.body, time.time()).ok


def test_a_client_error_is_not_retried_and_redirects_are_not_followed(receiver):
    receiver.answers = [401, 302]
    sent = endpoints.deliver(receiver.url(), b"{}", secret=None, timeout=2, attempts=3,
                             index=2, of=2, clean=str)
    assert (sent.ok, sent.attempts, sent.why) == (False, 1, "HTTP 401")
    sent = endpoints.deliver(receiver.url(), b"{}", secret=None, timeout=2, attempts=3,
                             index=2, of=2, clean=str)
    assert sent.why == "HTTP 302 (redirects are not followed)"
    assert events.delivered([sent], signed=False) == (
        "delivered to 0 of 1 endpoints (unsigned: PROMOTE_EVENTS_SECRET is not set), failed "
        "for endpoint 2 of 2 (http): HTTP 302 (redirects are not followed)")
    assert SIGNATURE_HEADER.lower() not in receiver.received[-1].headers


def test_nothing_configured_costs_nothing():
    """No variable: announce returns at once; Apprise and requests are never imported, not even
    by the commands' modules (nor mlflow, which --help must not pay for)."""
    code = ("import sys\n"
            "import promotion.commands.gate, promotion.commands.rollback, "
            "promotion.commands.watch, promotion.commands.rollout\n"
            "from promotion.notify import announce\n"
            "assert announce(None, object(), env={}) is None\n"
            "print(sorted(m for m in ('apprise', 'requests', 'mlflow') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# -- end to end: gates, a rollback, a conflict -----------------------------------------------


@pytest.fixture
def gate(tracking_uri, capsys, tmp_path):
    def _gate(model: str, *args: str):
        path = write_policy(tmp_path / "policy.yaml", model)
        return run_cli(capsys, "gate", str(path), *args)
    return _gate


@pytest.fixture
def production(client, model_name):
    v = add_version(client, model_name, {"rmse": 0.5})
    client.set_registered_model_alias(model_name, "Production", v)
    return v


@pytest.mark.mlflow
def test_a_gate_event_reaches_the_endpoint_signed(gate, client, model_name, production,
                                                  receiver, monkeypatch, tmp_path):
    configure(monkeypatch, tmp_path, urls=receiver.url())
    candidate = add_version(client, model_name, {"rmse": 0.4})
    code, out, err = gate(model_name)
    assert code == ExitCode.OK and "PROMOTED" in out
    assert events_line(err) == "events: delivered to 1 of 1 endpoints"
    (got,) = receiver.received
    assert got.path == "/events" and got.headers["content-type"] == "application/json"
    verdict = verify(SECRET, got.headers, got.body, time.time())
    assert verdict.ok, verdict.reason
    event = valid(got.json)
    tags = client.get_model_version(model_name, candidate).tags
    assert (event["model"], event["alias"], event["kind"], event["outcome"]) == \
        (model_name, "Production", "gate", "promoted")
    assert (event["exit_code"], event["applied"], event["previous_version"]) == (0, True, "1")
    assert event["candidate"]["version"] == candidate
    assert event["candidate"]["source"] == client.get_model_version(model_name, candidate).source
    assert event["policy"]["sha256"] == tags[record.POLICY_SHA256]
    assert event["record_run_id"] == tags[record.RECORD_RUN]
    assert {r["check"] for r in event["rules"]} == {"rmse max", "rmse min_improvement"}
    run_tags = client.get_run(tags[record.RECORD_RUN]).data.tags
    assert run_tags[EVENTS_TAG] == "delivered to 1 of 1 endpoints"
    assert NOTIFIED_TAG not in run_tags


@pytest.mark.mlflow
def test_a_rejection_and_a_rollback_each_emit_their_event(gate, client, model_name, receiver,
                                                          monkeypatch, tmp_path, capsys):
    configure(monkeypatch, tmp_path, urls=receiver.url())
    for rmse in (0.5, 0.4):
        add_version(client, model_name, {"rmse": rmse})
        assert gate(model_name)[0] == ExitCode.OK
    add_version(client, model_name, {"rmse": 0.45})
    code, _, err = gate(model_name)
    assert code == ExitCode.REJECTED and "delivered to 1 of 1" in events_line(err)
    code, out, err = run_cli(capsys, "rollback", model_name)
    assert code == ExitCode.OK and "ROLLED BACK" in out
    assert events_line(err) == "events: delivered to 1 of 1 endpoints"
    got = [valid(r.json) for r in receiver.received]
    assert [(e["kind"], e["outcome"], e["exit_code"]) for e in got] == [
        ("gate", "promoted", 0), ("gate", "promoted", 0), ("gate", "rejected", 1),
        ("rollback", "rollback", 0)]
    rejected, rollback = got[2], got[3]
    assert (rejected["candidate"]["version"], rejected["previous_version"]) == ("3", "2")
    assert any(r["status"] == "fail" for r in rejected["rules"])
    assert (rollback["candidate"]["version"], rollback["previous_version"]) == ("1", "2")
    assert rollback["policy"] is None and rollback["applied"] is True
    assert aliases(client, model_name) == {"Production": "1", "Production-previous": "2"}


@pytest.mark.mlflow
def test_a_conflict_emits_its_event(gate, client, model_name, production, receiver,
                                    monkeypatch, tmp_path):
    configure(monkeypatch, tmp_path, urls=receiver.url())
    candidate = add_version(client, model_name, {"rmse": 0.4})
    other = add_version(client, model_name, {"rmse": 0.45})
    real_set_tags = registry.set_tags

    def another_writer_moves_the_alias(c, model, version, tags):
        real_set_tags(c, model, version, tags)
        if tags.get(record.DECISION) == "pending":
            client.set_registered_model_alias(model_name, "Production", other)

    monkeypatch.setattr(registry, "set_tags", another_writer_moves_the_alias)
    code, _, err = gate(model_name, "--candidate", candidate)
    assert code == ExitCode.REGISTRY
    assert events_line(err) == "events: delivered to 1 of 1 endpoints"
    (event,) = [valid(r.json) for r in receiver.received]
    assert (event["outcome"], event["exit_code"], event["applied"]) == ("conflict", 3, False)
    assert "moved while deciding" in event["summary"]
    assert aliases(client, model_name) == {"Production": other}


@pytest.mark.mlflow
@pytest.mark.parametrize("how", ["down", "slow"])
def test_a_failed_delivery_changes_nothing_and_is_recorded(how, gate, client, model_name,
                                                           production, monkeypatch, tmp_path,
                                                           closed_port):
    slow = Receiver(delay=1.5)
    try:
        url = f"http://127.0.0.1:{closed_port}/events?token={TOKEN}" if how == "down" else \
            slow.url(f"/events/{TOKEN}")
        configure(monkeypatch, tmp_path, urls=url, config="timeout: 0.3\n")
        candidate = add_version(client, model_name, {"rmse": 0.4})
        started = time.monotonic()
        code, out, err = gate(model_name)
        elapsed = time.monotonic() - started
    finally:
        slow.close()
    assert code == ExitCode.OK and "PROMOTED: @Production -> version 2" in out
    assert aliases(client, model_name) == {"Production": candidate, "Production-previous": "1"}
    why = "connection refused" if how == "down" else "no answer within 0.3 s"
    expected = f"delivered to 0 of 1 endpoints, failed for endpoint 1 of 1 (http): {why} " \
               "after 3 attempts"
    assert events_line(err) == f"events: {expected}"
    assert TOKEN not in out + err and "127.0.0.1" not in err
    run_id = client.get_model_version(model_name, candidate).tags[record.RECORD_RUN]
    assert client.get_run(run_id).data.tags[EVENTS_TAG] == expected
    assert elapsed < 20
    if how == "slow":
        assert len(slow.received) == 3


@pytest.mark.mlflow
def test_people_are_told_through_apprise_and_no_token_shows(gate, client, model_name,
                                                            production, receiver, monkeypatch,
                                                            tmp_path, closed_port):
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs"
    for name, value in {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "o/r",
                        "GITHUB_RUN_ID": "42", "GITHUB_SHA": "c0ffee" * 6,
                        "GITHUB_ACTOR": "octocat", "GITHUB_EVENT_NAME": "push",
                        "GITHUB_STEP_SUMMARY": str(summary),
                        "GITHUB_OUTPUT": str(outputs)}.items():
        monkeypatch.setenv(name, value)
    good = f"json://user:{TOKEN}@127.0.0.1:{receiver.port}/notify"
    down = f"json://user:{TOKEN}@127.0.0.1:{closed_port}/notify"
    configure(monkeypatch, tmp_path, secret=None, notify=f"{good}, {down}")
    candidate = add_version(client, model_name, {"rmse": 0.52})
    code, out, err = gate(model_name)
    assert code == ExitCode.REJECTED
    line = events_line(err)
    assert line.startswith("events: notified 1 of 2 targets, failed for target 2 of 2 (json): ")
    (got,) = receiver.received
    assert got.path == "/notify"
    message = got.json
    assert message["title"] == f"❌ Promote gate: {model_name}@Production version " \
                               f"{candidate} rejected (stays on version 1)"
    assert "| rmse min_improvement | 0.52 | 0.5 | 0.495 | fail |" in message["message"]
    assert "[the GitHub Actions run](https://github.com/o/r/actions/runs/42)" in \
        message["message"]
    run_id = client.get_model_version(model_name, candidate).tags[record.RECORD_RUN]
    tags = client.get_run(run_id).data.tags
    assert tags[NOTIFIED_TAG] == line.removeprefix("events: ") and EVENTS_TAG not in tags
    assert line in summary.read_text()
    for text in (out, err, summary.read_text(), outputs.read_text(), *tags.values()):
        assert TOKEN not in text and str(closed_port) not in text


@pytest.mark.mlflow
def test_a_dry_run_and_an_unconfigured_gate_send_nothing(gate, client, model_name, production,
                                                         receiver, monkeypatch, tmp_path):
    add_version(client, model_name, {"rmse": 0.4})
    code, _, err = gate(model_name)  # nothing configured: no line
    assert code == ExitCode.OK and "events:" not in err
    add_version(client, model_name, {"rmse": 0.3})
    configure(monkeypatch, tmp_path, urls=receiver.url())
    code, _, err = gate(model_name, "--dry-run")
    assert code == ExitCode.OK and "events:" not in err and receiver.received == []


@pytest.mark.mlflow
def test_a_record_that_cannot_be_tagged_is_said_and_changes_nothing(tracking_uri, client,
                                                                   model_name, production,
                                                                   receiver, monkeypatch):
    add_version(client, model_name, {"rmse": 0.4})
    result = run_gate(connect(tracking_uri), rmse_policy(model_name))
    client.delete_run(result.record_run_id)  # tags can no longer be written to it
    env = {"PROMOTE_EVENTS_URLS": receiver.url(), "PROMOTE_EVENTS_SECRET": SECRET}
    line = announce(connect(tracking_uri), result, env=env)
    assert line is not None and line.startswith(
        "events: delivered to 1 of 1 endpoints; the decision record was not tagged (")
    assert result.return_code == ExitCode.OK
