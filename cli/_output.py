"""What every command shares: exit codes, the one place errors become a one-line reason,
JSON and table printing. Calls to a broker raise the error tree (the client translates
gRPC's statuses), so no gRPC error reaches this module."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import IcxError, InvalidArgument, NotFound, Unavailable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4


def fail(message: str, code: int) -> int:
    print(f"icx: error: {message}", file=sys.stderr)
    return code


def command(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command: known errors become one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs)
        except InvalidArgument as exc:
            return fail(str(exc), EXIT_USAGE)
        except NotFound as exc:
            return fail(str(exc), EXIT_NOT_FOUND)
        except Unavailable as exc:
            return fail(str(exc), EXIT_UNREACHABLE)
        except IcxError as exc:
            return fail(str(exc), EXIT_FAILED)
        except BrokenPipeError:
            raise  # the reader went away: main ends quietly
        except FileNotFoundError as exc:
            return fail(f"no such file: {exc.filename}", EXIT_USAGE)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return fail(f"{where}{exc.strerror or exc}", EXIT_FAILED)
        except KeyboardInterrupt:
            return fail("interrupted", 130)

    return wrapper


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(r[i], int | float) for r in rows) and bool(rows) for i in range(len(headers))
    ]
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            parts.append(cell.rjust(widths[i]) if numeric[i] and n else cell.ljust(widths[i]))
        print("  ".join(parts).rstrip())
