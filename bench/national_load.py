"""A national-scale broker store for the dashboard's benchmark: `centers` centers across
the hubs and `jobs` jobs over the last `span_ms`, most of them ended, some running, some
queued, each run with its claim record (what the national figures read).

    python -m bench.national_load DB [--centers 1000] [--jobs 100000]

or `load_national_store(Path(db))` from a benchmark; then start a broker on DB (`icx
broker serve --db DB ...`). Writes go through the store contract (any store works) in
batches that share commits: 100,000 jobs load in about a minute on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from broker.claims import ClaimRecord
from broker.sqlite_store import SqliteStore
from broker.store import Store
from core.states import JobState
from core.types import (
    CenterDescriptor,
    CenterId,
    ClaimId,
    Job,
    JobEvent,
    JobId,
    JobSpec,
    Pool,
    PoolId,
    PoolRef,
)
from ledger import UsageRecord
from ledger.records import interval_charge_minor

# (hub, latitude, longitude, grid g/kWh): the national hubs, roughly where they are.
HUBS = (
    ("JJJ", 39.9, 116.4, 820),
    ("YRD", 31.2, 121.5, 700),
    ("GBA", 22.5, 114.1, 600),
    ("CY", 30.6, 104.1, 300),
    ("GZ", 26.6, 106.7, 350),
    ("IM", 40.8, 111.7, 750),
    ("GS", 36.1, 103.8, 450),
    ("NX", 38.5, 106.3, 550),
)
ACCELERATORS = ("nvidia-a800", "ascend-910", "nvidia-h800")
BATCH = 2_000


def centers(n: int, rng: random.Random) -> list[CenterDescriptor]:
    out = []
    for i in range(n):
        hub, lat, lon, grid = HUBS[i % len(HUBS)]
        accel = ACCELERATORS[i % len(ACCELERATORS)]
        devices = rng.choice((64, 128, 256, 512))
        out.append(
            CenterDescriptor(
                center_id=CenterId(f"c{i:04d}"),
                name=f"Center {i} ({hub})",
                region=hub,
                latitude=lat + rng.uniform(-2, 2),
                longitude=lon + rng.uniform(-2, 2),
                pue_milli=rng.randint(1150, 1450),
                grid_g_co2_per_kwh=grid + rng.randint(-50, 50),
                pools=(
                    Pool(
                        pool_id=PoolId("p"),
                        accelerator=accel,
                        devices_total=devices,
                        devices_free=devices,
                        memory_gb=80,
                        fp16_tflops=300,
                        power_w=400,
                        price_minor_per_device_hour=rng.randint(800, 2_000),
                    ),
                ),
            )
        )
    return out


async def fill(
    store: Store,
    *,
    n_centers: int = 1_000,
    n_jobs: int = 100_000,
    now_ms: int | None = None,
    span_ms: int = 86_400_000,
    seed: int = 7,
) -> None:
    """Write the centers and jobs (2% running, 3% queued, the rest succeeded)."""
    rng = random.Random(seed)
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    sites = centers(n_centers, rng)
    await asyncio.gather(*(store.upsert_center(c, now) for c in sites))
    pending = []
    for i in range(n_jobs):
        site = sites[rng.randrange(n_centers)]
        pool = site.pools[0]
        hub = HUBS[rng.randrange(len(HUBS))][0]
        spec = JobSpec(
            accelerator=pool.accelerator,
            devices=rng.choice((1, 2, 4, 8)),
            estimated_s=3600,
            data_region=hub,
            command=("true",),
        )
        roll = rng.random()
        submitted = now - rng.randrange(span_ms)
        job_id = JobId(f"j-{i:06d}")
        if roll < 0.03:
            job = Job(
                job_id=job_id,
                tenant=f"t{i % 50}",
                spec=spec,
                state=JobState.QUEUED,
                submitted_at_ms=submitted,
                updated_at_ms=submitted,
            )
            claim = None
        else:
            running = roll < 0.05
            start = submitted + rng.randrange(1, 60_000)
            end = None if running else min(now, start + rng.randrange(60_000, 7_200_000))
            claim_id = ClaimId(f"k-{i:06d}")
            job = Job(
                job_id=job_id,
                tenant=f"t{i % 50}",
                spec=spec,
                state=JobState.RUNNING if running else JobState.SUCCEEDED,
                submitted_at_ms=submitted,
                updated_at_ms=end or start,
                center_id=site.center_id,
                pool_id=pool.pool_id,
                claim_id=claim_id,
                attempts=1,
                exit_code=None if running else 0,
            )
            claim = ClaimRecord(
                claim_id=claim_id,
                job_id=job_id,
                tenant=job.tenant,
                pool=PoolRef(center_id=site.center_id, pool_id=pool.pool_id),
                accelerator=pool.accelerator,
                devices=spec.devices,
                price_minor_per_device_hour=pool.price_minor_per_device_hour,
                power_w=pool.power_w,
                pue_milli=site.pue_milli,
                grid_g_co2_per_kwh=site.grid_g_co2_per_kwh,
                claimed_at_ms=start,
                started_at_ms=start,
                ended_at_ms=end,
            )
        event = JobEvent(job_id=job_id, seq=1, at_ms=job.updated_at_ms, state=job.state)
        pending.append(store.insert_job(job, event))
        if claim is not None:
            pending.append(store.put_claim(claim))
        if len(pending) >= BATCH:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


METERING_INTERVAL_MS = 900_000


def usage_records(claims: list[ClaimRecord], now_ms: int, *, seed: int = 7) -> list[UsageRecord]:
    """The ledger's records of the runs as centers meter them: one per 15 minutes of a
    run (a running one metered up to a few minutes ago), with made-up energy and carbon
    and the charge the ledger's rule gives. For in-memory use (they are not signed)."""
    rng = random.Random(seed)
    out = []
    for r in claims:
        if r.started_at_ms is None:
            continue
        end = r.ended_at_ms if r.ended_at_ms is not None else now_ms - rng.randrange(600_000)
        start, n, previous = r.started_at_ms, 1, ""
        while start < end:
            stop = min(end, start + METERING_INTERVAL_MS)
            wall_s = (stop - start) // 1000
            offset_s = (start - r.started_at_ms) // 1000
            record_id = f"{r.pool.center_id}/{r.claim_id}" + (f"/{n}" if n > 1 else "")
            out.append(
                UsageRecord(
                    record_id=record_id,
                    refs=previous,
                    producer=r.pool.center_id,
                    consumer=r.tenant,
                    job_id=r.job_id,
                    start_ms=start,
                    end_ms=stop,
                    wall_s=wall_s,
                    offset_s=offset_s,
                    devices=r.devices,
                    device_s=r.devices * wall_s,
                    accelerator=r.accelerator,
                    energy_wh=rng.randrange(5_000),
                    carbon_g=rng.randrange(4_000),
                    unit_price_minor=r.price_minor_per_device_hour,
                    charge_minor=interval_charge_minor(
                        r.devices, r.price_minor_per_device_hour, offset_s=offset_s, wall_s=wall_s
                    ),
                )
            )
            start, n, previous = stop, n + 1, record_id
    return out


def load_national_store(db: Path, *, centers: int = 1_000, jobs: int = 100_000) -> None:
    """A new SQLite broker store at `db` holding the national workload."""

    async def main() -> None:
        store = SqliteStore(db)
        try:
            await fill(store, n_centers=centers, n_jobs=jobs)
        finally:
            store.close()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path)
    p.add_argument("--centers", type=int, default=1_000)
    p.add_argument("--jobs", type=int, default=100_000)
    args = p.parse_args()
    started = time.perf_counter()
    load_national_store(args.db, centers=args.centers, jobs=args.jobs)
    print(
        f"wrote {args.centers} centers, {args.jobs} jobs to {args.db} in "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
