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
`actions/cache` restores when its `path` exists (`cache-hit: 'true'`) and saves nothing when it
does not; `Runner.tool_cache` is RUNNER_TOOL_CACHE (`seed_promote_install` fills it).

A job that calls a reusable workflow (`uses: ./.github/workflows/x.yml`, `$/...`, or
`owner/repo/.github/workflows/x.yml@ref` for a repository mapped in `Runner.repositories`) runs
the called jobs with the call's `inputs` (`with:`, evaluated in the caller's context, declared
types and defaults applied) and `secrets` (only those passed by name, or all with `inherit`), the
caller's `github` context, and maps `on.workflow_call.outputs` to the caller job's outputs. The
called jobs are reported under their own ids and as `<caller>/<called>`.
Not modelled: runners, permissions, environments' protection rules and environment-scoped secrets,
concurrency queues (their values are recorded so tests can check them), services, containers.
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
    if whole and "${{" not in whole.group(1):  # one expression, not `${{ a }}/${{ b }}`
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


def _wrapper_bin(bin_dir: Path, source: Path, python: str) -> None:
    """`python`, `python3` and `promote` in `bin_dir`, running `python` with `source` first on
    the import path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = f'PYTHONPATH="{source}${{PYTHONPATH:+:$PYTHONPATH}}"'
    scripts = {
        "python": f'#!/bin/sh\n{pythonpath} exec "{python}" "$@"\n',
        "promote": f'#!/bin/sh\n{pythonpath} exec "{python}" -m promotion "$@"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to("python")


def seed_venv(workspace: Path, python: str = sys.executable) -> None:
    """Give the copy a `.venv` that `make install` finds up to date and that runs the COPY's code.

    `.venv/bin/python` and `.venv/bin/promote` run this interpreter (which has every dependency)
    with the copy first on the import path; the Makefile's install stamps are newer than
    pyproject.toml, so `make install` does nothing. No pip: a workflow that tried to install
    into this venv would fail loudly instead of changing the developer's environment.
    """
    _wrapper_bin(workspace / ".venv" / "bin", workspace, python)
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
    # A job that calls a reusable workflow: the inputs it passed, the names of the secrets it
    # passed (never their values), and the called jobs by their ids.
    inputs: dict[str, Any] | None = None
    secrets: list[str] = field(default_factory=list)
    called: dict[str, JobResult] = field(default_factory=dict)

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

    def unique_jobs(self) -> list[JobResult]:
        """Each job once (a called job is listed under two ids)."""
        seen: dict[int, JobResult] = {}
        for job in self.jobs.values():
            seen.setdefault(id(job), job)
        return list(seen.values())

    @property
    def summary(self) -> str:
        return "".join(job.summary for job in self.unique_jobs())

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every text the run produced: logs, outputs, summaries, environment files, artifacts."""
        for job in self.unique_jobs():
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
        for job in self.unique_jobs():
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
    # Other repositories' files, by "owner/repo": their actions and workflows resolve here.
    repositories: Mapping[str, Path] = field(default_factory=dict)
    # RUNNER_TOOL_CACHE and runner.tool_cache (default: a directory of the run, empty).
    tool_cache: Path | None = None

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
        tool_cache = self.tool_cache or root / "tool-cache"
        tool_cache.mkdir(parents=True, exist_ok=True)
        base_env["RUNNER_TOOL_CACHE"] = str(tool_cache)
        state = _RunState(workflow, github, inputs, base_env, root, artifacts, self.secrets,
                          self.vars, source=_repository_root(workflow_file, self.workspace),
                          tool_cache=str(tool_cache))
        return RunResult(workflow_file.name, event.name, self._jobs(state), artifacts)

    def _jobs(self, state: _RunState) -> dict[str, JobResult]:
        """Every job of a workflow; a called workflow's jobs also under their own ids and
        `<caller>/<called>` (a job of the caller keeps its id if a called one has the same)."""
        jobs: dict[str, JobResult] = {}
        own = set(state.workflow["jobs"])
        for job_id in _job_order(state.workflow["jobs"]):
            jobs[job_id] = self._job(state, job_id, jobs)
            for called_id, called in jobs[job_id].called.items():
                jobs[f"{job_id}/{called_id}"] = called
                if called_id not in own and called_id not in jobs:
                    jobs[called_id] = called
        return jobs

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
        if "uses" in job:
            return self._call(state, job_id, job, context)

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

    # -- reusable workflows

    def _call(self, state: _RunState, job_id: str, job: Mapping[str, Any],
              context: Mapping[str, Any]) -> JobResult:
        """A job that calls a reusable workflow: its jobs, with the call's inputs and secrets."""
        where = f"job {job_id} ({job['uses']})"
        if "strategy" in job:
            raise RunnerError(f"{where}: a matrix of workflow calls is not modelled here")
        if state.depth >= 9:  # GitHub: ten levels of workflows at most, the caller included
            raise RunnerError(f"{where}: workflow calls nested too deep")
        path, source = self._called_file(str(job["uses"]), state, where)
        called = load_workflow(path)
        spec = _call_trigger(called.get("on"))
        if spec is None:
            raise RunnerError(f"{where}: {path.name} has no workflow_call trigger")
        inputs = _call_inputs(spec.get("inputs") or {}, substitute(job.get("with") or {}, context),
                              {"github": state.github}, where)
        secrets = _call_secrets(spec.get("secrets") or {}, job.get("secrets"), context,
                                state.secrets, where)
        root = state.root / f"call-{job_id}"
        root.mkdir(parents=True)
        called_state = _RunState(called, state.github, inputs, state.base_env, root,
                                 state.artifacts, secrets, state.vars, source=source,
                                 tool_cache=state.tool_cache, depth=state.depth + 1)
        jobs = self._jobs(called_state)
        own = {j: jobs[j] for j in called["jobs"]}
        result = JobResult(job_id, "success", inputs=inputs, secrets=sorted(secrets), called=jobs,
                           reason=f"(calls {job['uses']})")
        if any(j.result in ("failure", "cancelled") for j in own.values()):
            result.result = "failure"
        outputs_ctx = {"github": state.github, "inputs": inputs, "vars": dict(state.vars),
                       "jobs": {j: {"result": r.result, "outputs": r.outputs}
                                for j, r in own.items()}}
        result.outputs = {k: to_string(substitute((v or {}).get("value", ""), outputs_ctx))
                          for k, v in (spec.get("outputs") or {}).items()}
        return result

    def _called_file(self, uses: str, state: _RunState, where: str) -> tuple[Path, Path]:
        """The called workflow's file and its repository's root."""
        if uses.startswith(("./", "$/")):
            if "@" in uses:
                raise RunnerError(f"{where}: a workflow of the same repository takes no @ref")
            root = state.source or self.workspace
            inner = uses[2:]
        else:
            name, _, ref = uses.partition("@")
            owner, _, rest = name.partition("/")
            repo, _, inner = rest.partition("/")
            if not ref or not owner or not repo:
                raise RunnerError(f"{where}: expected owner/repo/.github/workflows/<file>@<ref>")
            found = [Path(p) for known, p in self.repositories.items()
                     if known.lower() == f"{owner}/{repo}".lower()]
            if not found:
                raise RunnerError(f"{where}: repository {owner}/{repo} is not mapped "
                                  "(Runner.repositories)")
            root = found[0]
        if not re.fullmatch(r"\.github/workflows/[^/]+\.ya?ml", inner):
            raise RunnerError(f"{where}: a reusable workflow is a file of .github/workflows/")
        if not (root / inner).is_file():
            raise RunnerError(f"{where}: no {inner} in {root}")
        return root / inner, root

    def _leg(self, state: _RunState, job_id: str, job: Mapping[str, Any],
             needs_ctx: dict[str, Any], matrix: dict[str, Any],
             strategy_ctx: dict[str, Any]) -> LegResult:
        temp = state.root / f"temp-{job_id}-{strategy_ctx['job-index']}"
        temp.mkdir(parents=True)
        files = {name: temp / f"_{name.lower()}" for name in ("GITHUB_ENV", "GITHUB_PATH")}
        for path in files.values():
            path.touch()
        runner_ctx = {"temp": str(temp), "os": "Linux", "arch": "X64", "name": "smoke",
                      "tool_cache": state.tool_cache}
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
        composite = composite_action_dir(str(step["uses"]), self.workspace, self.repositories)
        if composite is not None:  # ./path, or a mapped repository's action: run its steps
            return run_composite(self, composite, step, ctx, name, state, extra_path)
        action = str(step["uses"]).split("@", 1)[0]
        with_ = {k: to_string(v) for k, v in substitute(step.get("with", {}), ctx).items()}
        outputs: dict[str, str] = {}
        if action == "actions/checkout":
            note = f"checkout: the scratch copy {self.workspace}"
        elif action == "actions/setup-python":
            # As the action does: the directory goes to GITHUB_PATH, so a step's own additions
            # (read back from that file after each step) keep it.
            directory = str(bare_python_dir(state.root))
            with (Path(ctx["runner"]["temp"]) / "_github_path").open("a") as path_file:
                path_file.write(directory + "\n")
            extra_path.append(directory)
            outputs["python-version"] = sys.version.split()[0]
            note = f"setup-python {with_.get('python-version', '')}: {outputs['python-version']}"
        elif action == "actions/upload-artifact":
            note = self._upload(with_, state.artifacts)
        elif action == "actions/cache":
            outputs, note = _cache(with_)
        else:
            raise RunnerError(f"no local effect known for {step['uses']}")
        return StepResult(name, step.get("id"), "uses", "success", 0, stdout=note, outputs=outputs)

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
    source: Path | None = None  # the repository the workflow file is in (`./` and `$/` uses)
    tool_cache: str = ""
    depth: int = 0  # how many workflow calls deep

    def context(self, **more: Any) -> dict[str, Any]:
        return {"github": self.github, "inputs": self.inputs, "secrets": dict(self.secrets),
                "vars": dict(self.vars), "env": {}, "matrix": {}, "strategy": {}, "steps": {},
                "needs": {}, "runner": {}, **more}


