"""The base of every mapping in the policy language, shared by promotion.policy.schema,
promotion.policy.watchschema and promotion.policy.rolloutschema: unknown keys refused, values
strict, cross-key `relations`, and the JSON Schema tidied of pydantic's noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from promotion.policy.issues import Path

Problems = list[tuple[Path, str]]  # (key path relative to the section, message)


class Section(BaseModel):
    """A mapping of the language: unknown keys refused, and `relations` between its keys.

    `relations` read the raw mapping (key presence, plain values) rather than the validated model,
    so they are reported together with problems in the individual values instead of only once
    those are fixed: every issue in a file is listed in one run.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=lambda schema: tidy(schema))

    @classmethod
    def relations(cls, data: dict[str, Any]) -> Problems:
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        problems = cls.relations(data) if isinstance(data, dict) else []
        if not problems:
            return handler(data)
        errors: list[Any] = []
        try:
            handler(data)
        except ValidationError as exc:
            errors = list(exc.errors())
        # One error carrying the rules' problems and the values' errors; `_flatten` unpacks it.
        raise PydanticCustomError("policy_rules", "{message}",
                                  {"message": problems[0][1], "issues": problems, "errors": errors})


def tidy(schema: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Drop pydantic's noise (titles, null branches, null defaults) and add the cross-key rules.

    null is never a valid value in a policy, so `X | None` fields are exported as plain `X`.
    """
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            del prop["default"]
        branches = prop.get("anyOf")
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update({k: v for k, v in rest[0].items() if k not in prop})
            else:
                prop["anyOf"] = rest
    schema.update(extra or {})
