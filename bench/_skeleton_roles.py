"""The child processes of the walking-skeleton benchmark, one role each.

`python -m bench._skeleton_roles submit ...` runs one submitting client;
`python -m bench._skeleton_roles agents ...` hosts many node agents in one process.
Each role writes what it measured (or its progress) as JSON to the file it is given, so
the orchestrator (bench.skeleton_bench) never parses a child's output.

Every role is a member of the orchestrator's federation and speaks mutual TLS: a client
presents a user's member folder (--identity); each hosted agent presents its center's
folder and usage key, made by the orchestrator in --centers (CENTER_ID.identity and
CENTER_ID.key, as cli.federation.LocalFederation.center_identity lays them out).
"""

from __future__ import annotations

import os

# As in `icx`: job processes are forked from a process that uses gRPC and never touch
# its state, so gRPC's fork handlers are not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import AsyncBrokerClient
from core.errors import IcxError
from core.types import CenterDescriptor, CenterId, JobSpec, Pool, PoolId
from identity import Credentials
from identity.tls import aio_channel
from ledger import SignerKey
from node_agent.agent import Agent

# Regions of the East-Data-West-Computing hubs, for spreading the synthetic centers.
REGIONS = ("JJJ", "YRD", "GBA", "CY", "GZ", "NM", "GS", "NX")
DEVICES_PER_CENTER = 8
_PR_SET_PDEATHSIG = 1


def trivial_spec() -> JobSpec:
    """A one-device job whose command does nothing: all cost is the exchange's own."""
    return JobSpec(name="bench", accelerator="any", devices=1, estimated_s=60, command=("true",))


def bench_center(index: int) -> CenterDescriptor:
    """A synthetic center with one pool of DEVICES_PER_CENTER devices; prices differ so
    that the matcher has a real choice."""
    return CenterDescriptor(
        center_id=CenterId(f"bench-{index:04d}"),
        name=f"Benchmark center {index}",
        region=REGIONS[index % len(REGIONS)],
        pue_milli=1200 + (index % 5) * 20,
        grid_g_co2_per_kwh=300 + (index % 7) * 50,
        pools=(
            Pool(
                pool_id=PoolId("main"),
                accelerator="ascend-910b",
                devices_total=DEVICES_PER_CENTER,
                devices_free=DEVICES_PER_CENTER,
                memory_gb=64,
                fp16_tflops=320,
                power_w=400,
                price_minor_per_device_hour=800 + (index * 37) % 400,
            ),
        ),
    )


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the orchestrator dies, even by SIGKILL, so that no
    helper outlives a run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the orchestrator died before the request
        sys.exit(1)


def write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


# ------------------------------------------------------------------ submit


def hosted_agent(index: int, address: str, *, root: Path, centers: Path) -> Agent:
    """Center `index` as an agent: its member folder and the usage key its certificate
    binds, from `centers`."""
    center = bench_center(index)
    key = SignerKey.parse((centers / f"{center.center_id}.key").read_text(encoding="utf-8"))
    return Agent(
        center,
        address,
        workdir=root / "work" / center.center_id,
        usage_key=key,
        credentials=Credentials.load(centers / f"{center.center_id}.identity"),
    )


async def submit_client(
    address: str,
    *,
    identity: Path,
    start_at: float,
    duration_s: float,
    window: int,
    out: Path,
    call: str,
) -> None:
    """Keep `window` SubmitJob calls in flight from start_at for duration_s; count the
    replies (each one a job committed to the broker's store) that arrive in the window.

    With call="health" the calls are health Checks instead: a unary call that does
    nothing, the ceiling of the broker's gRPC server on this machine."""
    end_at = start_at + duration_s
    latencies_s: list[float] = []
    errors = 0
    extra = 0
    creds = Credentials.load(identity)
    async with (
        aio_channel(address, creds) as channel,
        AsyncBrokerClient(address, creds, timeout_s=30) as client,
    ):
        if call == "health":  # not a broker call: the raw health stub
            check = health_pb2_grpc.HealthStub(channel).Check
            health_request = health_pb2.HealthCheckRequest()

            async def one() -> None:
                await check(health_request, timeout=30)
        else:
            spec = trivial_spec()

            async def one() -> None:
                await client.submit(spec)

        for _ in range(5):  # connect and warm up before the clock starts
            await one()
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def worker() -> None:
            nonlocal errors, extra
            while time.time() < end_at:
                sent = time.perf_counter()
                try:
                    await one()
                except (grpc.aio.AioRpcError, IcxError):
                    errors += 1
                    continue
                if time.time() <= end_at:
                    latencies_s.append(time.perf_counter() - sent)
                else:
                    extra += 1

        await asyncio.gather(*(worker() for _ in range(window)))
    latencies_s.sort()
    n = len(latencies_s)
    write_json(
        out,
        {
            "accepted": n,
            "accepted_after_window": extra,
            "warmup": 5,
            "errors": errors,
            "p50_ms": 1000 * statistics.median(latencies_s) if n else None,
            "p99_ms": 1000 * latencies_s[min(n - 1, int(n * 0.99))] if n else None,
        },
    )


# ------------------------------------------------------------------ agents


async def host_agents(
    address: str, *, first: int, count: int, root: Path, centers: Path, status: Path
) -> None:
    """Run `count` node agents (centers first .. first+count-1) on this process's loop
    until SIGTERM; keep `status` up to date with how many are connected."""
    agents = [
        hosted_agent(i, address, root=root, centers=centers) for i in range(first, first + count)
    ]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def report() -> None:
        while True:
            connected = sum(1 for a in agents if a.connected.is_set())
            write_json(status, {"connected": connected, "count": count, "pid": os.getpid()})
            await asyncio.sleep(0.2)

    tasks = [asyncio.ensure_future(a.run()) for a in agents]
    reporter = asyncio.ensure_future(report())
    try:
        await stop.wait()
    finally:
        reporter.cancel()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for a in agents:
            await a.stop()


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._skeleton_roles")
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("submit", help="one submitting client")
    s.add_argument("--broker", required=True)
    s.add_argument("--identity", type=Path, required=True, help="a user's member folder")
    s.add_argument("--start-at", type=float, required=True, help="Unix time to start")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--window", type=int, required=True, help="calls kept in flight")
    s.add_argument("--call", choices=("submit", "health"), default="submit")
    s.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("agents", help="host many node agents in this process")
    a.add_argument("--broker", required=True)
    a.add_argument("--first", type=int, required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--root", type=Path, required=True)
    a.add_argument(
        "--centers", type=Path, required=True, help="the centers' member folders and usage keys"
    )
    a.add_argument("--status", type=Path, required=True)
    a.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    die_with_parent()
    if args.role == "submit":
        asyncio.run(
            submit_client(
                args.broker,
                identity=args.identity,
                start_at=args.start_at,
                duration_s=args.seconds,
                window=args.window,
                out=args.out,
                call=args.call,
            )
        )
    else:
        # The same log format and level as `icx agent run`, so the agents do the same work.
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        asyncio.run(
            host_agents(
                args.broker,
                first=args.first,
                count=args.count,
                root=args.root,
                centers=args.centers,
                status=args.status,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