# ---------------------------------------------------------------------------------------------
# Composite actions: an action.yml with `runs.using: composite`, from the workspace (`uses: ./`,
# `uses: ./path`) or from a repository mapped in `Runner.repositories` (`owner/repo[/path]@ref`),
# run step by step as GitHub runs it: its inputs (defaults evaluated, a required one without a
# default missing and an unknown one are errors), an `inputs` context and `github.action_path` /
# GITHUB_ACTION_PATH, step `if:`, nested `uses:`, each step's own GITHUB_OUTPUT and
# GITHUB_STEP_SUMMARY, the job's GITHUB_ENV and GITHUB_PATH, `outputs.<x>.value` as the action
# step's outputs. Stricter than GitHub on purpose: GitHub only warns about unknown inputs and does
# not enforce `required`.


@dataclass
class ActionStepResult(StepResult):
    """A composite action's step: its stdout, stderr and summary are its steps', in order."""

    steps: list[StepResult] = field(default_factory=list)

    def step(self, name_or_id: str) -> StepResult:
        for step in self.steps:
            if name_or_id in (step.id, step.name):
                return step
        raise KeyError(f"{self.name}: no step {name_or_id!r}")


def composite_action_dir(uses: str, workspace: Path,
                         repositories: Mapping[str, Path]) -> Path | None:
    """Where the action named by `uses:` is, when it is ours to run; None for any other action."""
    if uses == "." or uses.startswith("./"):
        return (workspace / uses).resolve()  # relative to the workspace, even inside an action
    parts = uses.partition("@")[0].split("/")
    repo = "/".join(parts[:2]).lower()  # owner/repo: GitHub ignores their case
    for known, root in repositories.items():
        if known.lower() == repo:
            return Path(root).joinpath(*parts[2:])
    return None


