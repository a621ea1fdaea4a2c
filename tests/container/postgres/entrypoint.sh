#!/bin/bash
# First start: a cluster owned by $POSTGRES_USER with $POSTGRES_PASSWORD, and the database $POSTGRES_DB; then the
# server in the foreground (PID 1, so podman's SIGTERM stops it cleanly).
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-postgres}"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    initdb -D "$PGDATA" -U "$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [[ -n "${POSTGRES_DB:-}" && "$POSTGRES_DB" != postgres ]]; then  # initdb makes only "postgres"
        postgres --single -D "$PGDATA" postgres <<<"CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$user\";" >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
