"""`promote serve`: follow an alias and serve the version behind it over HTTP.

  server    run the endpoint: take the address, check the alias, serve until stopped
  app       the FastAPI app: routes, lifespan, the HTTP answers
  protocol  MLflow's scoring protocol: parse a request, predict, encode the predictions
  metrics   the Prometheus metrics of one app
  follower  hold the version the alias points at and swap atomically when it moves

Nothing is re-exported here: `promote serve --help` imports `server`, and only what it needs.
"""

from __future__ import annotations
