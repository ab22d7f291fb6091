"""Promote: a GitOps promotion gate for MLflow.

Kept import-light on purpose: `promote --help`, `promote --version` and policy validation must not
pay for `import mlflow`. The version is written here, and only here: the packaging metadata reads it
(pyproject.toml, `[tool.setuptools.dynamic]`).
"""

from __future__ import annotations

__version__ = "0.2.0"

DISTRIBUTION = "mlflow-promote"
REPOSITORY = "mlflow-promote/promote"
