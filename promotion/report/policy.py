"""Renderings of `promote policy ...`: validation lines, GitHub annotations, the policy listing
(text, JSON, a GitHub Actions matrix) and the JSON Schema text.

Pure functions of promotion.policy values; the click layer (promotion.commands.policy) prints
what they return.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from promotion.errors import InvalidInput, redact
from promotion.policy.issues import Issue, PolicyError
from promotion.policy.listing import Loaded, PolicyListing
from promotion.report.text import document, dumps

# GitHub Actions refuses a matrix of more than 256 jobs: say so before the workflow does.
MATRIX_LIMIT = 256
LIST_FORMATS = ("text", "json", "github-matrix")


# --------------------------------------------------------------------------------------------
# validate


def validation_lines(loaded: Loaded, issues: Sequence[Issue], output_format: str) -> list[str]:
    """stdout of `promote policy validate`: `ok  PATH` per valid file, then (github) annotations.

    The issues themselves go to stderr as `PolicyError.lines()`, through the CLI's boundary.
    """
    lines = [f"ok  {path}" for path, _ in loaded]
    if output_format == "github":
        lines += [github_annotation(issue) for issue in issues]
    return lines


def github_annotation(issue: Issue) -> str:
    """A GitHub Actions workflow command: `::error file=F,line=L,col=C::key: message`."""
    props = [f"file={_escape_property(issue.file)}"]
    if issue.line:
        props += [f"line={issue.line}", f"col={issue.col}"]
    text = f"{issue.key}: {issue.message}" if issue.key else issue.message
    return f"::error {','.join(props)}::{_escape_data(text)}"


def error_annotations(exc: InvalidInput) -> list[str]:
    """An invalid input as GitHub annotations: one per issue of a PolicyError, else one line."""
    if isinstance(exc, PolicyError):
        return [github_annotation(issue) for issue in exc.issues]
    return [f"::error::{_escape_data(redact(str(exc)))}"]


def _escape_data(text: str) -> str:
    # GitHub's rules (actions/toolkit, command.ts): % first, then CR and LF.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


# --------------------------------------------------------------------------------------------
# schema


def schema_text(schema: Mapping[str, Any]) -> str:
    """The JSON Schema exactly as committed: 2-space indent, trailing newline."""
    return dumps(schema) + "\n"


# --------------------------------------------------------------------------------------------
# list


def listing_text(listing: PolicyListing, output_format: str) -> str:
    """`text`: `FILE: MODEL@ALIAS` lines; `json`: a document; `github-matrix`: one line.

    Raises InvalidInput for a matrix GitHub Actions would refuse (more than MATRIX_LIMIT jobs).
    """
    entries = [e.as_dict() for e in listing.entries]
    if output_format == "github-matrix":
        if len(entries) > MATRIX_LIMIT:
            raise InvalidInput(f"{len(entries)} policies selected: a GitHub Actions matrix runs "
                               f"at most {MATRIX_LIMIT} jobs; select a model or a policy file")
        # One line: it goes into $GITHUB_OUTPUT as `matrix=...`.
        return json.dumps({"include": entries}, ensure_ascii=False)
    if output_format == "json":
        return dumps(document("policy-list", None, {"policies": entries}))
    return "\n".join(f"{e.policy}: {e.model}@{e.alias}" for e in listing.entries)
