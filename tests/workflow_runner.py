"""A small local runner for this repository's GitHub Actions workflows, for the smoke tests.

It does what a GitHub-hosted runner does with the parts of a workflow that are ours: jobs in
`needs:` order with their `if:` conditions, matrices, `${{ }}` expressions (github, env, inputs,
secrets, vars, matrix, strategy, steps, needs, runner), the `run:` steps in bash with the runner's
files and variables (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_ENV, GITHUB_PATH,
GITHUB_EVENT_PATH, RUNNER_TEMP...), step outputs feeding job outputs feeding later jobs.

What it cannot run is replaced by its effect: `actions/checkout` is the scratch copy the test
prepared; `actions/setup-python` puts a bare Python on PATH (the copy's `.venv` is pre-seeded by
`seed_venv`, so `make install` has nothing to do); `actions/upload-artifact` copies the files into
the run's artifacts directory. Any other action is an error: the runner must be taught its effect.
Not modelled: runners, permissions, environments' protection rules and concurrency queues (their
values are recorded so tests can check them), caches, services, containers.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STEP_TIMEOUT_S = 300


class RunnerError(Exception):
    """The workflow uses something this runner cannot reproduce."""


# ---------------------------------------------------------------------------------------------
# Expressions: the subset of GitHub's language the workflows use, with its semantics (loose
# equality, case-insensitive string comparison, `&&`/`||` returning operands).


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>-?\d+(?:\.\d+)?)
    | '(?P<str>(?:[^']|'')*)'
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!().,\[\]*])
    | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""", re.X)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RunnerError(f"cannot read expression {text!r} at {pos}")
        pos = m.end()
        if m.group("num") is not None:
            out.append(("lit", float(m.group("num"))))
        elif m.group("str") is not None:
            out.append(("lit", m.group("str").replace("''", "'")))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            name = m.group("name")
            literals = {"true": True, "false": False, "null": None}
            out.append(("lit", literals[name]) if name in literals else ("name", name))
    return out


def truthy(value: Any) -> bool:
    return value not in (False, None, 0, 0.0, "") if not isinstance(value, (dict, list)) else True


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0.0
        except ValueError:
            return float("nan")
    return float("nan")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return bool(a == b)
    return _number(a) == _number(b)


def to_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _format(fmt: str, *args: Any) -> str:
    return re.sub(r"\{(\d+)\}", lambda m: to_string(args[int(m.group(1))]),
                  fmt.replace("{{", "\0").replace("}}", "\1")).replace("\0", "{").replace("\1", "}")


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, list):
        return any(_equal(item, needle) for item in haystack)
    return to_string(needle).lower() in to_string(haystack).lower()


