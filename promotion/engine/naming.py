"""How a version, or its absence, is named: one helper for every message and report."""

from __future__ import annotations

NO_VERSION = "no version"


def version_or_none(version: str | None, none: str = NO_VERSION) -> str:
    """`version 3`, or `none` when no version is meant (reports say "no version"; messages about
    an alias say "nothing")."""
    return f"version {version}" if version else none
