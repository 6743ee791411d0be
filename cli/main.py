"""`icx`: the command line of the exchange. Thin: parse, call a library or the broker,
print a table or JSON, map the package's errors to an exit code once.

Exit codes: 0 ok, 1 the operation failed (a job failed, a check did not pass),
2 bad input or usage, 3 the broker is unreachable, 4 not found.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

# The agent forks job processes from a process that uses gRPC; the jobs never use the
# parent's gRPC state, so gRPC's fork handlers (and their warnings) are not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from cli import _commands


def _version() -> str:
    try:
        return importlib.metadata.version("icx")
    except importlib.metadata.PackageNotFoundError:  # run from a tree, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icx",
        description="icx: the inter-center compute exchange.",
    )
    parser.add_argument("--version", action="version", version=f"icx {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the job's command, taken verbatim.
    tail: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if tail is not None and not getattr(args, "takes_command", False):
        parser.error(f"{args.command} takes no command after --")
    args.cmd = tail or []
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
