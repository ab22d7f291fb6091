"""`promote init [DIR]`: write a working starting point for Promote into a git repository.

A starter policy (`policies/<model>.yaml`), a training config (`train/candidates/<model>.yaml`),
three thin workflows calling Promote's reusable workflows, and a CODEOWNERS stanza. Each file is
rendered from a template in promotion/templates/init/ (`${name}` placeholders, nothing else is
touched, so GitHub's `${{ ... }}` and shell `$VAR` pass through). Everything is rendered and the
policy validated before the first write; an existing file stops it all (exit 2, nothing written)
unless --force. Nothing here imports mlflow.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import click

from promotion import REPOSITORY, __version__
from promotion.errors import ExitCode, InvalidInput
from promotion.policy.issues import PolicyError
from promotion.policy.load import parse_policy

DEFAULT_METRICS = ("rmse:minimize",)
CODEOWNERS = ".github/CODEOWNERS"
# The first line of the CODEOWNERS stanza: its presence means the stanza is there already.
CODEOWNERS_MARK = "# Promote: policies decide what reaches Production"
PLACEHOLDER_OWNER = "@your-org/ml-platform"
WORKFLOWS = {  # the file written -> the reusable workflow it calls
    "promote.yml": "reusable-train-and-gate.yml",
    "policy-check.yml": "reusable-policy-check.yml",
    "monitor.yml": "reusable-monitor.yml",
}
_SAFE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SHA = re.compile(r"[0-9a-f]{40}")
_METRIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,249}")
_OWNER = re.compile(r"@[A-Za-z0-9-]+(/[A-Za-z0-9._-]+)?|[^@\s]+@[^@\s]+\.[^@\s]+")
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}
# Absolute bounds that hold whatever the data (the rest depend on the metric's unit).
_KNOWN_BOUNDS = {
    ("r2", "maximize"): ("min: 0", "below 0 is worse than predicting the mean"),
    ("roc_auc", "maximize"): ("min: 0.5", "0.5 is a coin toss"),
}


class _Template(string.Template):
    """Only `${lowercase_name}` is a placeholder: `${{ expr }}`, `$VAR`, `$$` stay as they are."""

    flags = re.RegexFlag(0)
    # string.Template compiles this string when the class is made (typeshed says: a Pattern).
    pattern = (r"\$(?:(?P<escaped>(?!))|(?P<named>(?!))|"  # type: ignore[assignment]
               r"\{(?P<braced>[a-z_][a-z0-9_]*)\}|(?P<invalid>(?!)))")


def template(name: str, **values: str) -> str:
    """The template promotion/templates/init/<name> with every placeholder filled."""
    text = (resources.files("promotion") / "templates" / "init" / name).read_text(encoding="utf-8")
    return _Template(text).substitute(values)


@dataclass
class Plan:
    """What init writes: files by path relative to the repository, and the CODEOWNERS lines."""

    root: Path
    model: str
    files: dict[str, str] = field(default_factory=dict)
    codeowners: str = ""
    owners: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Options


def _metric_option(ctx: click.Context, param: click.Parameter,
                   values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    parsed: list[tuple[str, str]] = []
    for value in values or DEFAULT_METRICS:
        name, sep, goal = value.partition(":")
        if not sep or goal not in ("minimize", "maximize"):
            raise click.BadParameter(f"{value!r}: expected NAME:minimize or NAME:maximize", ctx,
                                     param)
        if not _METRIC.fullmatch(name):
            raise click.BadParameter(
                f"{value!r}: a metric name is letters, digits and '_', '.', '/', '-'", ctx, param)
        if name in dict(parsed):
            raise click.BadParameter(f"{value!r}: metric {name!r} is given twice", ctx, param)
        parsed.append((name, goal))
    return tuple(parsed)


def _model_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := model_problem(value)):
        raise click.BadParameter(f"{value!r}: {problem}", ctx, param)
    return value


def _ref_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (not _SAFE_REF.fullmatch(value) or ".." in value):
        raise click.BadParameter(f"{value!r}: expected a commit SHA or a tag such as "
                                 f"v{__version__}", ctx, param)
    return value


def _owner_option(ctx: click.Context, param: click.Parameter,
                  values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not _OWNER.fullmatch(value):
            raise click.BadParameter(f"{value!r}: expected @user, @org/team or an email address",
                                     ctx, param)
    return tuple(values)


def model_problem(name: str) -> str | None:
    """Why `name` cannot be a registered model's name (the policy language's rule), or None."""
    if not name.strip():
        return "the model name cannot be empty"
    if "/" in name or ":" in name:
        return "model names cannot contain '/' or ':'"
    if name == "." or name.startswith(".."):
        return "model names cannot be '.' or start with '..'"
    if len(name) > 256 or "\n" in name or "\r" in name:
        return "model names are one line of at most 256 characters"
    return None


def slug(text: str) -> str:
    """`text` as a file name (and a default model name): letters, digits, '.', '_' and '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")
    return cleaned[:100] or "model"


