"""Where decision events go: read from the environment (and an optional file), never from a
policy file.

    PROMOTE_EVENTS_URLS     HTTP(S) endpoints, space- or comma-separated (a secret: a URL may
                            carry a token)
    PROMOTE_EVENTS_SECRET   the signing secret (without it events are sent unsigned)
    PROMOTE_NOTIFY_URLS     Apprise URLs for people (a secret)
    PROMOTE_EVENTS_CONFIG   optional YAML file, no secrets: which kinds and outcomes each channel
                            gets, the timeout and the attempts of an endpoint delivery

Nothing configured: nothing is read beyond the environment, nothing is imported, nothing is sent.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from promotion.report.events import KINDS, OUTCOMES

EVENTS_URLS = "PROMOTE_EVENTS_URLS"
EVENTS_SECRET = "PROMOTE_EVENTS_SECRET"
NOTIFY_URLS = "PROMOTE_NOTIFY_URLS"
EVENTS_CONFIG = "PROMOTE_EVENTS_CONFIG"
TIMEOUT = 5.0  # seconds, per attempt
ATTEMPTS = 3
MAX_TIMEOUT = 60.0
MAX_ATTEMPTS = 5

# A new URL starts after whitespace or a comma followed by `scheme://`: a comma inside a URL
# (Apprise's `mailto://...?to=a@x.org,b@x.org`) does not split it.
_SPLIT = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)|\s+")


def split_urls(text: str | None) -> tuple[str, ...]:
    return tuple(u.strip(" ,") for u in _SPLIT.split(text or "") if u.strip(" ,"))


@dataclass(frozen=True)
class Selection:
    """Which decisions a channel gets; None: all."""

    kinds: frozenset[str] | None = None
    outcomes: frozenset[str] | None = None

    def wants(self, kind: str, outcome: str) -> bool:
        return (self.kinds is None or kind in self.kinds) and \
            (self.outcomes is None or outcome in self.outcomes)


@dataclass(frozen=True)
class Config:
    endpoints: tuple[str, ...] = ()
    secret: str | None = None
    targets: tuple[str, ...] = ()  # Apprise URLs
    timeout: float = TIMEOUT
    attempts: int = ATTEMPTS
    events: Selection = field(default_factory=Selection)
    notify: Selection = field(default_factory=Selection)
    problem: str | None = None  # the config file cannot be used: why (nothing is sent)

    @property
    def configured(self) -> bool:
        return bool(self.endpoints or self.targets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured value that must never be shown."""
        return (*self.endpoints, *self.targets, *((self.secret,) if self.secret else ()))


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    config = Config(endpoints=split_urls(env.get(EVENTS_URLS)),
                    secret=env.get(EVENTS_SECRET) or None,
                    targets=split_urls(env.get(NOTIFY_URLS)))
    path = env.get(EVENTS_CONFIG)
    if not config.configured or not path:
        return config
    try:
        return _with_file(config, path)
    except ValueError as exc:
        return Config(config.endpoints, config.secret, config.targets,
                      problem=f"{EVENTS_CONFIG} {path}: {exc}")


def _with_file(config: Config, path: str) -> Config:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError:
        raise ValueError("is not valid YAML") from None
    data = {} if data is None else data
    _keys(data, "the file", {"timeout", "attempts", "events", "notify"})
    timeout = data.get("timeout", TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
            not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    attempts = data.get("attempts", ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or \
            not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValueError(f"attempts must be a whole number from 1 to {MAX_ATTEMPTS}")
    return Config(config.endpoints, config.secret, config.targets, timeout=float(timeout),
                  attempts=attempts, events=_selection(data, "events"),
                  notify=_selection(data, "notify"))


def _keys(data: Any, where: str, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in {where} (known: "
                         f"{', '.join(sorted(allowed))})")


def _selection(data: Mapping[str, Any], channel: str) -> Selection:
    block = data.get(channel)
    if block is None:
        return Selection()
    _keys(block, f"'{channel}'", {"kinds", "outcomes"})
    return Selection(_names(block, channel, "kinds", KINDS),
                     _names(block, channel, "outcomes", OUTCOMES))


def _names(block: Mapping[str, Any], channel: str, key: str,
           known: tuple[str, ...]) -> frozenset[str] | None:
    values = block.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{channel}.{key} must be a list of names")
    wrong = [v for v in values if v not in known]
    if wrong:
        raise ValueError(f"{channel}.{key}: unknown {wrong[0]!r} (known: {', '.join(known)})")
    return frozenset(values)
