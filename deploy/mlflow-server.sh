#!/bin/sh
# The central MLflow node's one command line. The compose stack runs it inside the image
# (deploy/Dockerfile installs it as `mlflow-server`); the test bed runs this very file against a
# local PostgreSQL. Configured by environment variables only (deploy/.env.example documents them).
#
# Secrets stay out of the command line (and so out of `ps`): the backend store URI, which holds
# the database password, reaches `mlflow server` through MLFLOW_BACKEND_STORE_URI, a variable
# MLflow reads itself; the auth database URI goes into a private config file; the admin password
# and the session secret key are read by MLflow from the environment.
set -eu

die() { echo "mlflow-server: $*" >&2; exit 2; }

[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ] \
  || die "MLFLOW_BACKEND_STORE_URI is not set (e.g. postgresql://mlflow:PASSWORD@postgres:5432/mlflow)"
export MLFLOW_BACKEND_STORE_URI

set -- server \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5001}" \
  --workers "${MLFLOW_WORKERS:-4}"

# Artifacts. Proxied (the default): clients upload and download through the server, which alone
# reaches MLFLOW_ARTIFACTS_DESTINATION (a directory or an s3:// URI) and alone holds the storage
# credentials. Direct, when MLFLOW_DEFAULT_ARTIFACT_ROOT is set (an s3:// URI): the server only
# records where artifacts are; clients read and write the bucket themselves, with credentials of
# their own. Either way it applies to experiments created from then on.
if [ -n "${MLFLOW_DEFAULT_ARTIFACT_ROOT:-}" ]; then
  set -- "$@" --default-artifact-root "$MLFLOW_DEFAULT_ARTIFACT_ROOT" --no-serve-artifacts
else
  unset MLFLOW_DEFAULT_ARTIFACT_ROOT
  set -- "$@" --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}"
fi

# Who may reach the server by which name (MLflow's default: localhost and private addresses).
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
fi
if [ -n "${MLFLOW_CORS_ALLOWED_ORIGINS:-}" ]; then
  set -- "$@" --cors-allowed-origins "$MLFLOW_CORS_ALLOWED_ORIGINS"
fi

# Webhook secrets are encrypted with this key (a Fernet key: 44 URL-safe base64 characters).
# MLflow would crash on a malformed one; without one, each server process makes up its own: a
# secret stored through one worker is unreadable to the others, and to all after a restart.
key="${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:-}"
not_a_key="MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is not a Fernet key (make one: openssl rand -base64 32 | tr '+/' '-_')"
case "$key" in
  "") echo "mlflow-server: MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is not set: webhook secrets" \
        "will not be readable by other workers, nor after a restart (docs/central-node.md)" >&2 ;;
  *[!A-Za-z0-9_=-]*) die "$not_a_key" ;;
  *) [ "${#key}" -eq 44 ] || die "$not_a_key" ;;
esac
unset key not_a_key

case "${MLFLOW_AUTH:-none}" in
  none) ;;
  basic)
    [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] \
      || die "MLFLOW_AUTH=basic needs MLFLOW_FLASK_SERVER_SECRET_KEY (the same on every replica)"
    [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ] \
      || die "MLFLOW_AUTH=basic needs MLFLOW_AUTH_DATABASE_URI (where users and permissions live)"
    # MLflow creates the admin user from these on first start only; it ships no default password.
    [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] \
      || die "MLFLOW_AUTH=basic needs MLFLOW_AUTH_ADMIN_PASSWORD (used to create the admin user)"
    export MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_ADMIN_PASSWORD
    export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
    config_dir=$(mktemp -d)
    chmod 700 "$config_dir"
    umask 077
    cat >"$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
    set -- "$@" --app-name basic-auth
    ;;
  *) die "MLFLOW_AUTH must be none or basic, not '${MLFLOW_AUTH}'" ;;
esac

exec mlflow "$@"