def yaml_scalar(text: str) -> str:
    """`text` as a YAML value that reads back as this very string."""
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def default_ref() -> str:
    if not re.fullmatch(r"\d+(\.\d+)*", __version__):
        raise InvalidInput(f"this Promote ({__version__}) is not a release: pass --ref with the "
                           "tag or commit of the release whose workflows to call")
    return f"v{__version__}"


# --------------------------------------------------------------------------------------------
# The repository


def repository_root(directory: str) -> Path:
    """DIR, checked: it exists and is the top of a git work tree (where GitHub finds .github/)."""
    path = Path(directory)
    if not path.is_dir():
        raise InvalidInput(f"{directory}: no such directory (init writes into an existing "
                           "git repository)")
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path,
                              capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise InvalidInput("git is not installed: init needs it to find the repository's "
                           "top") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InvalidInput(f"{directory}: not a git work tree (run `git init` first)")
    top = Path(proc.stdout.strip())
    if top.resolve() != path.resolve():
        raise InvalidInput(f"{directory}: not the top of its git work tree ({top}): GitHub "
                           "only runs workflows from the top's .github/workflows")
    return path


def has_test_target(root: Path) -> bool:
    """Whether the repository's Makefile has a `test` target (the test job's command)."""
    makefile = root / "Makefile"
    try:
        text = makefile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"^test\s*:", text, re.M) is not None


def codeowners_path(root: Path) -> str:
    """The CODEOWNERS file GitHub reads (the first of .github/, the top, docs/), else .github's."""
    for candidate in (CODEOWNERS, "CODEOWNERS", "docs/CODEOWNERS"):
        if (root / candidate).is_file():
            return candidate
    return CODEOWNERS


# --------------------------------------------------------------------------------------------
# Rendering


def metric_rules(metrics: Sequence[tuple[str, str]]) -> str:
    """The policy's `metrics:` entries: the first must improve, the others must not regress."""
    blocks = []
    for index, (name, goal) in enumerate(metrics):
        lines = [f"  {yaml_scalar(name)}:", f"    goal: {goal}"]
        if index == 0:
            lines.append(f"    {'min_improvement: 1%':<29}# better than Production by at least 1% "
                         "of its value: retraining noise never promotes")
        else:
            lines.append(f"    {'max_regression: 2%':<29}# and no more than 2% worse than "
                         "Production on this one")
        side = "max" if goal == "minimize" else "min"
        rule, why = _KNOWN_BOUNDS.get((name, goal), (
            f"# {side}: <value>", f"an absolute bound in {name}'s unit: the worst value you "
                                  "would ever ship"))
        lines.append(f"    {rule:<29}# {why}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def render(root: Path, model: str, metrics: Sequence[tuple[str, str]], owners: Sequence[str],
           ref: str) -> Plan:
    """Every file init writes, rendered and checked; nothing is written here."""
    stem = slug(model)
    tag = f"v{__version__}"
    docs = f"https://github.com/{REPOSITORY}/blob/{tag}/docs"
    own_schema = (root / "policies" / "schema.json").is_file()  # Promote's own repository
    schema = ("schema.json" if own_schema else
              f"https://raw.githubusercontent.com/{REPOSITORY}/{tag}/policies/schema.json")
    values = {"model": yaml_scalar(model), "model_comment": model, "docs": docs}
    plan = Plan(root, model, owners=tuple(owners))
    policy = f"policies/{stem}.yaml"
    plan.files[policy] = template("policy.yaml", schema=schema, metrics=metric_rules(metrics),
                                  **values)
    candidate = f"train/candidates/{stem}.yaml"
    plan.files[candidate] = template("candidate.yaml", path=candidate, **values)
    test = "make test" if has_test_target(root) else ""
    for name, reusable in WORKFLOWS.items():
        plan.files[f".github/workflows/{name}"] = template(
            name, uses=f"{REPOSITORY}/.github/workflows/{reusable}@{ref}", tag=tag, docs=docs,
            test_command=(f"test-command: {test}" if test else
                          "# test-command: make test     # your tests, run before training"))
    plan.codeowners = template("CODEOWNERS", lines=codeowners_lines(owners))
    try:
        parse_policy(plan.files[policy], str(root / policy), base_dir=str(root / "policies"))
    except PolicyError as exc:  # nothing written: the options made a policy that is not valid
        raise InvalidInput("nothing written, the policy would not be valid: "
                           + "; ".join(exc.lines())) from None
    return plan


def codeowners_lines(owners: Sequence[str]) -> str:
    paths = ("/policies/", "/.github/workflows/")
    if owners:
        return "\n".join(f"{path:<24}{' '.join(owners)}" for path in paths)
    return "\n".join([f"# Replace {PLACEHOLDER_OWNER} with the team that reviews them, then "
                      "remove the '# ' of the two lines below:",
                      *(f"# {path:<24}{PLACEHOLDER_OWNER}" for path in paths)])


