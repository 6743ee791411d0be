#!/bin/sh
# The memberships this compose deployment mounts, made on the host with `icx` (a trial on
# one machine: you act as the coordinator and as every operator). Run it once, from
# anywhere, before `docker compose up`:
#
#   sh compose/init-members.sh
#
# It makes (next to this script, all git-ignored, none copied into the image):
#   federation/          the coordinator's root of trust (root-key.pem admits and revokes:
#                        in a real federation it stays with the coordinator, offline)
#   broker.identity/     the broker's key and certificate, for 127.0.0.11 (the address
#                        it listens on and agents dial) as well as localhost and 127.0.0.1
#   centers/ID.key       each center's usage signing key
#   centers/ID.identity/ each center's key and the certificate that binds that usage key
#   postgres.password    the password of the database's user icx (PostgreSQL reads it
#                        when it makes its cluster)
#   postgres.pgpass      the same as a libpq password file, for the broker (PGPASSFILE)
#
# Each step is the one a real federation splits between parties: the operator runs
# `icx broker init` or `icx agent init` and hands over request.pem; the coordinator runs
# `icx admin admit`; the operator installs cert.pem and root.pem. A step already done is
# skipped, so the script can run again after adding a center.
set -eu
cd "$(dirname "$0")"
ICX=${ICX:-icx}

[ -f federation/root-key.pem ] || "$ICX" admin init-federation --dir federation --name compose

# install FOLDER CERT: the operator puts the admitted certificate and the root in place.
install() {
    cp "$2" "$1/cert.pem"
    cp federation/root.pem "$1/root.pem"
    rm "$2"
}

if [ ! -f broker.identity/cert.pem ]; then
    "$ICX" broker init --dir broker.identity --name broker --host 127.0.0.11
    "$ICX" admin admit broker.identity/request.pem --role broker --region CY \
        --federation federation --out broker.cert.pem
    install broker.identity broker.cert.pem
fi

# center CONFIG ID REGION HEALTH: the center in CONFIG (its [center] id and region), its
# health endpoint dialled at the address HEALTH (named in its certificate).
center() {
    if [ ! -f "centers/$2.identity/cert.pem" ]; then
        "$ICX" agent init --config "centers/$1" --host "$4"
        "$ICX" admin admit "centers/$2.identity/request.pem" --role center --region "$3" \
            --federation federation --out "$2.cert.pem"
        install "centers/$2.identity" "$2.cert.pem"
    fi
}

# The store's password: random, readable by its owner only (libpq insists on it).
if [ ! -f postgres.password ]; then
    (
        umask 077
        password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
        printf '%s\n' "$password" >postgres.password
        printf '127.0.0.10:5432:icx:icx:%s\n' "$password" >postgres.pgpass
    )
fi

center cn06-chengdu.toml CN06 CY 127.0.0.21
center cn08-shanghai-lingang.toml CN08 YRD 127.0.0.22
center cn16-ningxia-zhongwei.toml CN16 NX 127.0.0.23

echo "members ready in $(pwd): the containers run as uid 10001; on Linux give it the folders:"
echo "  sudo chown -R 10001:10001 $(pwd)/broker.identity $(pwd)/centers/*.identity \\"
echo "      $(pwd)/centers/*.key $(pwd)/postgres.password $(pwd)/postgres.pgpass"
