"""The operator's view of the federation: `icx federation peers` shows the peer brokers a
broker gossips with, what it holds of each (summary version and age, centers, free
devices, whether it still believes it, its witness key), the gossip counters and the
forwarded jobs active now."""

from __future__ import annotations

import argparse
from typing import Any

from cli._client import add_broker_flag, connect
from cli._output import EXIT_OK, command, print_json, print_table
from core.views import Federation, PeerView


def peer_dict(p: PeerView) -> dict[str, Any]:
    return {
        "broker": p.broker,
        "region": p.region,
        "address": p.address,
        "version": p.version,
        "age_ms": p.age_ms,
        "centers": p.centers,
        "devices_free": p.devices_free,
        "live": p.live,
        "witness_key": p.witness_key,
    }


def federation_dict(f: Federation) -> dict[str, Any]:
    return {
        "broker": f.broker,
        "region": f.region,
        "peer_address": f.peer_address,
        "peering": f.peering,
        "peers": [peer_dict(p) for p in f.peers],
        "published": f.published,
        "received": f.received,
        "pulls": f.pulls,
        "pull_failures": f.pull_failures,
        "dropped": dict(f.dropped),
        "forwarded_out": f.forwarded_out,
        "forwarded_in": f.forwarded_in,
        "witness_key": f.witness_key,
    }


def counters_line(f: Federation) -> str:
    """The gossip counters and the forwarded jobs active now in one line, drops by reason
    when any."""
    dropped = sum(n for _, n in f.dropped)
    reasons = ", ".join(f"{reason} {n}" for reason, n in f.dropped if n)
    return (
        f"gossip: published {f.published}, received {f.received}, pulls {f.pulls}, "
        f"pull failures {f.pull_failures}, dropped {dropped}"
        + (f" ({reasons})" if reasons else "")
        + f"; active forwarded jobs: out {f.forwarded_out}, in {f.forwarded_in}"
    )


@command
def peers(args: argparse.Namespace) -> int:
    with connect(args) as client:
        view = client.peers()
        address = client.address
    if args.json:
        print_json(federation_dict(view))
        return EXIT_OK
    if args.witness_keys:
        # One key a line, for `icx ledger trust --witness KEY ...`: the peers heard from.
        for p in view.peers:
            if p.witness_key:
                print(p.witness_key)
        return EXIT_OK
    if not view.peering:
        print(
            f"the broker at {address} does not peer with other brokers "
            "(it was started without --peer-listen)"
        )
        return EXIT_OK
    print(f"{view.broker} (region {view.region or '-'}) at {view.peer_address}")
    if view.peers:
        print_table(
            ["BROKER", "REGION", "ADDRESS", "VERSION", "AGE S", "CENTERS", "FREE", "LIVE"],
            [
                (p.broker, p.region, p.address, p.version, round(p.age_ms / 1000, 1),
                 p.centers, p.devices_free, "yes" if p.live else "no")
                for p in view.peers
            ],
        )  # fmt: skip
    else:
        print("no peer broker heard from yet")
    print(counters_line(view))
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser(
        "federation",
        help="the broker's peer brokers and gossip",
        description="What a broker knows of the other brokers of the federation.",
    )
    fsub = f.add_subparsers(dest="federation_command", metavar="COMMAND", required=True)
    p = fsub.add_parser(
        "peers",
        help="list the peer brokers, their summaries and the gossip counters",
        description="List the peer brokers this broker gossips with: each one's region, "
        "gRPC address, the version and age (s) of its latest offer summary, the centers "
        "and free devices it offers by that summary and whether the summary is still "
        "believed (live); then the gossip counters (envelopes published, received, "
        "pulled, failed pulls, dropped by reason) and the forwarded jobs active now (out: "
        "this broker's jobs running at a peer; in: a peer's jobs running here). A broker "
        "started without --peer-listen says that it does not peer. The JSON also has each "
        "peer's witness key and this broker's own.",
    )
    add_broker_flag(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON for scripts")
    out.add_argument(
        "--witness-keys",
        action="store_true",
        help="print the peers' witness (cosignature/v1) keys, one a line, for "
        "`icx ledger trust --witness KEY`",
    )
    p.set_defaults(func=peers)
