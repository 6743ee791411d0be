"""The coordinator's commands: `icx admin ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli import member_cmd
from cli._client import add_broker_flag, connect
from cli._output import EXIT_OK, command, print_json


@command
def dump_round(args: argparse.Namespace) -> int:
    """Write the broker's latest round as a problem file that `icx match` replays."""
    with connect(args, timeout_s=30.0) as client:
        dump = client.dump_round(current=args.current)
    if args.out:
        Path(args.out).write_text(dump.problem_json + "\n", encoding="utf-8")
        if dump.solution_json and args.solution:
            Path(args.solution).write_text(dump.solution_json + "\n", encoding="utf-8")
        what = f"round {dump.number}" if dump.number else "the current queue"
        print(f"wrote {what} to {args.out}", file=sys.stderr)
    if args.json:
        print_json(
            {
                "round": dump.number,
                "at_ms": dump.at_ms,
                "problem": json.loads(dump.problem_json),
                "solution": json.loads(dump.solution_json) if dump.solution_json else None,
            }
        )
    elif not args.out:
        print(dump.problem_json)
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
    add_broker_flag(p)
    p.add_argument("--out", help="write the problem here (default: standard output)")
    p.add_argument("--solution", help="with --out: also write the broker's solution here")
    p.add_argument("--current", action="store_true", help="the queue now, not the last round")
    p.add_argument(
        "--json", action="store_true", help="print round, time, problem and solution as JSON"
    )
    p.set_defaults(func=dump_round)
    member_cmd.register_admin(asub)
