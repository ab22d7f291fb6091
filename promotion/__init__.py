"""Promote: a GitOps promotion gate for MLflow.

Kept import-light on purpose: `promote --help` and policy validation must not pay for
`import mlflow` (nor for reading package metadata, which `__version__` does on first access).
"""

from __future__ import annotations

DISTRIBUTION = "mlflow-promote"


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(name)
