"""Promote: a GitOps promotion gate for MLflow.

Kept import-light on purpose: `promote --help` and policy validation must not pay for `import mlflow`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlflow-promote")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
