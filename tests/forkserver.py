"""Real `promote` processes without paying for their imports each time.

    with PromoteForker(env) as forker:
        pid = forker.start(["gate", "policy.yaml"], log=path)   # a new process, running
        status = forker.wait()                                  # its exit status, once reaped

A server process imports the CLI, its commands and MLflow once; then, for each command, it forks a
child that runs `promotion.cli.main` with that command's arguments, exactly as `python -m
promotion ARGS` would from there on: its own process (own pid, on this host), its own HTTP
connections, stdout and stderr into `log`, its exit code or the signal that ended it. The server
reaps the child before it reports the status, so once `wait()` returned, the pid is gone (a lease
naming it is provably dead). One child runs at a time.

Run as a script, this file is that server: one JSON request a line on stdin, one JSON answer a
line on stdout ({"pid": ...} once forked, then {"status": ...}, negative for a signal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# What `promote gate` imports lazily, imported once in the server instead (a child imports
# anything missing here itself: slower, never different).
WARM = ("mlflow", "mlflow.tracking", "promotion.cli", "promotion.commands.gate",
        "promotion.gate.promote")


def _child(request: dict) -> None:
    """In the forked child: become `promote ARGS`; never returns."""
    code = 4
    try:
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.argv = ["promote", *request["args"]]
        from promotion.cli import run

        code = run(request["args"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import importlib

    for name in WARM:
        importlib.import_module(name)
    # MLflow's and Promote's lazily built objects (tracking stores, HTTP sessions) are made in
    # each child on first use: nothing here has talked to a server.
    answer = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        answer.write(json.dumps({"pid": pid}) + "\n")
        answer.flush()
        _, status = os.waitpid(pid, 0)
        answer.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        answer.flush()


class PromoteForker:
    """The test's side of the server (see the module docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> PromoteForker:
        self._proc = subprocess.Popen([sys.executable, __file__], env=self._env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _answer(self, key: str) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self._proc.wait()})")
        return int(json.loads(line)[key])

    def start(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
        """Fork `promote ARGS` (with `env` on top of the server's); its pid."""
        assert self._proc is not None and self._proc.stdin is not None
        request = {"args": list(args), "log": str(log), "env": dict(env or {})}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._answer("pid")

    def wait(self) -> int:
        """The exit status of the child last started (negative: the signal that ended it)."""
        return self._answer("status")


if __name__ == "__main__":
    serve()
