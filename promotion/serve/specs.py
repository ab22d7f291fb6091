"""What `promote serve SPEC [SPEC ...]` is asked to serve, read from the command line (pure).

  NAME           follow the alias given by --alias (Production by default)
  NAME@ALIAS     follow that alias
  NAME/VERSION   serve that version only (pinned): never swapped, not polled once loaded

A NAME holds neither `@` nor `/`; every model is named once. `--lazy NAME` marks a model to be
loaded on its first request instead of at start (and evictable under `--memory-budget`).
Every refusal is one InvalidInput line naming the spec or the option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from promotion.errors import InvalidInput


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: what it follows, and whether it waits for its first request."""

    name: str
    alias: str | None = None  # the alias followed; None when pinned
    version: str | None = None  # the pinned version; None when following an alias
    lazy: bool = False

    @property
    def pinned(self) -> bool:
        return self.version is not None

    @property
    def label(self) -> str:
        """The alias in logs, metrics and the cache: the alias, or v<VERSION> when pinned (MLflow
        refuses aliases of that form, so the two never meet)."""
        return self.alias if self.alias is not None else f"v{self.version}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" if self.pinned else f"{self.name}@{self.alias}"


def parse_spec(text: str, default_alias: str) -> ModelSpec:
    """One SPEC, or InvalidInput naming it."""
    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"model spec {text!r}: {why}")

    name, version, alias = text, None, None
    if "/" in text:
        name, _, version = text.partition("/")
        if not re.fullmatch(r"[0-9]+", version) or int(version) < 1:
            raise refuse("the version after / must be a positive integer (NAME/VERSION)")
        version = str(int(version))
    elif "@" in text:
        name, _, alias = text.partition("@")
        if not alias.strip():
            raise refuse("the alias after @ is empty (NAME@ALIAS)")
        if "@" in alias:
            raise refuse("one @ at most (NAME@ALIAS)")
    if not name.strip():
        raise refuse("the model name is empty")
    if "@" in name or "/" in name:
        raise refuse("use NAME, NAME@ALIAS or NAME/VERSION")
    if version is not None:
        return ModelSpec(name, version=version)
    return ModelSpec(name, alias if alias is not None else default_alias)


def parse_specs(texts: Sequence[str], default_alias: str,
                lazy: Sequence[str] = ()) -> tuple[ModelSpec, ...]:
    """Every SPEC, each model once, the lazy ones marked; InvalidInput on the first problem."""
    if not texts:
        raise InvalidInput("name at least one model to serve: NAME, NAME@ALIAS or NAME/VERSION")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for text in texts:
        spec = parse_spec(text, default_alias)
        if spec.name in seen:
            raise InvalidInput(f"model spec {text!r}: model {spec.name!r} is named twice (each "
                               "model is served once)")
        seen.add(spec.name)
        specs.append(spec)
    for name in lazy:
        if name not in seen:
            raise InvalidInput(f"--lazy {name}: no model spec names {name!r}")
    wanted = set(lazy)
    return tuple(ModelSpec(s.name, s.alias, s.version, s.name in wanted) for s in specs)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2,
          "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from `512MiB`, `2GiB`, `1.5GB`, `800M`, `1000000`: KB/MB/GB/TB (and K, M, G, T)
    are powers of 1000, KiB/MiB/GiB/TiB (and Ki, Mi, Gi, Ti) powers of 1024; case does not
    matter. ValueError when it is not a positive size."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 512MiB, 2GiB, 1.5GB, or bytes)")
    size = int(float(found.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def format_size(size: int) -> str:
    """`1.5 GiB`, `800.0 MiB`, `512 B`: a size as people read it."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
