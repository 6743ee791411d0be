"""The coordinator's commands: `icx admin ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli._client import broker_address, metadata
from cli._output import EXIT_OK, command
from icx.v1 import admin_pb2, admin_pb2_grpc

RPC_TIMEOUT_S = 30.0


@command
def dump_round(args: argparse.Namespace) -> int:
    """Write the broker's latest round as a problem file that `icx match` replays."""
    import grpc

    with grpc.insecure_channel(broker_address(args.broker)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply = stub.DumpRound(
            admin_pb2.DumpRoundRequest(current=args.current),
            metadata=metadata(None),
            timeout=RPC_TIMEOUT_S,
        )
    if args.out:
        Path(args.out).write_text(reply.problem_json + "\n", encoding="utf-8")
        if reply.solution_json and args.solution:
            Path(args.solution).write_text(reply.solution_json + "\n", encoding="utf-8")
        what = f"round {reply.round}" if reply.round else "the current queue"
        print(f"wrote {what} to {args.out}", file=sys.stderr)
    else:
        print(reply.problem_json)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("admin", help="the coordinator's commands")
    asub = a.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    p = asub.add_parser(
        "dump-round",
        help="write the latest matching round as a replayable problem file",
        description="Write the broker's latest matching round (or, with --current, the "
        "queue as it is now) as a problem file: replay it with `icx match --problem FILE`.",
    )
    p.add_argument("--broker", help="broker address HOST:PORT (default: $ICX_BROKER)")
    p.add_argument("--out", help="write the problem here (default: standard output)")
    p.add_argument("--solution", help="with --out: also write the broker's solution here")
    p.add_argument("--current", action="store_true", help="the queue now, not the last round")
    p.set_defaults(func=dump_round)