def load_action(directory: Path) -> dict[str, Any]:
    for filename in ("action.yml", "action.yaml"):
        path = directory / filename
        if path.is_file():
            manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
            using = (manifest.get("runs") or {}).get("using")
            if using != "composite":
                raise RunnerError(f"{path}: runs.using is {using!r}; only composite actions run "
                                  "here")
            return manifest
    raise RunnerError(f"no action.yml in {directory}")


def action_inputs(manifest: Mapping[str, Any], given: Mapping[str, str],
                  ctx: Mapping[str, Any], where: str) -> dict[str, str]:
    """The `inputs` context: what `with:` gave, else the default (evaluated in the caller's
    github, strategy, matrix, job and runner contexts, as GitHub evaluates it)."""
    declared = manifest.get("inputs") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise RunnerError(f"{where}: unknown inputs {unknown} (declared: {sorted(declared)})")
    default_ctx = {k: ctx.get(k, {}) for k in ("github", "strategy", "matrix", "job", "runner")}
    values: dict[str, str] = {}
    for key, spec in declared.items():
        spec = spec or {}
        if key in given:
            values[key] = given[key]
        elif spec.get("required") and "default" not in spec:
            raise RunnerError(f"{where}: input {key} is required")
        else:
            values[key] = to_string(substitute(spec.get("default", ""), default_ctx))
    return values


