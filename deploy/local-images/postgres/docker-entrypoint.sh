#!/bin/sh
# Starts PostgreSQL the way the official image's entrypoint does, for what the central node's
# stack uses: on an empty data directory, initdb with POSTGRES_USER / POSTGRES_PASSWORD (password
# authentication over TCP, trust over the local socket), POSTGRES_DB, then the scripts in
# /docker-entrypoint-initdb.d on a server that accepts socket connections only; then `postgres`.
# PGPORT, when set, is the port (PostgreSQL reads it itself).
set -eu

if [ "${1:-}" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  # Volumes arrive owned by root: hand them to postgres, then drop root for good.
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

say() { echo "docker-entrypoint: $*" >&2; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { say "POSTGRES_PASSWORD is not set"; exit 1; }
  export POSTGRES_USER="${POSTGRES_USER:-postgres}"
  export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
  password_file=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
  initdb --username="$POSTGRES_USER" --pwfile="$password_file" --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

  pg_ctl --silent --wait --options="-c listen_addresses=''" start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --quiet --username "$POSTGRES_USER" --dbname postgres \
      --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh) say "running $script"
            if [ -x "$script" ]; then "$script"; else . "$script"; fi ;;
      *.sql) say "running $script"
             psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
               -f "$script" ;;
      *) ;;
    esac
  done
  pg_ctl --silent --wait --mode=fast stop
  say "initialised $PGDATA"
fi

exec "$@"
