"""`icx`: the command line of the exchange. Thin: parse, call a library or the broker,
print a table or JSON, map the package's errors to an exit code once.

Exit codes: 0 ok, 1 the operation failed (a job failed, a check did not pass),
2 bad input or usage, 3 a service is unreachable (the broker; NVML for `icx agent
discover`), 4 not found, 141 the reader of the output went away (`icx jobs | head`: the
exit of a command ended by SIGPIPE, without a traceback), 130 interrupted.

No traceback reaches a user: an error nobody expected is one line too, and
ICX_DEBUG=1 shows its traceback. Start-up stays light: command modules import what is
heavy (gRPC, OR-Tools, the ledger) inside the commands that use it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

# The agent forks job processes from a process that uses gRPC; the jobs never use the
# parent's gRPC state, so gRPC's fork handlers (and their warnings) are not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from cli import _commands
from cli._output import EXIT_FAILED, fail

EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


def _version() -> str:
    import importlib.metadata  # a tenth of a second: only --version pays it

    try:
        return importlib.metadata.version("icx")
    except importlib.metadata.PackageNotFoundError:  # run from a tree, not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """argparse's "version" action, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"icx {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icx",
        description="icx: the inter-center compute exchange.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        # Nothing more can be written; point stdout at devnull so that the interpreter's
        # own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("ICX_DEBUG"):
            traceback.print_exc()
        what = f"internal error: {type(exc).__name__}: {exc} (ICX_DEBUG=1 shows where)"
        return fail(what, EXIT_FAILED)
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 0
    # Everything after the first `--` is the job's command, taken verbatim.
    tail: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.command is None:  # options but no command, e.g. `icx --json`
        parser.error("name a command (icx --help lists them)")
    if tail is not None and not getattr(args, "takes_command", False):
        parser.error(f"{args.command} takes no command after --")
    args.cmd = tail or []
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
