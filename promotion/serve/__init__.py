"""`promote serve`: follow an alias and serve the version behind it over HTTP.

  server      run the endpoint: take the address, check the alias, serve until stopped
  app         the FastAPI app: routes, lifespan, /health, /version, /feedback
  routing     POST /invocations: the primary or the canary, the fallback, the shadow copy
  metrics     the Prometheus metrics of one app
  hooks       POST /hooks/mlflow: MLflow's signed registry webhooks wake the follower
  canary      the canary's per-step guard, the shadow mirror (queue + thread), its reports
  requestlog  what goes to the inference log, and the sampling drawn once per request
  protocol    MLflow's scoring protocol: parse a request, predict, encode the predictions
  follower    hold the version the alias points at (and a rollout's canary) and swap
              atomically when they move

Nothing is re-exported here: `promote serve --help` imports `server`, and only what it needs.
"""

from __future__ import annotations
