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
#   broker.identity/     the broker's key and certificate, for host name "broker" (the
#                        address agents dial) as well as localhost and 127.0.0.1
#   centers/ID.key       each center's usage signing key
#   centers/ID.identity/ each center's key and the certificate that binds that usage key
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
    "$ICX" broker init --dir broker.identity --name broker --host broker
    "$ICX" admin admit broker.identity/request.pem --role broker --region CY \
        --federation federation --out broker.cert.pem
    install broker.identity broker.cert.pem
fi

# center CONFIG ID REGION: the center in CONFIG (its [center] id and region).
center() {
    if [ ! -f "centers/$2.identity/cert.pem" ]; then
        "$ICX" agent init --config "centers/$1"
        "$ICX" admin admit "centers/$2.identity/request.pem" --role center --region "$3" \
            --federation federation --out "$2.cert.pem"
        install "centers/$2.identity" "$2.cert.pem"
    fi
}

center cn06-chengdu.toml CN06 CY
center cn08-shanghai-lingang.toml CN08 YRD
center cn16-ningxia-zhongwei.toml CN16 NX

echo "members ready in $(pwd): the containers run as uid 10001; on Linux give it the folders:"
echo "  sudo chown -R 10001:10001 $(pwd)/broker.identity $(pwd)/centers/*.identity $(pwd)/centers/*.key"
