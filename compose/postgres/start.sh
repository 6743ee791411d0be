#!/bin/sh
# Start PostgreSQL 15 for the broker: ADDRESS PORT (a 127.0.0.x address on the host's
# network, never 0.0.0.0). On first start it makes the cluster in /data/pgdata: the
# superuser `icx` with the password in /etc/icx/postgres.password (made by
# init-members.sh), password (scram-sha-256) logins over TCP only, and the database `icx`.
set -eu
address=${1:?usage: icx-postgres ADDRESS PORT}
port=${2:?usage: icx-postgres ADDRESS PORT}
bin=/usr/lib/postgresql/15/bin
data=/data/pgdata
if [ ! -s "$data/PG_VERSION" ]; then
    "$bin/initdb" --pgdata "$data" --username icx --pwfile /etc/icx/postgres.password \
        --auth-host scram-sha-256 --auth-local reject --encoding UTF8 --locale C.UTF-8 >/dev/null
    echo "CREATE DATABASE icx" | "$bin/postgres" --single -D "$data" postgres >/dev/null
    echo "icx-postgres: cluster made in $data, database icx"
fi
# No Unix socket: every client, the healthcheck included, comes over TCP with a password.
exec "$bin/postgres" -D "$data" -c listen_addresses="$address" -p "$port" \
    -c unix_socket_directories=''
