"""The fuzz harness as a soak: `python -m bench fuzz --minutes N [--seed S]`.

Runs the properties of tests/fuzz (generated requests to every RPC, hostile agent
streams; a real broker and real agents on loopback) in rounds with fresh randomness
until the time is up, and prints each distinct finding once: the invariant that broke,
how, and the minimal example hypothesis shrank it to. After a finding the harness starts
a fresh broker and agents, so one defect does not hide the next. Exits 1 if it found
anything. `make test` runs the same properties on a small derandomized budget.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Broken, Harness
from tests.fuzz.properties import rpc_example, stream_example

PROPERTIES: dict[str, Callable[[Harness, st.DataObject], None]] = {
    "rpc": rpc_example,
    "stream": stream_example,
}


@dataclass(slots=True)
class Finding:
    prop: str
    invariant: str
    summary: str
    example: str
    seen: int = 1
    seeds: list[int] = field(default_factory=list)


def _key(prop: str, exc: BaseException) -> tuple[str, str, str]:
    if isinstance(exc, Broken):
        # Ids and numbers differ from one occurrence to the next; the shape does not.
        shape = "".join("#" if c.isdigit() else c for c in exc.detail[:80])
        return prop, exc.invariant, shape
    return prop, type(exc).__name__, str(exc)[:80]


def _cause(exc: BaseException) -> BaseException:
    """The invariant that broke, out of hypothesis's wrappers (a flaky replay, say)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _cause(inner)
            if isinstance(found, Broken):
                return found
    return exc


def _example_text(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", [])
    return "\n".join(notes) if notes else "".join(traceback.format_exception(exc)[-3:])


def run_round(h: Harness, prop: str, examples: int, round_seed: int) -> BaseException | None:
    body = PROPERTIES[prop]

    @seed(round_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate, Phase.shrink),
    )
    @given(data=st.data())
    def soak(data: st.DataObject) -> None:
        body(h, data)

    try:
        soak()
    except Exception as exc:
        return exc
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed")
    parser.add_argument("--examples", type=int, default=50, help="examples per round")
    parser.add_argument("--only", choices=sorted(PROPERTIES), help="one property only")
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="icx-fuzz-"))
    h = Harness(root=work)
    findings: dict[tuple[str, str, str], Finding] = {}
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    rounds = 0
    print(f"fuzzing for {args.minutes:g} min; logs under {work}", flush=True)
    try:
        h.start()
        while time.monotonic() < deadline:
            for prop in [args.only] if args.only else sorted(PROPERTIES):
                if time.monotonic() >= deadline:
                    break
                round_seed = rng.randrange(2**32)
                rounds += 1
                found = run_round(h, prop, args.examples, round_seed)
                if found is None:
                    continue
                exc = _cause(found)
                key = _key(prop, exc)
                if key in findings:
                    findings[key].seen += 1
                    findings[key].seeds.append(round_seed)
                else:
                    invariant = exc.invariant if isinstance(exc, Broken) else type(exc).__name__
                    summary = exc.detail if isinstance(exc, Broken) else str(exc)
                    findings[key] = Finding(
                        prop=prop,
                        invariant=invariant,
                        summary=summary[:500],
                        example=_example_text(found) + _example_text(exc),
                        seeds=[round_seed],
                    )
                    print(f"found ({prop}, seed {round_seed}): [{invariant}] {summary[:200]}")
    finally:
        h.stop()
    took = time.monotonic() - started
    print(f"\n{rounds} rounds in {took / 60:.1f} min; {h.summary()}")
    if not findings:
        print("\nno findings")
    for i, f in enumerate(findings.values(), 1):
        print(f"\n== finding {i}: [{f.invariant}] in the {f.prop} property", end="")
        print(f" (seen {f.seen}x, seeds {f.seeds[:5]})")
        print(f.summary)
        print(f.example)
    if args.keep or findings:
        print(f"\nlogs and databases kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
