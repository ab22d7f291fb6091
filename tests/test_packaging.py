"""The distribution as users get it: built (sdist, then the wheel from the sdist), checked by
twine, installed slim into a fresh venv (no extras, no system site-packages, not editable), and
run there: the version, policy validation, a real gate, and a clear exit 2 for what needs an extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from helpers import add_version, write_policy

from promotion import DISTRIBUTION, REPOSITORY, __version__

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "diabetes-regressor.yaml"
CANDIDATE = REPO / "train" / "candidates" / "linear.yaml"
HEAVY = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "matplotlib", "sqlalchemy",
         "apprise", "skops", "prometheus-client", "psycopg")
# Left out of the copy the distribution is built from: local state, never part of a release.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                    "mlruns", "mlartifacts", "*.db", ".pytest_cache",
                                    ".mypy_cache", ".ruff_cache", ".hypothesis")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False,
                          **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`python -m build` on a copy of the tree: the sdist, and the wheel built from it."""
    root = tmp_path_factory.mktemp("dist")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = root / "out"
    proc = _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def slim(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its base requirements only; its bin directory."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)])
    assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", "-c", str(REPO / "constraints.txt"),
                 str(dist["wheel"])], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv / "bin"


def promote_in(bin_dir: Path, *argv: str, cwd: Path, env: dict[str, str] | None = None):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return _run([str(bin_dir / "promote"), *argv], cwd=cwd, env={**clean, **(env or {})})


def _package_files() -> set[str]:
    """Every file of promotion/ in the tree that is not Python: all are read at run time."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / "promotion").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".py", ".pyc"}}


def test_the_wheel_holds_every_module_and_data_file(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "promotion").rglob("*.py")}
    data = _package_files()
    assert "promotion/py.typed" in data
    assert any(name.startswith("promotion/templates/") for name in data)
    assert not (modules | data) - names


def test_the_wheel_metadata_has_the_version_the_slim_base_and_the_extras(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(wheel.read(meta_name).decode())
    assert meta["Name"] == DISTRIBUTION and meta["Version"] == __version__
    base = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in base) == \
        ["click", "mlflow-skinny", "pydantic", "pyyaml"]
    assert set(meta.get_all("Provides-Extra")) >= {
        "local", "train", "evaluate", "serve", "monitor", "notify", "postgres", "all", "test"}


def test_the_sdist_holds_what_the_wheel_was_built_from(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        top = f"{dist['sdist'].name.removesuffix('.tar.gz')}/"
        names = {m.name.removeprefix(top) for m in sdist.getmembers() if m.isfile()}
    assert {"pyproject.toml", "README.md"} <= names
    wheel = {n for n in zipfile.ZipFile(dist["wheel"]).namelist()
             if n.startswith("promotion/")}
    assert not wheel - names


def test_twine_accepts_both(dist):
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]),
                 str(dist["sdist"])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_slim_venv_has_promote_and_none_of_the_extras(slim, tmp_path):
    where = _run([str(slim / "python"), "-c", "import promotion; print(promotion.__file__)"],
                 cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert where.stdout.startswith(str(slim.parent)), where.stdout + where.stderr
    listed = _run([str(slim / "python"), "-m", "pip", "list", "--format=json",
                   "--disable-pip-version-check"])
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"mlflow-skinny", DISTRIBUTION} <= installed
    assert not installed & set(HEAVY)


def test_the_slim_venv_prints_its_version_and_validates_policies(slim, tmp_path):
    version = promote_in(slim, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"promote, version {__version__}"
    valid = promote_in(slim, "policy", "validate", str(POLICY), cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    schema = promote_in(slim, "policy", "schema", cwd=tmp_path)
    committed = json.loads((REPO / "policies" / "schema.json").read_text(encoding="utf-8"))
    assert json.loads(schema.stdout) == committed


@pytest.mark.parametrize(("argv", "extra"), [
    (["train", str(CANDIDATE)], "train"),
    (["serve", "some-model"], "serve"),
    (["watch", str(POLICY), "--once"], "monitor"),
])
def test_the_slim_venv_says_which_extra_a_command_needs(slim, tmp_path, argv, extra):
    proc = promote_in(slim, *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"needs the {extra} extra: pip install '{DISTRIBUTION}[{extra}]'" in proc.stderr
    assert "is not installed" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.mlflow
def test_the_slim_venv_gates_logged_metrics_on_the_real_server(slim, client, tracking_uri,
                                                               model_name, tmp_path):
    add_version(client, model_name, {"rmse": 0.9})
    add_version(client, model_name, {"rmse": 0.5})
    policy = write_policy(tmp_path / "p.yaml", model_name)
    proc = promote_in(slim, "gate", str(policy), "--json", cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "promoted"
    assert client.get_model_version_by_alias(model_name, "Production").version == "2"


def test_the_changelog_starts_at_this_version():
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert releases and releases[0] == __version__, releases
    assert f"[{__version__}]: https://github.com/{REPOSITORY}/" in text
