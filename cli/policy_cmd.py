"""The coordinator's policy on a running broker: `icx policy show|set FILE|history`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli._client import add_broker_flag, connect
from cli._output import EXIT_OK, command, print_json, print_table
from core.errors import InvalidArgument

if TYPE_CHECKING:
    from core.national import PolicyVersion


def _as_json(p: PolicyVersion) -> dict[str, Any]:
    return {
        "version": p.version,
        "set_by": p.set_by,
        "set_at_ms": p.set_at_ms,
        "comment": p.comment,
        "policy": json.loads(p.policy_json),
    }


def _when(at_ms: int) -> str:
    if not at_ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at_ms / 1000)) + " UTC"


@command
def show(args: argparse.Namespace) -> int:
    """Print the policy in force: its file, then (on stderr) its version and author."""
    with connect(args) as client:
        policy = client.policy()
    if args.json:
        print_json(_as_json(policy))
        return EXIT_OK
    if policy.version:
        print(
            f"# version {policy.version}, set by {policy.set_by} at {_when(policy.set_at_ms)}"
            + (f": {policy.comment}" if policy.comment else ""),
            file=sys.stderr,
        )
    else:
        print("# version 0: the broker's start-up policy, never set", file=sys.stderr)
    print(policy.policy_json)
    return EXIT_OK


@command
def set_policy(args: argparse.Namespace) -> int:
    """Send a policy file to the broker; it is in force from the next round."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{args.file} is not UTF-8 text (byte {exc.start})") from exc
    with connect(args) as client:
        policy = client.set_policy(text, comment=args.comment)
    if args.json:
        print_json(_as_json(policy))
    else:
        print(f"policy version {policy.version} in force from the next round")
    return EXIT_OK


@command
def history(args: argparse.Namespace) -> int:
    """The policy's changes, newest first."""
    with connect(args) as client:
        changes = client.policy_history(limit=args.limit)
    if args.json:
        print_json([_as_json(c) for c in changes])
        return EXIT_OK
    print_table(
        ["VERSION", "SET AT", "SET BY", "COMMENT"],
        [[c.version, _when(c.set_at_ms), c.set_by, c.comment] for c in changes],
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "policy",
        help="the coordinator's policy on a running broker",
        description="Show, set or list the coordinator's policy (weights, carbon price, "
        "quotas, incentive, latency: docs/policy.md). Setting it takes a coordinator's "
        "identity; it is in force from the broker's next round.",
    )
    psub = p.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    s = psub.add_parser("show", help="print the policy in force", description=show.__doc__)
    s.set_defaults(func=show)
    s = psub.add_parser(
        "set",
        help="send a policy file to the broker",
        description="Send a policy file (JSON, docs/policy.md) to the broker: it is "
        "checked (a bad field is named and nothing changes), stored, logged with who set "
        "it, and in force from the next round.",
    )
    s.add_argument("file", metavar="FILE", help="the policy file (JSON)")
    s.add_argument("--comment", default="", help="why (kept with the change)")
    s.set_defaults(func=set_policy)
    s = psub.add_parser("history", help="list the policy's changes", description=history.__doc__)
    s.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    s.set_defaults(func=history)
    for parser in psub.choices.values():
        add_broker_flag(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")
