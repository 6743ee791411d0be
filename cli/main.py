"""`icx`: the command line of the exchange. Thin: parse, call a library or the broker,
print a table or JSON, map the package's errors to an exit code once.

Exit codes: 0 ok, 1 the operation failed (a job failed, a check did not pass),
2 bad input or usage, 3 the broker is unreachable, 4 not found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import _commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icx",
        description="icx: the inter-center compute exchange.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
