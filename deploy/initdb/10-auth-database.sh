#!/bin/sh
# Runs once, when PostgreSQL initialises an empty data volume: a database of its own for basic
# auth's users and permissions, next to the tracking store, owned by the same role.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set auth_db="${MLFLOW_AUTH_DB:-mlflow_auth}" --set owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'auth_db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'auth_db')\gexec
SQL