def run_composite(runner: Runner, directory: Path, step: Mapping[str, Any],
                  ctx: Mapping[str, Any], name: str, state: _RunState,
                  extra_path: list[str]) -> ActionStepResult:
    """Run a composite action's steps in the calling job (its temp, env files and PATH)."""
    manifest = load_action(directory)
    uses = str(step["uses"])
    with_ = {k: to_string(v) for k, v in substitute(step.get("with", {}), ctx).items()}
    call = _ActionCall(runner, state, directory, uses, Path(ctx["runner"]["temp"]), extra_path,
                       ctx, {k: to_string(v) for k, v in
                             substitute(step.get("env", {}), ctx).items()})
    inputs = action_inputs(manifest, with_, ctx, uses)
    github = {**ctx["github"], "action_path": str(directory), "action": step.get("id") or name,
              "action_ref": uses.partition("@")[2],
              "action_repository": "" if uses.startswith(".") else uses.partition("@")[0]}
    # An action sees no secrets, vars nor needs: only what its inputs and env give it.
    base = {k: v for k, v in ctx.items() if k not in ("secrets", "vars", "needs")}
    result = ActionStepResult(name, step.get("id"), "uses", "success", 0)
    steps_ctx: dict[str, Any] = {}
    started = time.monotonic()
    for number, inner in enumerate(manifest["runs"].get("steps") or []):
        inner_ctx = {**base, "github": github, "inputs": inputs, "env": call.env(),
                     "steps": steps_ctx}
        done = call.step(number, inner, inner_ctx, result.outcome)
        result.steps.append(done)
        if inner.get("id"):
            steps_ctx[inner["id"]] = {"outputs": done.outputs, "outcome": done.outcome,
                                      "conclusion": done.outcome}
        if done.outcome == "failure" and not inner.get("continue-on-error"):
            result.outcome, result.returncode = "failure", done.returncode
    outputs_ctx = {**base, "github": github, "inputs": inputs, "steps": steps_ctx,
                   "env": call.env()}
    result.outputs = {key: to_string(substitute((spec or {}).get("value", ""), outputs_ctx))
                      for key, spec in (manifest.get("outputs") or {}).items()}
    for done in result.steps:
        if done.kind != "skipped":
            result.stdout += f"[{done.name}]\n{done.stdout}"
        result.stderr += done.stderr
        result.summary += done.summary
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _ActionCall:
    """One run of a composite action inside a job: what its steps share with the job."""

    runner: Runner
    state: _RunState
    directory: Path
    uses: str
    job_temp: Path  # the job's RUNNER_TEMP, where its GITHUB_ENV and GITHUB_PATH files are
    extra_path: list[str]  # the job's GITHUB_PATH entries, updated after each step
    ctx: Mapping[str, Any]  # the caller's context
    outer_env: dict[str, str]  # the `env:` of the step that uses the action
    own_temp: Path = field(init=False)  # this call's scripts and step files

    def __post_init__(self) -> None:
        self.own_temp = self.job_temp / f"action-{uuid.uuid4().hex[:8]}"
        self.own_temp.mkdir()

    def env(self) -> dict[str, str]:
        """The `env` context of the action's next step: the job's, GITHUB_ENV's, the caller's."""
        return {**self.ctx["env"], **read_env_file(self.job_temp / "_github_env"),
                **self.outer_env}

    def step(self, number: int, inner: Mapping[str, Any], inner_ctx: Mapping[str, Any],
             status: str) -> StepResult:
        name = inner.get("name") or inner.get("uses") or str(inner.get("run", "")).split("\n")[0]
        if not condition(inner.get("if"), inner_ctx, status):
            return StepResult(name, inner.get("id"), "skipped", "skipped")
        env = {**inner_ctx["env"], **{k: to_string(v) for k, v in
                                      substitute(inner.get("env", {}), inner_ctx).items()}}
        if "uses" in inner:
            done = self.runner._uses(inner, {**inner_ctx, "env": env}, name, self.state,
                                     self.extra_path)
        else:
            if not inner.get("shell"):
                raise RunnerError(f"{self.uses}: step {name!r} has no shell (an action's run "
                                  "steps must name one)")
            process_env = {
                **self.state.base_env, **env, "RUNNER_TEMP": str(self.job_temp),
                "GITHUB_ENV": str(self.job_temp / "_github_env"),
                "GITHUB_PATH": str(self.job_temp / "_github_path"),
                "GITHUB_ACTION_PATH": str(self.directory),
                "GITHUB_JOB": re.sub(r"^temp-|-\d+$", "", self.job_temp.name),  # temp-<job>-<n>
                "PATH": ":".join([*reversed(self.extra_path), self.state.base_env["PATH"]])}
            done = self.runner._run(inner, inner_ctx, name, number, self.own_temp, process_env,
                                    {})
        done.env = {k: v for k, v in env.items() if k in (inner.get("env") or {})}
        self.extra_path[:] = [p for p in (self.job_temp / "_github_path").read_text()
                              .splitlines() if p]
        return done


