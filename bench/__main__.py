"""Run the benchmarks one after another: `python -m bench [--quick] [NAME ...]`.

Each benchmark is a module `bench.NAME` that runs on its own as `python -m bench.NAME`;
this runs each in its own process so that one's imports and children never touch the
next one's figures. `--quick` is passed to the benchmarks that take it; options this
does not know go to the benchmarks named: `python -m bench fuzz --minutes 30` soaks the
fuzz harness (not run by default: it runs for as long as it is given).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BENCHES = (
    "skeleton_bench",
    "load_bench",
    "matcher_bench",
    "ledger_bench",
    "backend_bench",
    "peering_bench",
    "federation_bench",
    "reconnect_bench",
)


def takes_quick(name: str) -> bool:
    spec = importlib.util.find_spec(f"bench.{name}")
    if spec is None or spec.origin is None:
        return False
    return '"--quick"' in Path(spec.origin).read_text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs where supported")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: {' '.join(BENCHES)}")
    # Options the top level does not know go to the benchmarks named (`fuzz --minutes 30`).
    args, passed = parser.parse_known_args(argv)
    failed = []
    for name in args.names or BENCHES:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"== bench.{name}: not present, skipped", flush=True)
            continue
        extra = ["--quick"] if args.quick and takes_quick(name) else []
        print(f"== python -m bench.{name} {' '.join(extra)}".rstrip(), flush=True)
        extra += passed
        if subprocess.run([sys.executable, "-m", f"bench.{name}", *extra], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
