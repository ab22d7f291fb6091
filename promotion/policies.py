"""Loading policies: the public entry points of the policy language.

    load_policy(path) -> Policy
        Read, parse and validate a policy file. `Policy.path` is `path` as given (str), and
        `Policy.sha256` the hex SHA-256 of the file's bytes.

    parse_policy(data, name, *, base_dir=None, check_files=True) -> Policy
        The same for text or bytes that are not (or no longer) a file, e.g. a policy as it is on
        another git revision. `name` is what messages call the file; relative evaluation data
        paths start at `base_dir` (default: the directory part of `name`).

Both raise `PolicyError` (a `promotion.errors.InvalidInput`, exit code 2). Its `.issues` lists
every problem found as `Issue(file, line, col, key, message)`, ordered by position; `.lines()`
renders one line per issue:

    policies/diabetes-regressor.yaml:7:10: metrics.rmse.max: expected a finite number, got 'seventy'

Problems of the file itself (not UTF-8, syntax, duplicate keys, unsafe tags, too large) are
reported first; the rules of the language are checked once the file reads cleanly.

Nothing here imports mlflow: validating a policy stays fast enough for a pre-commit hook.
"""

from __future__ import annotations

import hashlib
import os

from promotion.policy import Policy
from promotion.policyfile import MAX_BYTES, Issue, PolicyError, read_document

__all__ = ["Issue", "PolicyError", "load_policy", "parse_policy"]


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
    from promotion.schema import validate  # pydantic: only paid for when a policy is validated

    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    document = read_document(raw, name)
    return validate(document, sha256=hashlib.sha256(raw).hexdigest(),
                    base_dir=os.path.dirname(name) if base_dir is None else base_dir,
                    check_files=check_files)
