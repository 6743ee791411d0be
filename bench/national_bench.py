"""The coordinator's calls at national scale beside a small federation, in-process (issue
13): each NationalService call the dashboard makes, computed afresh and converted to its
reply message as the servicer does (no network, no TLS), at 1,000 centers / 100,000 jobs
beside 17 centers / 240 jobs, with the ratio of the p95s; and `Broker.load()` of each
store.

    .venv/bin/python -m bench.national_bench [--quick] [--db FILE] [--calls N] [--json FILE]

Each store is filled by `bench.national_load` (jobs over the last 24 h: 2% running, 3%
queued, the rest done, each run with its claim record); `--db` reuses a national store
filled before (`python -m bench.national_load FILE`; filling takes about a minute).
Beside the runs, the ledger's records of them are noted in memory (one per 15 minutes of
each run, as centers meter; unsigned: their signing and the ledger's own start-up are
not measured here). After the load the broker's objects are frozen out of the
collector's passes, as `icx broker serve` does.

The clock is a manual one, set at the store's latest change and moved on by the view's
reuse time before each call, so that every call computes its answer (a dashboard's
repeated question within a second is answered from the view's last answer instead).
`--quick`: 200 centers / 20,000 jobs for the large one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.national_load import fill, usage_records
from broker.core import Broker
from broker.national import REUSE_MS, ROUNDS_KEPT
from broker.sqlite_store import SqliteStore
from core import national_wire as nw
from core.clock import ManualClock
from core.national import ReasonCount, RoundSummary
from icx.v1 import national_pb2 as pb

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _loaded(db: Path) -> tuple[Broker, SqliteStore, dict[str, float]]:
    """A broker on `db`, loaded, with the ledger's records of its runs noted."""
    store = SqliteStore(db)
    clock = ManualClock(0)
    broker = Broker(store, clock=clock)
    started = time.perf_counter()
    broker.load()
    load_s = time.perf_counter() - started
    now = max(j.updated_at_ms for j in broker.jobs.jobs.values())
    clock.advance(now)
    records = usage_records(list(broker.claims.records.values()), now)
    started = time.perf_counter()
    broker.national.note_usage(records)
    usage_s = time.perf_counter() - started
    gc.freeze()
    return broker, store, {"load_s": load_s, "usage_records": len(records), "note_s": usage_s}


def _calls(broker: Broker) -> dict[str, Callable[[], object]]:
    v = broker.national
    center = sorted(broker.centers.descriptors)[len(broker.centers.descriptors) // 2]
    return {
        "GetOverview 1 h": lambda: nw.overview_to_proto(v.overview(HOUR_MS)),
        "GetOverview 24 h": lambda: nw.overview_to_proto(v.overview(DAY_MS)),
        "GetTimeSeries 1 h": lambda: nw.series_to_proto(v.time_series(HOUR_MS, 0)),
        "GetTimeSeries 24 h": lambda: nw.series_to_proto(v.time_series(DAY_MS, 0)),
        "GetCenter 1 h": lambda: nw.center_detail_to_proto(v.center(center, HOUR_MS)),
        "ListRounds 20": lambda: pb.ListRoundsResponse(
            rounds=[nw.round_to_proto(r) for r in v.latest_rounds(20)]
        ),
        "GetPolicy": lambda: pb.GetPolicyResponse(policy=nw.policy_to_proto(broker.policy.current)),
    }


def _measure(broker: Broker, calls: int) -> dict[str, dict[str, float]]:
    clock = broker.clock
    assert isinstance(clock, ManualClock)
    _rounds(broker)
    out = {}
    for name, call in _calls(broker).items():
        took = []
        call()  # once first: a series' per-step sums are kept from the first call on
        for _ in range(calls):
            clock.advance(REUSE_MS)
            started = time.perf_counter()
            call()
            took.append((time.perf_counter() - started) * 1000)
        took.sort()
        out[name] = {
            "p50_ms": statistics.median(took),
            "p95_ms": took[min(len(took) - 1, round(0.95 * len(took)) - 1)],
        }
    return out


def _rounds(broker: Broker) -> None:
    """A full history of rounds (no center is connected, so none runs here): each with
    the matcher's figures and four kinds of reasons for the jobs that wait."""
    at = broker.clock.now_ms()
    for n in range(ROUNDS_KEPT):
        broker.national.rounds.append(
            RoundSummary(
                number=n + 1,
                at_ms=at - (ROUNDS_KEPT - n) * 2_000,
                objective=1234.5,
                bound=1200.0,
                gap=0.028,
                solver="cp-sat",
                solve_seconds=0.4,
                pools=1_000,
                jobs_considered=3_000,
                jobs_placed=40,
                jobs_waiting=2_960,
                waiting=tuple(
                    ReasonCount(reason=f"reason {k} N", example=f"reason {k} 8", jobs=740)
                    for k in range(4)
                ),
            )
        )


def _scale(db: Path, calls: int) -> dict[str, Any]:
    broker, store, start_up = _loaded(db)
    try:
        figures = _measure(broker, calls)
    finally:
        store.close()
        gc.unfreeze()
    return {"start_up": start_up, "calls": figures}


def _filled(db: Path, centers: int, jobs: int) -> float:
    started = time.perf_counter()

    async def main() -> None:
        store = SqliteStore(db)
        try:
            await fill(store, n_centers=centers, n_jobs=jobs)
        finally:
            store.close()

    asyncio.run(main())
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 centers, 20,000 jobs")
    p.add_argument("--db", type=Path, help="a national store filled before")
    p.add_argument("--calls", type=int, default=40, help="calls of each kind per scale")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    big = (200, 20_000) if args.quick else (1_000, 100_000)
    with tempfile.TemporaryDirectory(prefix="icx-national-bench-") as tmp:
        small_db = Path(tmp) / "small.db"
        _filled(small_db, 17, 240)
        big_db = args.db
        fill_s = None
        if big_db is None:
            big_db = Path(tmp) / "national.db"
            fill_s = _filled(big_db, *big)
        small = _scale(small_db, args.calls)
        large = _scale(big_db, args.calls)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}",
        "large": {"centers": big[0], "jobs": big[1], "store": str(args.db or ""), "fill_s": fill_s},
        "small": small,
        "national": large,
    }
    print(f"{'call':<22} {'17 c p50':>9} {'p95':>7} {'large p50':>10} {'p95':>7} {'ratio':>6}")
    for name, s in small["calls"].items():
        n = large["calls"][name]
        ratio = n["p95_ms"] / s["p95_ms"] if s["p95_ms"] else float("nan")
        print(
            f"{name:<22} {s['p50_ms']:>9.1f} {s['p95_ms']:>7.1f} "
            f"{n['p50_ms']:>10.1f} {n['p95_ms']:>7.1f} {ratio:>5.1f}x"
        )
    for label, scale in (("17 centers", small), ("large", large)):
        su = scale["start_up"]
        print(
            f"{label}: Broker.load() {su['load_s']:.2f} s; {su['usage_records']} ledger "
            f"records noted in {su['note_s']:.2f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