# --------------------------------------------------------------------------------------------
# Writing


def write(plan: Plan, force: bool) -> list[str]:
    """Write the plan; returns one line per file. Any existing file stops it all, unless force."""
    existing = [rel for rel in plan.files if os.path.lexists(plan.root / rel)]
    if existing and not force:
        raise InvalidInput(f"{plan.root}: nothing written, these files exist already: "
                           f"{', '.join(existing)} (--force overwrites them)")
    created: list[Path] = []
    lines = []
    try:
        for rel, text in plan.files.items():
            path = plan.root / rel
            overwrite = rel in existing
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_file(path, text, overwrite)
            if not overwrite:
                created.append(path)
            lines.append(f"{'overwrote' if overwrite else 'wrote':<10}{rel}")
        lines.append(_append_codeowners(plan))
    except OSError as exc:
        for path in created:  # all or nothing: what this run created goes again
            path.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {exc.filename or plan.root}: "
                           f"{exc.strerror or exc}") from None
    return lines


def _write_file(path: Path, text: str, overwrite: bool) -> None:
    data = text.encode("utf-8")
    if not overwrite:
        with open(path, "xb") as f:  # exclusive: never replaces a file that appeared meanwhile
            f.write(data)
        return
    mode = os.stat(path).st_mode & 0o777 if path.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_codeowners(plan: Plan) -> str:
    rel = codeowners_path(plan.root)
    path = plan.root / rel
    old = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    if CODEOWNERS_MARK in old:
        return f"{'kept':<10}{rel} (it has Promote's lines already)"
    text = plan.codeowners if old.endswith("\n") else "\n" + plan.codeowners
    if not old:
        text = plan.codeowners.lstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return f"{'appended' if old else 'wrote':<10}{rel}"


# --------------------------------------------------------------------------------------------
# The command


@click.command(name="init")
@click.argument("directory", default=".", metavar="[DIR]")
@click.option("--model", metavar="NAME", callback=_model_option,
              help="The registered model to gate. Default: DIR's name.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME:minimize|maximize",
              callback=_metric_option,
              help="A metric rule of the policy (repeatable; the first must improve, the others "
                   "must not regress). Default: rmse:minimize.")
@click.option("--owner", "owners", multiple=True, metavar="@ORG/TEAM", callback=_owner_option,
              help="Code owner of policies/ and .github/workflows/ (repeatable). Default: a "
                   "commented placeholder to edit.")
@click.option("--ref", metavar="SHA|TAG", callback=_ref_option,
              help="The ref of Promote's reusable workflows: pin a commit SHA. "
                   "Default: this release's tag.")
@click.option("--force", is_flag=True, help="Overwrite files that exist already.")
def command(directory: str, model: str | None, metrics: tuple[tuple[str, str], ...],
            owners: tuple[str, ...], ref: str | None, force: bool) -> int:
    """Write a starting point for Promote into the git repository DIR (default: here).

    \b
    policies/<model>.yaml              a starter policy guarding the alias Production
    train/candidates/<model>.yaml      a training config for `promote train`
    .github/workflows/promote.yml      push to main: train, then gate (calls Promote's
    .github/workflows/policy-check.yml   reusable workflows, pinned to --ref)
    .github/workflows/monitor.yml
    .github/CODEOWNERS                 Promote's lines appended (once)

    Nothing is written if any of these files exists already (exit 2), unless --force.
    """
    root = repository_root(directory)
    name = model if model is not None else slug(root.resolve().name)
    ref = ref or default_ref()
    plan = render(root, name, metrics, owners, ref)
    for line in write(plan, force):
        click.echo(line)
    click.echo(next_steps(plan, ref))
    return int(ExitCode.OK)


def next_steps(plan: Plan, ref: str) -> str:
    """What is left to do by hand: settings in GitHub, and what init could not know."""
    tag = f"v{__version__}"
    steps = []
    if not _SHA.fullmatch(ref):
        steps.append(f"Pin the workflows to a commit: `git ls-remote https://github.com/"
                     f"{REPOSITORY} refs/tags/{tag}`\n     gives {tag}'s; then run `promote "
                     f"init --force --ref <SHA>`, or replace @{ref} with @<SHA> in the three "
                     f"workflows (keep the `# {tag}` comment).")
    if not plan.owners:
        steps.append(f"Edit {codeowners_path(plan.root)}: your team in place of "
                     f"{PLACEHOLDER_OWNER}, and remove the '# ' of its two lines.")
    more = "".join(f"  {number}. {text}\n" for number, text in enumerate(steps, start=4))
    return template("next-steps.txt", policy=f"policies/{slug(plan.model)}.yaml",
                    candidate=f"train/candidates/{slug(plan.model)}.yaml", more=more,
                    last=str(4 + len(steps)),
                    docs=f"https://github.com/{REPOSITORY}/blob/{tag}/docs")
