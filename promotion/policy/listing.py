"""Policies as a set: validate every file under some paths, list them, select some.

This is what `promote policy validate` and `promote policy list` do below the click layer;
renderings (the `ok` lines, GitHub annotations, the CI matrix) are in promotion.report.policy.
Files are found by promotion.policy.files, the one rule for what counts as a policy file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from promotion.errors import InvalidInput
from promotion.policy.files import DEFAULT_DIR, policy_files
from promotion.policy.issues import Issue, PolicyError
from promotion.policy.load import load_policy
from promotion.policy.model import Policy

Loaded = list[tuple[str, Policy]]  # (file as listed, its policy)


def load_each(files: Sequence[str]) -> tuple[Loaded, list[Issue]]:
    """Every file validated: the valid ones with their policy, and every issue of the others."""
    loaded: Loaded = []
    issues: list[Issue] = []
    for path in files:
        try:
            loaded.append((path, load_policy(path)))
        except PolicyError as exc:
            issues.extend(exc.issues)
    return loaded, issues


def check_paths(paths: Sequence[str]) -> tuple[Loaded, list[Issue]]:
    """Every policy file under `paths` (default policies/) validated, as `load_each` does."""
    return load_each(policy_files(paths))


@dataclass(frozen=True)
class PolicyEntry:
    """What a workflow needs to act on one policy: its file, its model, the alias it guards."""

    policy: str
    model: str
    alias: str
    watched: bool = False  # it has a `watch:` block (monitor.yml watches it)
    rollout: bool = False  # it has a `rollout:` block (monitor.yml takes its rollouts further)

    def as_dict(self) -> dict[str, str | bool]:
        return {"policy": self.policy, "model": self.model, "alias": self.alias,
                "watched": self.watched, "rollout": self.rollout}


@dataclass(frozen=True)
class PolicyListing:
    """The policies selected, in file order (rendered by promotion.report.policy)."""

    entries: tuple[PolicyEntry, ...]


def list_policies(paths: Sequence[str], *, select: str | None = None,
                  per_alias: bool = False, watched: bool = False,
                  rollouts: bool = False) -> PolicyListing:
    """The policies under `paths` (default policies/), in file order, narrowed by `select`.

    `select` names a policy file (compared as an absolute path, so `./policies/a.yaml` matches)
    or a model (every policy of it); None or "" selects everything. `per_alias` keeps the first
    policy of each (model, alias); `watched` keeps only policies with a `watch:` block and
    `rollouts` only those with a `rollout:` block (both: only those with both), possibly none: a
    repository may watch nothing, or roll nothing out, yet. Raises PolicyError if any file is
    invalid, InvalidInput if the selection matches nothing.
    """
    files = policy_files(paths)
    loaded, issues = load_each(files)
    if issues:
        raise PolicyError(issues)
    entries = [PolicyEntry(path, policy.model, policy.alias, policy.watch is not None,
                           policy.rollout is not None)
               for path, policy in loaded]
    if select:
        entries = [e for e in entries if _selects(select, e)]
        if not entries:
            raise InvalidInput(_no_match(select, paths, files))
    if watched:
        entries = [e for e in entries if e.watched]
    if rollouts:
        entries = [e for e in entries if e.rollout]
    if per_alias:
        # A rollback once per alias: a second one of the same alias would flip it back.
        first: dict[tuple[str, str], PolicyEntry] = {}
        for entry in entries:
            first.setdefault((entry.model, entry.alias), entry)
        entries = list(first.values())
    return PolicyListing(tuple(entries))


def _selects(select: str, entry: PolicyEntry) -> bool:
    # One value names a file or a model (a workflow input is one text box). Only listed files
    # are compared, so neither reading can reach a file outside PATHS.
    return select == entry.model or os.path.abspath(select) == os.path.abspath(entry.policy)


def _no_match(select: str, paths: Sequence[str], files: Sequence[str]) -> str:
    where = ", ".join(p if p.endswith("/") or not os.path.isdir(p) else f"{p}/"
                      for p in (paths or (DEFAULT_DIR,)))
    return (f"no policy under {where} matches {select!r}: name a policy file there or a model "
            f"({len(files)} policy file(s) found)")
