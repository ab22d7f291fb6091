"""The CLI contract: version, help without mlflow, one boundary mapping errors to exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from promotion import __version__
from promotion.cli import COMMANDS, run
from promotion.errors import ExitCode, redact


@pytest.fixture
def boom(monkeypatch):
    monkeypatch.setitem(COMMANDS, "boom", ("_boundary_commands", "raises on purpose"))


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"promote, version {__version__}"


def test_help_lists_every_command_without_importing_mlflow():
    code = (
        "import sys; from promotion.cli import run; rc = run(['--help']); "
        "print('RC', rc, 'MLFLOW', 'mlflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "RC 0 MLFLOW False" in out
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.M), name


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "promotion", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_console_script_is_installed():
    promote = Path(sys.executable).with_name("promote")
    proc = subprocess.run([str(promote), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Exit codes" in proc.stdout


def test_unknown_command_is_invalid_input(capsys):
    assert run(["no-such-command"]) == ExitCode.INVALID_INPUT
    assert "No such command" in capsys.readouterr().err


def test_missing_argument_is_invalid_input(boom, capsys):
    assert run(["boom"]) == ExitCode.INVALID_INPUT
    assert "Missing argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("ok", ExitCode.OK),
        ("rejected", ExitCode.REJECTED),
        ("invalid", ExitCode.INVALID_INPUT),
        ("registry", ExitCode.REGISTRY),
        ("conflict", ExitCode.REGISTRY),
        ("interrupt", ExitCode.INTERRUPTED),
        ("bug", ExitCode.BUG),
    ],
)
def test_boundary_maps_outcomes_to_documented_exit_codes(boom, kind, code):
    assert run(["boom", kind]) == code


def test_expected_failure_prints_one_clear_line_without_secrets(boom, capsys):
    assert run(["boom", "registry"]) == ExitCode.REGISTRY
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["cannot reach http://***@127.0.0.1:9 after 3 retries"]


def test_unexpected_error_logs_traceback_and_points_to_it(boom, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMOTE_LOG_DIR", str(tmp_path))
    assert run(["boom", "bug"]) == ExitCode.BUG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "traceback written to" in err[0]
    log = Path(err[0].rsplit(" ", 1)[-1])
    assert log.parent == tmp_path
    assert log.stat().st_mode & 0o777 == 0o600
    text = log.read_text()
    assert "ZeroDivisionError" in text and "Traceback" in text
    assert "hunter2" not in text and "bob" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://u:p@host:5000/x", "http://***@host:5000/x"),
        (
            "postgresql://user:pw@127.0.0.1/db and https://t@h",
            "postgresql://***@127.0.0.1/db and https://***@h",
        ),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("me@example.com", "me@example.com"),
        ("http://u:p@ss@h:5000/x", "http://***@h:5000/x"),
        ("http://u:pa/ss@h", "http://***@h"),
        ("https://h/api?token=abc123&x=1", "https://h/api?token=***&x=1"),
        ("https://h/?a=1&Password=hunter2#frag", "https://h/?a=1&Password=***#frag"),
    ],
)
def test_redact_removes_credentials_only(text, expected):
    assert redact(text) == expected


def test_redacting_formatter_covers_messages_and_tracebacks():
    import logging
    import sys

    from promotion.errors import RedactingFormatter

    try:
        raise RuntimeError("cannot load from http://alice:pw@127.0.0.1:9/x")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "loading https://bob:tok@h failed",
                               None, exc_info)
    text = RedactingFormatter("%(message)s").format(record)
    assert "https://***@h" in text and "http://***@127.0.0.1:9/x" in text
    assert "alice" not in text and "bob" not in text and ":pw@" not in text