def _cache(with_: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """actions/cache's effect: a hit when every `path` exists (restored), else a miss; nothing
    is saved at the end of the job (a later run finds what the test put there, or nothing)."""
    paths = [Path(os.path.expanduser(p.strip())) for p in with_.get("path", "").splitlines()
             if p.strip()]
    if not paths or not with_.get("key"):
        raise RunnerError("actions/cache needs a path and a key")
    if "," in with_["key"]:
        raise RunnerError(f"actions/cache: a key holds no comma: {with_['key']!r}")
    hit = all(p.exists() for p in paths)
    return ({"cache-hit": "true" if hit else "false"},
            f"cache {with_['key']}: {'hit' if hit else 'miss'}")


def _repository_root(workflow_file: Path, workspace: Path) -> Path:
    """The repository a workflow file belongs to (`<root>/.github/workflows/x.yml`)."""
    path = workflow_file.resolve()
    if path.parent.name == "workflows" and path.parent.parent.name == ".github":
        return path.parents[2]
    return workspace


def _call_trigger(triggers: Any) -> dict[str, Any] | None:
    """`on.workflow_call` of a workflow (an empty mapping when it has no inputs), else None."""
    if triggers == "workflow_call" or (isinstance(triggers, list) and "workflow_call" in triggers):
        return {}
    if isinstance(triggers, dict) and "workflow_call" in triggers:
        return triggers["workflow_call"] or {}
    return None


def _call_inputs(declared: Mapping[str, Any], given: Mapping[str, Any],
                 default_ctx: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The called workflow's `inputs`: what `with:` gave, else the default, of its declared type
    (GitHub fails the run on a wrong type, a missing required input or an unknown one)."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise RunnerError(f"{where}: undeclared inputs {unknown}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        spec = spec or {}
        kind = spec.get("type", "string")
        if name in given:
            value = given[name]
        elif spec.get("required"):
            raise RunnerError(f"{where}: input {name} is required")
        else:
            value = substitute(spec.get("default", {"boolean": False, "number": 0}.get(kind, "")),
                               default_ctx)
        if kind == "boolean" and not isinstance(value, bool):
            raise RunnerError(f"{where}: input {name} is a boolean, got {value!r}")
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunnerError(f"{where}: input {name} is a number, got {value!r}")
        values[name] = to_string(value) if kind == "string" else value
    return values


def _call_secrets(declared: Mapping[str, Any], given: Any, context: Mapping[str, Any],
                  caller: Mapping[str, str], where: str) -> dict[str, str]:
    """The called workflow's `secrets`: those passed by name (only declared names may be), or
    all of the caller's with `inherit`; a required one must be passed (it may be empty)."""
    if given == "inherit":
        secrets = dict(caller)
    else:
        given = given or {}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise RunnerError(f"{where}: secrets {unknown} are not declared by the workflow")
        secrets = {k: to_string(substitute(v, context)) for k, v in given.items()}
    missing = sorted(k for k, spec in declared.items()
                     if (spec or {}).get("required") and k not in secrets)
    if missing:
        raise RunnerError(f"{where}: required secrets {missing} not passed")
    return secrets


def seed_promote_install(tool_cache: Path, version: str, python_version: str,
                         source: Path, python: str = sys.executable) -> Path:
    """What actions/cache restores for the reusable workflows' PyPI install of mlflow-promote:
    `<tool_cache>/mlflow-promote/<version>/<python_version>/bin/{python,promote}`, running this
    interpreter on `source`'s code (like `seed_venv`), so the install step finds a cache hit and
    never runs pip."""
    bin_dir = tool_cache / "mlflow-promote" / version / python_version / "bin"
    _wrapper_bin(bin_dir, source, python)
    return bin_dir


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

