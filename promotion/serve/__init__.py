"""`promote serve`: follow aliases and serve the versions behind them over HTTP.

  server      run the endpoint: read the specs, take the address, check every model, serve
  startup     each model's start-up read (or its start from the local cache) and its follower
  specs       SPEC (NAME, NAME@ALIAS, NAME/VERSION), --lazy, sizes (pure)
  app         the FastAPI app: routes (one model at the root, each under /models/<name>/),
              lifespan
  fleet       the models of one endpoint: the root /health, /version, /metrics of several
  slot        one model's parts and handlers: invocations (a lazy model's load on demand),
              feedback, health, version
  documents   what /health and /version say; the registry's condition (reachable, degraded)
  routing     POST /invocations: the primary or the canary, the fallback, the shadow copy
  metrics     the Prometheus metrics of one model, merged into one exposition for several
  budget      the memory budget: footprints, least recently used, evictions
  cache       the local cache of served versions and its pointers
  hooks       POST /hooks/mlflow: MLflow's signed registry webhooks wake a model's follower
  canary      the canary's per-step guard, the shadow mirror (queue + thread), its reports
  requestlog  what goes to the inference log, and the sampling drawn once per request
  protocol    MLflow's scoring protocol: parse a request, predict, encode the predictions
  follower    hold the version an alias points at (and a rollout's canary) and swap
              atomically when they move; lazy, pinned, started from the cache
  state       what a follower holds and reports, as immutable values
  loading     the follower's real inputs: bounded registry checks, downloads, loads

Nothing is re-exported here: `promote serve --help` imports `server`, and only what it needs.
"""

from __future__ import annotations
