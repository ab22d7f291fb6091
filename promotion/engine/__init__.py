"""The engine: pure functions of frozen facts (no I/O, no mlflow, no numpy)."""

from __future__ import annotations

