"""Shared fixtures: a real federation of child processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core import wire
from core.errors import Unavailable
from core.types import CenterDescriptor, CenterId, Job, JobId, JobSpec, Pool, PoolId
from core.views import CenterStatus
from icx.v1 import broker_pb2, broker_pb2_grpc
from tests.pg_cluster import pg_cluster, pg_url  # noqa: F401  (fixtures for every test)

RECORD_JOB = Path(__file__).parent / "jobs" / "record.py"

# Short expiries so that loss and recovery happen within a test's time.
FAST_BROKER = (
    "--heartbeat-ms", "200",
    "--center-expiry-ms", "3000",
    "--lease-ms", "3000",
    "--min-metering-interval-s", "1",
)  # fmt: skip

# A center expiry (15 s) that outlasts an agent's restart by far, so that what a test
# sees comes from the restarted agent's Hello, not from the expiry.
RESTART_BROKER = ("--heartbeat-ms", "200", "--center-expiry-ms", "15000")


def make_center(
    center_id: str,
    *,
    region: str = "TF",
    pools: dict[str, tuple[str, int, int]] | None = None,
    pue_milli: int = 1250,
    grid: int = 500,
) -> CenterDescriptor:
    """pools: pool_id -> (accelerator, devices, price_minor_per_device_hour)."""
    pools = pools or {"main": ("ascend-910", 8, 500)}
    return CenterDescriptor(
        center_id=CenterId(center_id),
        name=f"Test center {center_id}",
        region=region,
        pue_milli=pue_milli,
        grid_g_co2_per_kwh=grid,
        pools=tuple(
            Pool(
                pool_id=PoolId(pid),
                accelerator=acc,
                devices_total=n,
                devices_free=n,
                memory_gb=32,
                fp16_tflops=256,
                power_w=300,
                price_minor_per_device_hour=price,
            )
            for pid, (acc, n, price) in pools.items()
        ),
    )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    with LocalFederation(root=tmp_path / "fed", broker_args=FAST_BROKER) as fed:
        yield fed


@pytest.fixture
def stub(federation: LocalFederation) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    """A raw stub, for tests of what the wire itself refuses (bad input)."""
    with federation.channel() as channel:
        yield broker_pb2_grpc.BrokerServiceStub(channel)


@pytest.fixture
def client(federation: LocalFederation) -> Iterator[BrokerClient]:
    with federation.client() as client:
        yield client


def run_icx(
    *args: str,
    identity: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`icx ARGS` in a child process, as the member in `identity` ($ICX_CONFIG) when
    given; none of the caller's own ICX_ settings leak in, `env` adds to it."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ICX_")}
    if identity is not None:
        child_env["ICX_CONFIG"] = str(identity)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=child_env,
        cwd=cwd,
        check=False,
    )


def record_spec(out: Path, seconds: float, devices: int = 1, exit_code: int = 0) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=devices,
        # An hour: long enough that prices, not rounding to whole fen, decide placement.
        estimated_s=3600,
        command=(sys.executable, str(RECORD_JOB), str(out), str(seconds), str(exit_code)),
    )


def submit(client: BrokerClient, spec: JobSpec) -> JobId:
    return client.submit(spec).job_id


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_for_async(
    check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.02
) -> object:
    """`wait_for` on the event loop: `check` may be a plain or an async callable."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


def _centers(source: BrokerClient | broker_pb2_grpc.BrokerServiceStub) -> list[CenterStatus]:
    if isinstance(source, BrokerClient):
        return source.centers()
    reply = source.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
    return [wire.center_status_from_proto(c) for c in reply.centers]


def wait_centers(
    source: BrokerClient | broker_pb2_grpc.BrokerServiceStub, n: int, timeout_s: float = 15
) -> None:
    """Until n centers are connected with an offer. Takes a client (or, for tests that
    speak raw protobuf, a stub)."""

    def ready() -> bool:
        return sum(1 for c in _centers(source) if c.connected and c.offer is not None) >= n

    try:
        wait_for(ready, timeout_s, f"{n} connected centers")
    except grpc.RpcError as exc:
        raise Unavailable(str(exc)) from exc


def jobs_by_id(client: BrokerClient) -> dict[str, Job]:
    """Every job, by id."""
    return {j.job_id: j for j in client.list_jobs().jobs}


def read_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def assert_no_overlaps(records: list[dict[str, Any]], totals: dict[tuple[str, str], int]) -> None:
    """No device was used by two runs at once, no index beyond the pool, and no job ran
    twice at the same time: checked on what the jobs themselves saw."""
    by_device: dict[tuple[str, str, int], list[tuple[float, float, str]]] = {}
    by_job: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        stop = r.get("end", r["last"])
        for d in r["devices"]:
            assert 0 <= d < totals[(r["center"], r["pool"])], f"device {d} beyond pool: {r}"
            by_device.setdefault((r["center"], r["pool"], d), []).append(
                (r["start"], stop, r["job"])
            )
        by_job.setdefault(r["job"], []).append((r["start"], stop))
    for key, spans in [*by_device.items(), *by_job.items()]:
        spans = sorted(spans)
        for a, b in itertools.pairwise(spans):
            assert a[1] <= b[0], f"{key}: runs overlap: {a} and {b}"


@contextlib.contextmanager
def hung_host() -> Iterator[tuple[str, list[socket.socket]]]:
    """An address that takes TCP connections and never answers (a hung or cut-off host),
    and the connections it took."""
    server = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):
            while True:
                taken.append(server.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", taken
    finally:
        server.close()
        for s in taken:
            s.close()
