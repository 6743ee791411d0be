"""Ledger benchmark: signing, verified appends, proofs at 1M entries, audit, settlement.

Every figure is measured in one run on one machine, per-record and batch signatures
side by side, and printed beside the issue's goal. Run:

    .venv/bin/python -m bench.ledger_bench [--records N] [--proof-size 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from ledger import LedgerStore, Log, merkle
from ledger.checkpoint import Checkpoint
from ledger.keys import SignerKey
from ledger.records import UsageRecord
from ledger.sample import fill, parties
from ledger.settlement import settle
from ledger.signing import SignatureCache, sign_records

NOV_2026_MS = 1_793_491_200_000
ORIGIN = "bench.icx/ledger"


def _log(path: Path, workers: int = 1) -> Log:
    return Log.create(
        LedgerStore(path), SignerKey(name=ORIGIN, alg=1, seed=bytes(32)), workers=workers
    )


def _records(n: int) -> list[UsageRecord]:
    """n plausible records from one center, via a throwaway ledger."""
    with tempfile.TemporaryDirectory() as tmp:
        log = _log(Path(tmp) / "r.db")
        fill(log, records=n, centers=1, tenants=20, seed=3, start_ms=NOV_2026_MS, batch=1024)
        return [r for _, r in log.records()]


def bench_signing(records: list[UsageRecord]) -> dict[str, float]:
    key = parties(3, 1, 1).centers[0].key
    t = time.perf_counter()
    singles = [sign_records([r], key)[0] for r in records]
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(records), 256):
        sign_records(records[i : i + 256], key)
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    cache = SignatureCache()
    for s in singles:
        cache.check_producer(s, key.verifier)
    verify_s = time.perf_counter() - t
    n = len(records)
    return {
        "sign_single": n / single_s,
        "sign_batch256": n / batch_s,
        "verify_single": n / verify_s,
    }


def bench_appends(records: list[UsageRecord], batch: int, workers: int = 1) -> float:
    """Verified appends per second: producer signature checked, countersigned, stored,
    in calls of 256 records. With `workers` > 1 the signature checks run in that many
    worker processes, started before the clock starts."""
    center = parties(3, 1, 1).centers[0]
    signed = []
    for i in range(0, len(records), batch):
        signed.extend(sign_records(records[i : i + batch], center.key))
    with tempfile.TemporaryDirectory() as tmp, _log(Path(tmp) / "a.db", workers) as log:
        log.admit(center.name, center.role, center.key.verifier)
        log.start_workers()
        t = time.perf_counter()
        for i in range(0, len(signed), 256):
            log.append(signed[i : i + 256])
        return len(signed) / (time.perf_counter() - t)


def bench_proofs(size: int) -> dict[str, float]:
    """Build a store of `size` synthetic leaves, then time inclusion proofs."""
    with tempfile.TemporaryDirectory() as tmp:
        store = LedgerStore(Path(tmp) / "p.db")
        t = time.perf_counter()
        chunk = 50_000
        for start in range(0, size, chunk):
            store.append(
                [(None, "bench", b"leaf %d" % i) for i in range(start, min(size, start + chunk))]
            )
        build_s = time.perf_counter() - t
        rng = random.Random(5)
        root = store.root()
        times = []
        for _ in range(2000):
            index = rng.randrange(size)
            t = time.perf_counter()
            proof = store.inclusion_proof(index, size)
            times.append(time.perf_counter() - t)
        merkle.verify_inclusion(merkle.hash_leaf(b"leaf %d" % index), index, size, proof, root)
        t = time.perf_counter()
        for _ in range(200):
            store.consistency_proof(rng.randrange(1, size), size)
        consistency_s = (time.perf_counter() - t) / 200
        store.close()
    return {
        "build_per_s": size / build_s,
        "inclusion_median_us": statistics.median(times) * 1e6,
        "consistency_mean_us": consistency_s * 1e6,
    }


def bench_audit_and_settle(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = _log(Path(tmp) / "s.db")
        fill(log, records=n, centers=10, tenants=40, seed=9, start_ms=NOV_2026_MS, batch=256)
        log.checkpoint()
        t = time.perf_counter()
        log.audit()
        audit_s = time.perf_counter() - t
        records = list(log.records())
        cp = Checkpoint(origin=ORIGIN, size=log.size, root=log.store.root())
        t = time.perf_counter()
        settle(records, period="2026-11", checkpoint=cp)
        settle_s = time.perf_counter() - t
    return {"audit_per_s": n / audit_s, "settle_per_s": n / settle_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--proof-size", type=int, default=1_000_000)
    args = parser.parse_args()
    records = _records(args.records)
    sig = bench_signing(records[:5000])
    single_1 = bench_appends(records, 1)
    single = bench_appends(records, 1, workers=2)
    batched = bench_appends(records, 256)
    proofs = bench_proofs(args.proof_size)
    rest = bench_audit_and_settle(args.records)
    rows = [
        ("Ed25519 sign, one record per signature", f"{sig['sign_single']:,.0f} records/s", ""),
        ("sign, 256 records per signature", f"{sig['sign_batch256']:,.0f} records/s", ""),
        ("verify, one record per signature", f"{sig['verify_single']:,.0f} records/s", ""),
        ("verified appends, per-record signatures, 1 process", f"{single_1:,.0f}/s", ""),
        (
            "verified appends, per-record signatures, 2 workers",
            f"{single:,.0f}/s ({single / 10_000:.2f} x goal)",
            ">= 10,000/s",
        ),
        (
            "verified appends, 256-record batches, 1 process",
            f"{batched:,.0f}/s ({batched / 40_000:.2f} x goal)",
            ">= 40,000/s",
        ),
        (f"store build, {args.proof_size:,} leaves", f"{proofs['build_per_s']:,.0f} leaves/s", ""),
        (
            f"inclusion proof at {args.proof_size:,}",
            f"{proofs['inclusion_median_us']:.0f} us median "
            f"({proofs['inclusion_median_us'] / 60:.2f} x goal)",
            "<= 60 us",
        ),
        (
            f"consistency proof at {args.proof_size:,}",
            f"{proofs['consistency_mean_us']:.0f} us mean",
            "",
        ),
        (
            "audit, batch-signed records",
            f"{rest['audit_per_s']:,.0f} records/s ({rest['audit_per_s'] / 200_000:.2f} x goal)",
            ">= 200,000/s",
        ),
        (
            "settlement, 50 parties",
            f"{rest['settle_per_s']:,.0f} records/s ({rest['settle_per_s'] / 666_667:.2f} x goal)",
            ">= 667,000/s",
        ),
    ]
    print("| measure | measured | goal |")
    print("|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")


if __name__ == "__main__":
    main()
