"""Where a candidate came from: source revision, CI run, and fingerprints of its data and config.

These values are recorded as tags on the training run and on the registered version, so a version
in the registry can be traced back to the exact commit, workflow run, data and config that made it.
Everything here is cheap and MLflow-free; a missing `git` or a tree that is not a repository
simply yields no git tags (training outside a checkout is legitimate).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# The one reader of GitHub's run context, shared with decision records (`lineage.github_run_url`).
from promotion.engine.records import github_run_url

if TYPE_CHECKING:
    import pandas as pd

# Tag keys, shared by the run and the model version.
GIT_COMMIT = "git_commit"
GIT_BRANCH = "git_branch"
GIT_DIRTY = "git_dirty"
GITHUB_RUN_URL = "github_run_url"
DATA_SHA256 = "data_sha256"
CONFIG_SHA256 = "config_sha256"

_GIT_TIMEOUT_S = 5


@dataclass(frozen=True)
class GitInfo:
    commit: str | None = None
    branch: str | None = None  # None on a detached HEAD outside Actions
    dirty: bool | None = None  # uncommitted changes to tracked files


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return None


def _git_line(args: list[str], cwd: Path) -> str | None:
    out = _git(args, cwd)
    return out.stdout.strip() or None if out is not None and out.returncode == 0 else None


def git_info(where: str | os.PathLike[str] = ".", env: Mapping[str, str] | None = None) -> GitInfo:
    """The commit, branch and dirtiness of the checkout containing `where`.

    Actions checks out a detached HEAD, so there the branch comes from GITHUB_HEAD_REF (pull
    requests) or GITHUB_REF_NAME; without git at all, GITHUB_SHA still names the commit.
    """
    env = os.environ if env is None else env
    path = Path(where)
    cwd = path if path.is_dir() else path.parent
    commit = _git_line(["rev-parse", "HEAD"], cwd)
    branch = _git_line(["symbolic-ref", "--short", "-q", "HEAD"], cwd)
    dirty: bool | None = None
    if commit:
        # --no-optional-locks: a status check must never take the index lock of a working tree.
        status = _git(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], cwd)
        if status is not None and status.returncode == 0:
            dirty = bool(status.stdout.strip())
    elif env.get("GITHUB_ACTIONS") == "true":
        commit = env.get("GITHUB_SHA") or None
    if branch is None and env.get("GITHUB_ACTIONS") == "true":
        branch = env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or None
    return GitInfo(commit=commit, branch=branch, dirty=dirty)


def data_sha256(features: pd.DataFrame, target: pd.Series) -> str:
    """A fingerprint of a feature matrix and its target, independent of platform and pandas.

    Hashes a header (column names, shape) and the values as little-endian float64 in row-major
    order, so the same numbers always give the same digest and any changed value, row, column
    name or column order gives another.
    """
    import numpy as np

    digest = hashlib.sha256()
    header = {"columns": [str(c) for c in features.columns], "shape": list(features.shape),
              "target": str(target.name), "target_rows": len(target)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(features.to_numpy(dtype="<f8")).tobytes())
    digest.update(np.ascontiguousarray(target.to_numpy(dtype="<f8")).tobytes())
    return digest.hexdigest()


def lineage_tags(*, config_path: str | os.PathLike[str], config_sha256: str, data_digest: str,
                 env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The lineage tags of one training run (and of the version it registers)."""
    git = git_info(config_path, env)
    tags = {DATA_SHA256: data_digest, CONFIG_SHA256: config_sha256}
    if git.commit:
        tags[GIT_COMMIT] = git.commit
    if git.branch:
        tags[GIT_BRANCH] = git.branch
    if git.dirty is not None:
        tags[GIT_DIRTY] = "true" if git.dirty else "false"
    url = github_run_url(env)
    if url:
        tags[GITHUB_RUN_URL] = url
    return tags
