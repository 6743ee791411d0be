"""Mutual TLS beside plaintext, side by side in one run (issue "Identity and admission"):

1. durable submits per second (one client, 32 in flight; every submit committed before
   its reply) against a broker started with its membership (--identity) and one started
   --insecure;
2. end-to-end jobs per second (submit, match, claim, launch `true`, report, usage signed
   and logged) through the broker and 8 node agents (one process each);
3. the time to open a new connection and make one call (WhoAmI): TCP, and for mutual
   TLS the handshake and the broker's check of the certificate chain.

Modes alternate round by round so that a slower minute of the shared machine does not
fall on one mode only; each figure is the median of the rounds.

    .venv/bin/python -m bench.tls_bench [--rounds N] [--submits N] [--jobs N]
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cli.federation import LocalFederation
from client import AsyncBrokerClient, BrokerClient
from core.states import JobState
from core.types import CenterDescriptor, CenterId, JobSpec, Pool, PoolId
from identity import Role

AGENTS = 8
WINDOW = 32
CONNECTS = 40
SPEC = JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",))


def center(i: int) -> CenterDescriptor:
    pool = Pool(
        pool_id=PoolId("main"),
        accelerator="ascend-910",
        devices_total=16,
        devices_free=16,
        memory_gb=64,
        fp16_tflops=256,
        power_w=300,
        price_minor_per_device_hour=500 + i,
    )
    return CenterDescriptor(
        center_id=CenterId(f"bench-{i}"),
        name=f"Bench center {i}",
        region="TF",
        pue_milli=1200,
        grid_g_co2_per_kwh=500,
        pools=(pool,),
    )


async def submit_many(fed: LocalFederation, n: int) -> float:
    """Durable submits per second, WINDOW in flight."""
    creds = fed.credentials(Role.USER, tenant="bench")
    async with AsyncBrokerClient(fed.address, creds, tenant="bench", timeout_s=60) as client:
        await client.submit(SPEC)  # the connection (and the handshake) before the clock
        left = n
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.submit(SPEC)

        await asyncio.gather(*(worker() for _ in range(WINDOW)))
        return n / (time.perf_counter() - start)


def connect_ms(fed: LocalFederation) -> float:
    """Median time to open a new connection and make one call."""
    creds = fed.credentials(Role.USER, tenant="bench")
    times = []
    for _ in range(CONNECTS):
        start = time.perf_counter()
        with BrokerClient(fed.address, creds, tenant="bench") as client:
            client.whoami()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def jobs_per_s(fed: LocalFederation, n: int) -> float:
    for i in range(AGENTS):
        fed.start_agent(center(i))
    with fed.client("bench") as user, fed.client(role=Role.COORDINATOR) as coordinator:
        deadline = time.monotonic() + 60
        while sum(1 for c in coordinator.centers() if c.offer is not None) < AGENTS:
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not connect")
            time.sleep(0.1)
        done_before = coordinator.list_jobs([JobState.SUCCEEDED], limit=1).total
        start = time.perf_counter()
        for _ in range(n):
            user.submit(SPEC)
        while coordinator.list_jobs([JobState.SUCCEEDED], limit=1).total - done_before < n:
            if time.perf_counter() - start > 300:
                raise RuntimeError("jobs did not finish in 300 s")
            time.sleep(0.05)
        return n / (time.perf_counter() - start)


def one_round(root: Path, secure: bool, submits: int, jobs: int) -> dict[str, float]:
    fed = LocalFederation(
        root=root, broker_args=("--solver", "greedy", "--log-level", "warning"), secure=secure
    )
    root.mkdir(parents=True)
    try:
        fed.start_broker(port=0)
        figures = {"submits_per_s": asyncio.run(submit_many(fed, submits))}
        figures["connect_ms"] = connect_ms(fed)
        # A fresh queue for the jobs: the submits above stay queued (no agents then),
        # so restart on an empty database.
        fed.stop()
        fed.broker = None
        fed.db.unlink()
        for suffix in ("-wal", "-shm", ".ledger", ".ledger-wal", ".ledger-shm", ".lock"):
            Path(f"{fed.db}{suffix}").unlink(missing_ok=True)
        fed.start_broker(port=0)
        figures["jobs_per_s"] = jobs_per_s(fed, jobs)
        return figures
    finally:
        fed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=600)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plaintext": [], "mutual TLS": []}
    with tempfile.TemporaryDirectory(prefix="icx-tls-bench-") as tmp:
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for secure in order:
                mode = "mutual TLS" if secure else "plaintext"
                figures = one_round(Path(tmp) / f"{r}-{mode[:3]}", secure, args.submits, args.jobs)
                results[mode].append(figures)
                print(
                    f"round {r + 1} {mode}: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                    flush=True,
                )
    median = {
        mode: {k: statistics.median(f[k] for f in rounds) for k in rounds[0]}
        for mode, rounds in results.items()
    }
    plain, tls = median["plaintext"], median["mutual TLS"]
    print()
    print("| figure | plaintext (--insecure) | mutual TLS | TLS / plaintext |")
    print("|---|---|---|---|")
    for key, label in (
        ("submits_per_s", f"durable submits/s (1 client, {WINDOW} in flight)"),
        ("jobs_per_s", f"end-to-end jobs/s ({AGENTS} agents, `true`)"),
        ("connect_ms", "new connection + one call, median ms"),
    ):
        print(f"| {label} | {plain[key]:.1f} | {tls[key]:.1f} | {tls[key] / plain[key]:.2f} |")
    print(
        f"\n{args.rounds} rounds each, modes alternating; medians. Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
