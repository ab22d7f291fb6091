"""Which files are policies: the one rule every command uses to find them.

`promote policy validate`, `promote policy list` (and so the workflows' matrix), the pre-commit
hook and `promote demo --policies` all see the same policies for the same paths: the `*.yaml` and
`*.yml` files under a directory, recursively, skipping files and directories whose name starts
with a dot (`.github/`, `.draft.yaml`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from promotion.errors import InvalidInput

DEFAULT_DIR = "policies"
POLICY_SUFFIXES = (".yaml", ".yml")


def policy_files(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The policy files named by `paths` (default: the policies/ directory), in order.

    A file is taken as given (a missing one is reported by load_policy, with the others); a
    directory is expanded to its policy files, sorted by name within each directory, files before
    subdirectories. Duplicates are dropped. Raises InvalidInput for a directory without any.
    """
    if not paths:
        if not os.path.isdir(DEFAULT_DIR):
            raise InvalidInput(f"no {DEFAULT_DIR}/ directory here; pass policy files or "
                               "directories")
        paths = (DEFAULT_DIR,)
    files: list[str] = []
    for path in [os.fspath(p) for p in paths]:
        if os.path.isdir(path):
            found = list(_walk(path))
            if not found:
                raise InvalidInput(f"{path}: no *.yaml or *.yml files in this directory")
            files.extend(found)
        else:
            files.append(path)
    return list(dict.fromkeys(files))


def _walk(directory: str) -> Iterator[str]:
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.endswith(POLICY_SUFFIXES) and not name.startswith("."):
                yield os.path.normpath(os.path.join(root, name))  # "./x.yaml" -> "x.yaml"
