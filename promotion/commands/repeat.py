"""What the repeating commands share (`promote watch` and `promote rollout` with `--every`): the
interval option, and a stop event SIGTERM sets so they end between rounds with exit 0."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from promotion.errors import LogUnavailable, RegistryError
from promotion.policy.checks import DURATION_UNITS


def every_seconds(text: str | None) -> float | None:
    """`--every`: a duration ('30s', '5m', '1h') in seconds, at least 1; None when not given."""
    if text is None:
        return None
    text = text.strip()
    unit = text[-1:] if text[-1:] in DURATION_UNITS else ""
    try:
        seconds = float(text[:-1] if unit else text) * DURATION_UNITS.get(unit, 1)
    except ValueError:
        raise click.BadParameter(f"expected a duration like '30s', '5m' or '1h', got {text!r}",
                                 param_hint="--every") from None
    if seconds < 1:
        raise click.BadParameter("the interval is at least 1s", param_hint="--every")
    return seconds


@contextmanager
def stop_event() -> Iterator[threading.Event]:
    """An event SIGTERM sets, so `--every` ends between windows with exit 0."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def repeat(interval: float, once: Callable[[], object], what: str) -> None:
    """Run `once` every `interval` seconds until SIGTERM or Ctrl-C, going on when the registry
    or the log database is briefly unreachable (said on stderr)."""
    with stop_event() as stop:
        while not stop.is_set():
            try:
                once()
            except (RegistryError, LogUnavailable) as exc:
                click.echo(f"{what} failed this time, trying again in {interval:g}s: {exc}",
                           err=True)
            stop.wait(interval)