class _Parser:
    def __init__(self, text: str, context: Mapping[str, Any],
                 functions: Mapping[str, Callable[..., Any]]) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.context = context
        self.functions = functions
        self.text = text

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if token is None or (op is not None and token != ("op", op)):
            raise RunnerError(f"expected {op or 'more'} in {self.text!r}")
        self.pos += 1
        return token

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise RunnerError(f"unexpected {self.peek()} in {self.text!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.compare()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.compare()
            value = right if truthy(value) else value
        return value

    def compare(self) -> Any:
        value = self.unary()
        token = self.peek()
        if token and token[0] == "op" and token[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.unary()
            op = token[1]
            if op == "==":
                return _equal(value, right)
            if op == "!=":
                return not _equal(value, right)
            a, b = _number(value), _number(right)
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        return value

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not truthy(self.unary())
        return self.postfix(self.primary())

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "lit":
            return value
        if kind == "op" and value == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if kind == "name":
            if self.peek() == ("op", "("):
                self.take()
                args = []
                while self.peek() != ("op", ")"):
                    args.append(self.or_())
                    if self.peek() == ("op", ","):
                        self.take()
                self.take(")")
                function = self.functions.get(value.lower())
                if function is None:
                    raise RunnerError(f"unknown function {value}() in {self.text!r}")
                return function(*args)
            return self.context.get(value)
        raise RunnerError(f"unexpected {value!r} in {self.text!r}")

    def postfix(self, value: Any) -> Any:
        while True:
            token = self.peek()
            if token == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind == "op" and name == "*":
                    value = list(value.values()) if isinstance(value, dict) else []
                    continue
                value = _member(value, to_string(name) if kind == "lit" else name)
            elif token == ("op", "["):
                self.take()
                key = self.or_()
                self.take("]")
                value = value[int(key)] if isinstance(value, list) else _member(value, key)
            else:
                return value


def _member(value: Any, key: Any) -> Any:
    if not isinstance(value, dict):
        return None
    key = to_string(key)
    if key in value:
        return value[key]
    lowered = {str(k).lower(): v for k, v in value.items()}  # contexts are case-insensitive
    return lowered.get(key.lower())


def evaluate(expression: str, context: Mapping[str, Any], status: str = "success") -> Any:
    """Evaluate one expression (without `${{ }}`). `status`: the job's or step's state so far."""
    functions: dict[str, Callable[..., Any]] = {
        "success": lambda: status == "success",
        "failure": lambda: status == "failure",
        "cancelled": lambda: status == "cancelled",
        "always": lambda: True,
        "fromjson": lambda s: json.loads(to_string(s)),
        "tojson": lambda v: json.dumps(v, indent=2),
        "format": _format,
        "contains": _contains,
        "startswith": lambda a, b: to_string(a).lower().startswith(to_string(b).lower()),
        "endswith": lambda a, b: to_string(a).lower().endswith(to_string(b).lower()),
        "join": lambda a, sep=",": to_string(sep).join(map(to_string, a))
        if isinstance(a, list) else to_string(a),
    }
    return _Parser(expression, context, functions).parse()


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def substitute(value: Any, context: Mapping[str, Any], status: str = "success") -> Any:
    """Evaluate `${{ }}` in a value: a lone expression keeps its type, others become text."""
    if isinstance(value, dict):
        return {k: substitute(v, context, status) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, context, status) for v in value]
    if not isinstance(value, str) or "${{" not in value:
        return value
    whole = _TEMPLATE.fullmatch(value.strip())
    if whole:
        return evaluate(whole.group(1), context, status)
    return _TEMPLATE.sub(lambda m: to_string(evaluate(m.group(1), context, status)), value)


_STATUS_FUNCTIONS = re.compile(r"\b(success|failure|cancelled|always)\s*\(", re.I)


def condition(text: Any, context: Mapping[str, Any], status: str) -> bool:
    """An `if:`: implicitly `success() && (...)` unless it calls a status function."""
    if text is None:
        return status == "success"
    if isinstance(text, bool):
        return text and status == "success"
    expression = str(text).strip()
    whole = _TEMPLATE.fullmatch(expression)
    if whole:
        expression = whole.group(1)
    if not _STATUS_FUNCTIONS.search(expression):
        expression = f"success() && ({expression})"
    return truthy(evaluate(expression, context, status))


# ---------------------------------------------------------------------------------------------
# Workspace


def scratch_copy(repo: Path, dest: Path) -> Path:
    """Copy the repository's files as a checkout would have them: tracked and not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=repo, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if not source.is_file():  # deleted in the work tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def seed_venv(workspace: Path, python: str = sys.executable) -> None:
    """Give the copy a `.venv` that `make install` finds up to date and that runs the COPY's code.

    `.venv/bin/python` and `.venv/bin/promote` run this interpreter (which has every dependency)
    with the copy first on the import path; the Makefile's install stamps are newer than
    pyproject.toml, so `make install` does nothing. No pip: a workflow that tried to install
    into this venv would fail loudly instead of changing the developer's environment.
    """
    bin_dir = workspace / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = f'PYTHONPATH="{workspace}${{PYTHONPATH:+:$PYTHONPATH}}"'
    scripts = {
        "python": f'#!/bin/sh\n{pythonpath} exec "{python}" "$@"\n',
        "promote": f'#!/bin/sh\n{pythonpath} exec "{python}" -m promotion "$@"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    (bin_dir / "python3").symlink_to("python")
    for stamp in (".installed", ".installed-test"):
        (workspace / ".venv" / stamp).touch()


def bare_python_dir(root: Path) -> Path:
    """A directory holding `python`/`python3` for the base interpreter (what setup-python gives)."""
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    directory = root / "toolcache" / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        if not (directory / name).exists():
            (directory / name).symlink_to(base)
    return directory


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class StepResult:
    name: str
    id: str | None
    kind: str  # run | uses | skipped
    outcome: str  # success | failure | skipped
    returncode: int | None = None
    script: str = ""
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    env: dict[str, str] = field(default_factory=dict)  # the step's own `env:`, evaluated
    seconds: float = 0.0

    def annotations(self) -> list[str]:
        """The workflow commands (::error ...::) the step printed: GitHub reads both streams."""
        return [line for line in (self.stdout + "\n" + self.stderr).splitlines()
                if line.startswith("::")]


@dataclass
class LegResult:
    """One job, or one matrix combination of it."""

    job: str
    matrix: dict[str, Any]
    result: str  # success | failure | cancelled
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    environment: Any = None
    concurrency: Any = None

    @property
    def summary(self) -> str:
        return "".join(s.summary for s in self.steps)

    def step(self, name_or_id: str) -> StepResult:
        for step in self.steps:
            if name_or_id in (step.id, step.name):
                return step
        raise KeyError(f"{self.job}: no step {name_or_id!r}")


@dataclass
class JobResult:
    id: str
    result: str  # success | failure | skipped | cancelled
    legs: list[LegResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why it did not run, or was assumed

    @property
    def summary(self) -> str:
        return "".join(leg.summary for leg in self.legs)


@dataclass
class RunResult:
    workflow: str
    event: str
    jobs: dict[str, JobResult]
    artifacts: Path

    def job(self, job_id: str) -> JobResult:
        return self.jobs[job_id]

    @property
    def summary(self) -> str:
        return "".join(job.summary for job in self.jobs.values())

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every text the run produced: logs, outputs, summaries, environment files, artifacts."""
        for job in self.jobs.values():
            for key, value in job.outputs.items():
                yield f"{job.id}.outputs.{key}", value
            for leg in job.legs:
                for step in leg.steps:
                    where = f"{job.id}/{step.name}"
                    yield f"{where} stdout", step.stdout
                    yield f"{where} stderr", step.stderr
                    yield f"{where} summary", step.summary
                    for key, value in step.outputs.items():
                        yield f"{where} output {key}", value
        for path in sorted(self.artifacts.rglob("*")):
            if path.is_file():
                yield f"artifact {path.relative_to(self.artifacts)}", path.read_text(
                    errors="replace")

    def describe(self) -> str:
        """A readable log of the run, for assertion messages."""
        lines = [f"{self.workflow} on {self.event}"]
        for job in self.jobs.values():
            lines.append(f"job {job.id}: {job.result} {job.reason}".rstrip())
            for leg in job.legs:
                for step in leg.steps:
                    lines.append(f"  {step.outcome:8} {step.name} (rc={step.returncode}, "
                                 f"{step.seconds:.1f} s)")
                    if step.outcome == "failure":
                        lines += [f"    | {li}" for li in (step.stdout + step.stderr)
                                  .splitlines()[-30:]]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class Event:
    """What triggered the run: the event name, its payload, and the refs GitHub derives from it."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    ref: str = "refs/heads/main"
    sha: str = "0" * 40
    base_ref: str = ""
    head_ref: str = ""

    @classmethod
    def push(cls, sha: str = "0" * 40) -> Event:
        return cls("push", {"ref": "refs/heads/main", "after": sha}, sha=sha)

    @classmethod
    def dispatch(cls, **inputs: str | bool) -> Event:
        return cls("workflow_dispatch", {"ref": "refs/heads/main", "inputs": inputs})

    @classmethod
    def schedule(cls, cron: str = "*/15 * * * *") -> Event:
        """A scheduled run (default branch); `github.event.schedule` is the cron that fired."""
        return cls("schedule", {"schedule": cron})

    @classmethod
    def pull_request(cls, number: int, base: str, head: str, sha: str) -> Event:
        payload = {"number": number,
                   "pull_request": {"number": number, "base": {"ref": base},
                                    "head": {"ref": head, "sha": sha}}}
        return cls("pull_request", payload, ref=f"refs/pull/{number}/merge", sha=sha,
                   base_ref=base, head_ref=head)

    @property
    def inputs(self) -> dict[str, Any]:
        return dict(self.payload.get("inputs", {}))


@dataclass
class Runner:
    workspace: Path  # the scratch copy: checkout's effect
    scratch: Path  # where the runner keeps its files (RUNNER_TEMP, artifacts, HOME)
    secrets: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)
    # Jobs not run here but treated as passed, with the reason (e.g. a job that runs this suite).
    assume_success: Mapping[str, str] = field(default_factory=dict)
    # The outputs such a job is taken to have set (e.g. what a train job would have registered).
    assume_outputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    repository: str = "example/promote"
    base_path: str = "/usr/local/bin:/usr/bin:/bin"

    def run(self, workflow_file: Path, event: Event) -> RunResult:
        workflow = load_workflow(workflow_file)
        triggers = workflow["on"]
        if event.name not in (triggers if isinstance(triggers, (dict, list)) else [triggers]):
            raise RunnerError(f"{workflow_file.name} does not run on {event.name}")
        if event.name == "schedule":
            crons = [entry.get("cron") for entry in triggers.get("schedule") or []]
            if event.payload.get("schedule") not in crons:
                raise RunnerError(f"{workflow_file.name} has no schedule "
                                  f"{event.payload.get('schedule')!r} (it has {crons})")
        run_id = str(uuid.uuid4().int % 10**10)
        root = self.scratch / f"run-{run_id}"
        artifacts = root / "artifacts"
        artifacts.mkdir(parents=True)
        event_path = root / "event.json"
        event_path.write_text(json.dumps(event.payload))
        inputs = self._inputs(triggers, event)
        github = {
            "event_name": event.name, "event": event.payload, "sha": event.sha, "ref": event.ref,
            "ref_name": event.ref.rsplit("/", 1)[-1] if event.name != "pull_request"
            else event.ref.split("refs/", 1)[-1],
            "base_ref": event.base_ref, "head_ref": event.head_ref,
            "repository": self.repository, "run_id": run_id, "run_number": "1",
            "run_attempt": "1", "server_url": "https://github.com", "actor": "smoke-test",
            "workflow": workflow.get("name", workflow_file.name), "workspace": str(self.workspace),
        }
        base_env = {
            "PATH": self.base_path, "HOME": str(self._home(root)), "LANG": "C.UTF-8", "CI": "true",
            "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(self.workspace),
            "GITHUB_EVENT_NAME": event.name, "GITHUB_EVENT_PATH": str(event_path),
            "GITHUB_SHA": event.sha, "GITHUB_REF": event.ref, "GITHUB_REF_NAME": github["ref_name"],
            "GITHUB_BASE_REF": event.base_ref, "GITHUB_HEAD_REF": event.head_ref,
            "GITHUB_REPOSITORY": self.repository, "GITHUB_RUN_ID": run_id,
            "GITHUB_RUN_NUMBER": "1", "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_SERVER_URL": "https://github.com", "GITHUB_ACTOR": "smoke-test",
            "GITHUB_WORKFLOW": github["workflow"], "RUNNER_OS": "Linux",
        }
        state = _RunState(workflow, github, inputs, base_env, root, artifacts, self.secrets,
                          self.vars)
        jobs: dict[str, JobResult] = {}
        for job_id in _job_order(workflow["jobs"]):
            jobs[job_id] = self._job(state, job_id, jobs)
        return RunResult(workflow_file.name, event.name, jobs, artifacts)

    def _home(self, root: Path) -> Path:
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    @staticmethod
    def _inputs(triggers: Any, event: Event) -> dict[str, Any]:
        if event.name != "workflow_dispatch":
            return {}
        declared = (triggers.get("workflow_dispatch") or {}).get("inputs", {})
        given = event.inputs
        unknown = set(given) - set(declared)
        if unknown:
            raise RunnerError(f"undeclared inputs {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            value = given.get(name, spec.get("default", ""))
            if spec.get("type") == "choice" and value not in spec.get("options", []):
                raise RunnerError(f"input {name}={value!r} is not one of {spec['options']}")
            if spec.get("type") == "boolean":
                # The inputs context holds a boolean input as a boolean ("true" from the CLI too;
                # no default: false).
                value = {"true": True, "false": False, "": False}.get(str(value).lower(), value)
                if not isinstance(value, bool):
                    raise RunnerError(f"input {name}={value!r} is not a boolean")
            if spec.get("required") and value in ("", None):
                raise RunnerError(f"input {name} is required")
            values[name] = value
        return values

    # -- jobs

    def _job(self, state: _RunState, job_id: str, done: Mapping[str, JobResult]) -> JobResult:
        job = state.workflow["jobs"][job_id]
        needs = _as_list(job.get("needs", []))
        needs_ctx = {n: {"result": done[n].result, "outputs": done[n].outputs} for n in needs}
        context = state.context(needs=needs_ctx)
        # success() is false when a needed job failed or was skipped; failure() only if one failed.
        failed = [n for n in needs if done[n].result in ("failure", "cancelled")]
        skipped = [n for n in needs if done[n].result == "skipped"]
        status = "failure" if failed else "skipped" if skipped else "success"
        if not condition(job.get("if"), context, status):
            return JobResult(job_id, "skipped", reason="(if: false)")
        if job_id in self.assume_success:
            return JobResult(job_id, "success", outputs=dict(self.assume_outputs.get(job_id, {})),
                             reason=f"(assumed: {self.assume_success[job_id]})")

        strategy = job.get("strategy", {})
        legs = _matrix_legs(substitute(strategy.get("matrix"), context))
        fail_fast = strategy.get("fail-fast", True)
        result = JobResult(job_id, "success")
        for index, matrix in enumerate(legs):
            if fail_fast and result.result == "failure":
                result.legs.append(LegResult(job_id, matrix, "cancelled"))
                continue
            strategy_ctx = {"job-index": index, "job-total": len(legs),
                            "fail-fast": fail_fast, "max-parallel": len(legs)}
            leg = self._leg(state, job_id, job, needs_ctx, matrix, strategy_ctx)
            result.legs.append(leg)
            result.outputs.update(leg.outputs)  # as on GitHub: the last matrix job to finish wins
            if leg.result == "failure":
                result.result = "failure"
        return result

    def _leg(self, state: _RunState, job_id: str, job: Mapping[str, Any],
             needs_ctx: dict[str, Any], matrix: dict[str, Any],
             strategy_ctx: dict[str, Any]) -> LegResult:
        temp = state.root / f"temp-{job_id}-{strategy_ctx['job-index']}"
        temp.mkdir(parents=True)
        files = {name: temp / f"_{name.lower()}" for name in ("GITHUB_ENV", "GITHUB_PATH")}
        for path in files.values():
            path.touch()
        runner_ctx = {"temp": str(temp), "os": "Linux", "arch": "X64", "name": "smoke"}
        context = state.context(needs=needs_ctx, matrix=matrix, strategy=strategy_ctx,
                                runner=runner_ctx)
        env: dict[str, str] = {}
        for level in (state.workflow.get("env", {}), job.get("env", {})):
            env.update({k: to_string(v) for k, v in
                        substitute(level, {**context, "env": env}).items()})
        leg = LegResult(job_id, matrix, "success",
                        environment=substitute(job.get("environment"), context),
                        concurrency=substitute(job.get("concurrency"), context))
        steps_ctx: dict[str, Any] = {}
        extra_path: list[str] = []
        job_env: dict[str, str] = {}
        defaults = {**state.workflow.get("defaults", {}).get("run", {}),
                    **job.get("defaults", {}).get("run", {})}
        status = "success"
        for number, step in enumerate(job.get("steps", [])):
            name = step.get("name") or step.get("uses") or step.get("run", "").split("\n")[0]
            ctx = {**context, "env": {**env, **job_env}, "steps": steps_ctx}
            if not condition(step.get("if"), ctx, status):
                leg.steps.append(StepResult(name, step.get("id"), "skipped", "skipped"))
                continue
            step_env = {k: to_string(v) for k, v in substitute(step.get("env", {}), ctx).items()}
            process_env = {**state.base_env, **env, **job_env, **step_env,
                           "RUNNER_TEMP": str(temp), "GITHUB_JOB": job_id,
                           "GITHUB_ENV": str(files["GITHUB_ENV"]),
                           "GITHUB_PATH": str(files["GITHUB_PATH"])}
            process_env["PATH"] = ":".join([*reversed(extra_path), state.base_env["PATH"]])
            if "uses" in step:
                result = self._uses(step, ctx, name, state, extra_path)
            else:
                result = self._run(step, ctx, name, number, temp, process_env, defaults)
            result.env = step_env
            leg.steps.append(result)
            if step.get("id"):
                steps_ctx[step["id"]] = {"outputs": result.outputs, "outcome": result.outcome,
                                         "conclusion": result.outcome}
            if result.outcome == "failure" and not step.get("continue-on-error"):
                status = "failure"
            job_env.update(read_env_file(files["GITHUB_ENV"]))
            extra_path[:] = [p for p in files["GITHUB_PATH"].read_text().splitlines() if p]
        leg.result = status
        outputs_ctx = {**context, "env": {**env, **job_env}, "steps": steps_ctx}
        leg.outputs = {k: to_string(v) for k, v in
                       substitute(job.get("outputs", {}), outputs_ctx).items()}
        return leg

    def _run(self, step: Mapping[str, Any], ctx: Mapping[str, Any], name: str, number: int,
             temp: Path, env: dict[str, str], defaults: Mapping[str, Any]) -> StepResult:
        script = str(step["run"])
        if "${{" in script:
            # GitHub would expand it into the script text (template injection); refuse to.
            raise RunnerError(f"step {name!r}: expressions inside run: are not allowed")
        shell = step.get("shell", defaults.get("shell"))
        path = temp / f"step-{number}.sh"
        path.write_text(script)
        if shell in (None, ""):
            argv = ["bash", "-e", str(path)]  # GitHub's implicit default: no pipefail
        elif shell == "bash":
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)]
        elif shell == "sh":
            argv = ["sh", "-e", str(path)]
        else:
            raise RunnerError(f"step {name!r}: shell {shell!r} is not supported here")
        output = temp / f"output-{number}"
        summary = temp / f"summary-{number}"
        output.touch()
        summary.touch()
        env = {**env, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)}
        cwd = self.workspace / step.get("working-directory", defaults.get("working-directory", "."))
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S)
        return StepResult(name, step.get("id"), "run",
                          "success" if proc.returncode == 0 else "failure", proc.returncode,
                          script, proc.stdout, proc.stderr, read_env_file(output),
                          summary.read_text(), seconds=time.monotonic() - started)

    def _uses(self, step: Mapping[str, Any], ctx: Mapping[str, Any], name: str,
              state: _RunState, extra_path: list[str]) -> StepResult:
        action = str(step["uses"]).split("@", 1)[0]
        with_ = {k: to_string(v) for k, v in substitute(step.get("with", {}), ctx).items()}
        if action == "actions/checkout":
            note = f"checkout: the scratch copy {self.workspace}"
        elif action == "actions/setup-python":
            extra_path.append(str(bare_python_dir(state.root)))
            note = f"setup-python {with_.get('python-version', '')}: {sys.version.split()[0]}"
        elif action == "actions/upload-artifact":
            note = self._upload(with_, state.artifacts)
        else:
            raise RunnerError(f"no local effect known for {step['uses']}")
        return StepResult(name, step.get("id"), "uses", "success", 0, stdout=note)

    def _upload(self, with_: Mapping[str, str], artifacts: Path) -> str:
        name = with_.get("name", "artifact")
        target = artifacts / name
        if target.exists():
            raise RunnerError(f"artifact {name!r} uploaded twice (names must be unique)")
        found = [Path(p) for pattern in with_.get("path", "").splitlines() if pattern.strip()
                 for p in glob.glob(os.path.expanduser(pattern.strip()), recursive=True)]
        if not found:
            if with_.get("if-no-files-found", "warn") == "error":
                raise RunnerError(f"artifact {name!r}: no files")
            return f"upload-artifact {name}: no files"
        target.mkdir(parents=True)
        copied = 0
        for path in found:
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied += 1
            elif path.is_dir():  # a directory uploads its files, as upload-artifact does
                for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                    (target / inner.relative_to(path)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(inner, target / inner.relative_to(path))
                    copied += 1
        return f"upload-artifact {name}: {copied} file(s)"


@dataclass
class _RunState:
    workflow: dict[str, Any]
    github: dict[str, Any]
    inputs: dict[str, Any]
    base_env: dict[str, str]
    root: Path
    artifacts: Path
    secrets: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)

    def context(self, **more: Any) -> dict[str, Any]:
        return {"github": self.github, "inputs": self.inputs, "secrets": dict(self.secrets),
                "vars": dict(self.vars), "env": {}, "matrix": {}, "strategy": {}, "steps": {},
                "needs": {}, "runner": {}, **more}


def load_workflow(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _job_order(jobs: Mapping[str, Any]) -> list[str]:
    """Jobs in an order that respects `needs:`, file order among those ready."""
    order: list[str] = []
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(n in order for n in _as_list(jobs[j].get("needs")))]
        if not ready:
            raise RunnerError(f"needs: cycle or unknown job among {pending}")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def _matrix_legs(matrix: Any) -> list[dict[str, Any]]:
    if not matrix:
        return [{}]
    if not isinstance(matrix, dict):
        raise RunnerError(f"matrix must be a mapping, got {matrix!r}")
    include = list(matrix.get("include", []))
    exclude = list(matrix.get("exclude", []))
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    legs = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())] \
        if axes else []
    legs = [leg for leg in legs
            if not any(all(leg.get(k) == v for k, v in ex.items()) for ex in exclude)]
    legs += include
    if not legs:
        raise RunnerError("the matrix is empty (GitHub fails such a job)")
    return legs


def read_env_file(path: Path) -> dict[str, str]:
    """`name=value` lines and `name<<DELIMITER` blocks, as GitHub reads GITHUB_OUTPUT/GITHUB_ENV."""
    values: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = list(itertools.takewhile(lambda li, d=delimiter: li != d, lines))
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        elif line.strip():
            raise RunnerError(f"{path.name}: cannot read line {line!r}")
    return values

