"""Loading policies: the public entry points of the policy language.

    load_policy(path) -> Policy
        Read, parse and validate a policy file. `Policy.path` is `path` as given (str), and
        `Policy.sha256` the hex SHA-256 of the file's bytes.

    parse_policy(data, name, *, base_dir=None, check_files=True) -> Policy
        The same for text or bytes that are not (or no longer) a file, e.g. a policy as it is on
        another git revision. `name` is what messages call the file; relative evaluation data
        paths start at `base_dir` (default: the directory part of `name`).

    load_revision(path, name, *, base_dir) -> Policy | None
        parse_policy for a copy of another revision (None when there is none), e.g. the base of
        a policy edit that `promote policy preview` compares with the edited file.

    policy_schema() -> dict
        The JSON Schema of the policy language (committed as policies/schema.json).

The loaders raise `PolicyError` (a `promotion.errors.InvalidInput`, exit code 2). Its `.issues`
lists every problem found as `Issue(file, line, col, key, message)`, ordered by position;
`.lines()` renders one line per issue:

    policies/diabetes-regressor.yaml:7:10: metrics.rmse.max: expected a finite number, got 'seventy'

Problems of the file itself (not UTF-8, syntax, duplicate keys, unsafe tags, too large) are
reported first; the rules of the language are checked once the file reads cleanly.

Nothing here imports mlflow (nor numpy or pandas): validating stays fast enough for a
pre-commit hook. pydantic (the schema, ~80 ms to import) is paid by the commands that read a
policy, never by `promote --help`, which imports no policy module.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from promotion.errors import InvalidInput
from promotion.policy.model import Policy
from promotion.policy.schema import json_schema, validate
from promotion.policy.yamlfile import MAX_BYTES, Issue, PolicyError, read_document

__all__ = ["Issue", "PolicyError", "load_policy", "load_revision", "parse_policy",
           "policy_schema"]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at `path`. Raises PolicyError."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # enough to tell "too large" without reading it all
            if len(data) > MAX_BYTES:
                size = os.fstat(f.fileno()).st_size
                raise PolicyError([Issue(name, 0, 0, "", f"file is larger than 1 MiB ({size} "
                                                         "bytes)")])
    except OSError as exc:
        raise PolicyError([Issue(name, 0, 0, "", f"cannot read the file: "
                                                 f"{exc.strerror or exc}")]) from None
    return parse_policy(data, name, base_dir=os.path.dirname(name))


def parse_policy(data: str | bytes, name: str, *, base_dir: str | None = None,
                 check_files: bool = True) -> Policy:
    """Validate a policy given as text or bytes; `name` is used in messages and as Policy.path."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    document = read_document(raw, name)
    return validate(document, sha256=hashlib.sha256(raw).hexdigest(),
                    base_dir=os.path.dirname(name) if base_dir is None else base_dir,
                    check_files=check_files)


def load_revision(path: str, name: str, *, base_dir: str) -> Policy | None:
    """Another revision of a policy, copied to `path` (e.g. from git), or None if there is none.

    A `path` that does not exist means the policy is new. Messages call the file `name` (e.g.
    `main:policies/x.yaml`); its evaluation data paths are resolved from `base_dir` and not
    checked, since the copy usually sits in a scratch directory and is not re-scored.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the base policy: {exc.strerror or exc}") from None
    return parse_policy(data, name, base_dir=base_dir, check_files=False)


def policy_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the policy language, as committed in policies/."""
    return json_schema()
