"""The base install and its extras: a command whose extra is missing exits 2 naming it, before it
reads or moves anything; the gate's own paths need none of them.

"Not installed" is made real in a fresh interpreter: `sys.modules[name] = None` makes both
`import name` (ModuleNotFoundError) and `importlib.util.find_spec(name)` (None) behave as if the
package were absent. The slim venv itself is tested in tests/test_packaging.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import add_version, write_policy

from promotion import DISTRIBUTION
from promotion.errors import EXTRAS, ExitCode, InvalidInput, MissingExtra, requires_extra

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "diabetes-regressor.yaml"
CANDIDATE = REPO / "train" / "candidates" / "linear.yaml"
# What the base install leaves out (fastapi and uvicorn come with mlflow-skinny itself).
HEAVY = ("numpy", "pandas", "sklearn", "scipy", "matplotlib", "sqlalchemy", "alembic", "skops",
         "prometheus_client", "apprise", "psycopg", "pyarrow")
WITHOUT = """import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from promotion.cli import run
for argv in sys.argv[2:]:
    print("RC", run(argv.split("\\x1f")), flush=True)
"""


def without(modules: tuple[str, ...], *commands: list[str], cwd: Path,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run each command in one fresh interpreter where `modules` are not installed."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, ",".join(modules), *("\x1f".join(c) for c in commands)],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True, text=True, timeout=120, check=False,
    )


def _extras_of_pyproject() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def test_a_missing_module_of_an_extra_is_said_before_the_body_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)
    ran = []
    with pytest.raises(MissingExtra) as caught, requires_extra("notify", "promote notify-test"):
        ran.append(True)
    assert not ran
    assert str(caught.value) == (
        f"promote notify-test needs the notify extra: pip install '{DISTRIBUTION}[notify]' "
        "(the module apprise is not installed)")
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.exit_code == ExitCode.INVALID_INPUT


def test_an_import_failing_inside_the_body_names_the_extra_and_the_module():
    with pytest.raises(MissingExtra, match=r"needs the serve extra.*module no_such_library "), \
            requires_extra("serve", "promote serve"):
        import no_such_library.sub  # type: ignore[import-not-found]  # noqa: F401


def test_promotes_own_missing_module_and_other_errors_are_not_blamed_on_an_extra():
    with pytest.raises(ModuleNotFoundError), requires_extra("serve", "promote serve"):
        import promotion.no_such_module  # type: ignore[import-not-found]  # noqa: F401
    with pytest.raises(KeyError), requires_extra("serve", "promote serve"):
        raise KeyError("x")


def test_the_extras_table_matches_pyproject():
    extras = _extras_of_pyproject()
    # test: the tools; bench-mlserver: what bench/serve.py compares with (its own venv).
    assert set(EXTRAS) == set(extras) - {"test", "bench-mlserver"}
    others = sorted(set(EXTRAS) - {"all"})
    assert extras["all"] == [f"{DISTRIBUTION}[{','.join(others)}]"] or sorted(
        extras["all"][0].partition("[")[2].rstrip("]").split(",")) == others
    assert f"{DISTRIBUTION}[all]" in extras["test"]
    # Everything is installed in the test venv: the table names real import names.
    import importlib.util

    missing = [m for m in EXTRAS["all"] if importlib.util.find_spec(m) is None]
    assert not missing


@pytest.mark.parametrize(("argv", "blocked", "env", "says"), [
    (["train", str(CANDIDATE)], "numpy", {}, "promote train needs the train extra"),
    (["serve", "some-model"], "prometheus_client", {}, "promote serve needs the serve extra"),
    (["serve", "some-model", "--log-uri", "postgresql://db/log"], "psycopg", {},
     "a PostgreSQL inference log needs the postgres extra"),
    (["watch", str(POLICY), "--once"], "scipy", {}, "promote watch needs the monitor extra"),
    (["rollout", str(POLICY), "--once"], "sqlalchemy", {},
     "promote rollout needs the monitor extra"),
    (["feedback", "some-model", "labels.csv"], "pandas", {},
     "promote feedback needs the monitor extra"),
    (["demo"], "skops", {}, "promote demo needs the all extra"),
    (["gate", str(POLICY)], "apprise", {"PROMOTE_NOTIFY_URLS": "json://127.0.0.1:9/x"},
     "PROMOTE_NOTIFY_URLS (notifications to people) needs the notify extra"),
    (["rollback", "some-model"], "apprise", {"PROMOTE_NOTIFY_URLS": "json://127.0.0.1:9/x"},
     "needs the notify extra"),
    (["status", "some-model"], "alembic", {"MLFLOW_TRACKING_URI": "sqlite:///store.db"},
     "the tracking store sqlite:///store.db needs the local extra"),
])
def test_a_command_without_its_extra_exits_2_naming_it_and_touches_nothing(
        tmp_path, argv, blocked, env, says):
    proc = without((blocked,), argv, cwd=tmp_path, env=env)
    assert proc.stdout.strip().splitlines()[-1:] == ["RC 2"], proc.stdout + proc.stderr
    extra = says.split("needs the ")[1].split()[0]
    assert says in proc.stderr
    assert f"pip install '{DISTRIBUTION}[{extra}]' (the module {blocked} is not installed)" \
        in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store, log or cache was created


def test_a_policy_that_re_scores_needs_the_evaluate_extra(tmp_path):
    policy = write_policy(tmp_path / "p.yaml", "some-model", {
        "metrics": {"rmse": {"goal": "minimize", "max": 1.0, "source": "evaluation"}},
        "evaluation": {"data": "sklearn:load_diabetes", "target": "target"},
    })
    proc = without(("sklearn",), ["policy", "validate", str(policy)], ["gate", str(policy)],
                   cwd=tmp_path)
    assert proc.stdout.strip().splitlines() == ["ok  " + str(policy), "RC 0", "RC 2"], \
        proc.stdout + proc.stderr
    assert (f"the policy {policy} (it re-scores both versions) needs the evaluate extra: "
            f"pip install '{DISTRIBUTION}[evaluate]' (the module sklearn is not installed)"
            in proc.stderr)


@pytest.mark.mlflow
def test_gate_rollback_status_history_and_policy_need_no_extra(client, model_name, tmp_path):
    """Against the real server, with every extra's modules absent: the gate promotes."""
    add_version(client, model_name, {"rmse": 0.5})
    policy = write_policy(tmp_path / "p.yaml", model_name)
    proc = without(HEAVY, ["policy", "validate", str(policy)], ["gate", str(policy)],
                   ["status", model_name], ["history", model_name],
                   ["rollback", model_name, "--dry-run"], cwd=tmp_path)
    codes = [line for line in proc.stdout.splitlines() if line.startswith("RC ")]
    # The rollback has nowhere to go (one version): exit 2, said after reading the registry.
    assert codes == ["RC 0", "RC 0", "RC 0", "RC 0", "RC 2"], proc.stdout + proc.stderr
    assert "PROMOTED: @Production -> version 1" in proc.stdout
    assert client.get_model_version_by_alias(model_name, "Production").version == "1"
    assert "needs the" not in proc.stderr
