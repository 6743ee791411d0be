"""The backends the contract suite runs on, one entry each (`ENTRIES`).

An entry is a function of the test's `request` and a folder that returns a `BackendEntry`:
how to make the backend on the state kept in that folder (a second `make` on the same
folder is the backend of a restarted agent), whether it re-attaches after a restart, and
how to ask its own engine that a run is gone. An entry that needs a daemon asks for its
session fixture through `request.getfixturevalue`, so a run of other backends' cases
never starts it. Adding a backend is one entry:

    def docker_entry(request: pytest.FixtureRequest, root: Path) -> BackendEntry:
        engine = request.getfixturevalue("docker_engine")
        ...
        return BackendEntry(make=..., reattaches=True, gone=..., image=engine.image)

    ENTRIES["docker"] = docker_entry
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound  # type: ignore[import-untyped]

from cli.slurm_local import LocalSlurm
from core.errors import InvalidArgument
from node_agent.backends import Backend, LaunchRequest, ProcessBackend, make_backend
from node_agent.backends._docker import DockerBackend
from node_agent.backends._slurm import job_ended, time_limit_min
from node_agent.config import BackendConfig
from tests.agents.detached import DetachedTestBackend
from tests.conftest import make_center
from tests.docker_engine import DockerEngine, docker_engine  # noqa: F401 (a fixture)
from tests.slurm_cluster import GRES, settle, slurm_cluster  # noqa: F401 (a fixture)

_CENTERS = itertools.count(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class BadStart:
    """A request the backend must refuse before anything runs, and how it says so."""

    changes: dict[str, Any]  # LaunchRequest fields to change
    error: type[Exception]
    match: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendEntry:
    make: Callable[[], Backend]
    """A backend on this entry's state; called again, the backend of a restarted agent."""
    reattaches: bool
    """Its runs outlive the agent, and a new backend follows them to their end."""
    gone: Callable[[str], Awaitable[bool]]
    """The engine's own word that the run is gone: no process, no Slurm job, no container."""
    time_limit_s: Callable[[str], Awaitable[float | None]] = field(default=lambda run_id: _none())
    """The limit the engine itself puts on the run's time (None: none)."""
    image: str = ""
    """The image a job runs in (a container backend's); "" for none."""
    bad_starts: Sequence[BadStart] = ()
    """Requests this backend refuses beside a program that does not exist."""


async def _none() -> float | None:
    return None


async def _pid_gone(run_id: str) -> bool:
    try:
        os.kill(int(run_id), 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{run_id}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def process_entry(request: pytest.FixtureRequest, root: Path) -> BackendEntry:
    return BackendEntry(make=ProcessBackend, reattaches=False, gone=_pid_gone)


def detached_entry(request: pytest.FixtureRequest, root: Path) -> BackendEntry:
    async def gone(run_id: str) -> bool:
        pid = (root / "runs" / run_id / "pid").read_text()
        return await _pid_gone(pid)

    return BackendEntry(make=lambda: DetachedTestBackend(root / "runs"), reattaches=True, gone=gone)


def slurm_entry(request: pytest.FixtureRequest, root: Path) -> BackendEntry:
    cluster: LocalSlurm = request.getfixturevalue("slurm_cluster")
    request.addfinalizer(lambda: settle(cluster))
    config = BackendConfig(
        "slurm",
        {
            "partition": cluster.partition,
            "slurm_conf": str(cluster.conf),
            "poll_s": 0.1,
            "gres": {"p": GRES},
        },
    )

    def job(run_id: str) -> dict[str, object] | None:
        return next((j for j in cluster.jobs() if str(j["job_id"]) == run_id), None)

    async def gone(run_id: str) -> bool:
        found = job(run_id)
        return (found is None or job_ended(found)) and not slurm_processes(run_id)

    async def time_limit_s(run_id: str) -> float | None:
        found = job(run_id)
        assert found is not None
        minutes = time_limit_min(found)
        return None if minutes is None else minutes * 60.0

    # A center of its own: a center's Slurm jobs are known by its id, and the cluster
    # holds earlier tests' jobs.
    center = make_center(f"CB{next(_CENTERS)}", pools={"p": ("ascend-910", 4, 500)})
    return BackendEntry(
        make=lambda: make_backend(config, root / "agent", center),
        reattaches=True,
        gone=gone,
        time_limit_s=time_limit_s,
    )


def slurm_processes(slurm_id: str) -> list[int]:
    """Processes on this machine that belong to Slurm job `slurm_id` (by the
    SLURM_JOB_ID in their environment)."""
    found = []
    mark = f"\0SLURM_JOB_ID={slurm_id}\0".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark in b"\0" + (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def docker_entry(request: pytest.FixtureRequest, root: Path) -> BackendEntry:
    engine: DockerEngine = request.getfixturevalue("docker_engine")
    engine.tag("icx/not-accepted:1")  # in the engine, not in the center's list
    request.addfinalizer(lambda: engine.untag("icx/not-accepted:1"))
    made: list[DockerBackend] = []

    def make() -> Backend:
        backend = DockerBackend(
            socket=engine.socket,
            images=(engine.image, "icx/absent:1"),  # accepted; the engine lacks the second
            workdir=root / "agent",
            stop_grace_s=2,
        )
        made.append(backend)
        return backend

    def close() -> None:
        for backend in made:
            backend.close()

    request.addfinalizer(close)

    async def gone(run_id: str) -> bool:
        with contextlib.closing(engine.client()) as client:
            try:
                client.api.inspect_container(run_id)
            except NotFound:
                return True
        return False

    return BackendEntry(
        make=make,
        reattaches=True,
        gone=gone,
        image=engine.image,
        bad_starts=(
            BadStart(
                changes={"image": "icx/absent:1"},
                error=InvalidArgument,
                match="^image icx/absent:1 is accepted here but not in the Docker engine$",
            ),
            BadStart(
                changes={"image": "icx/not-accepted:1"},
                error=InvalidArgument,
                match="^image icx/not-accepted:1 is not accepted at this center",
            ),
            BadStart(
                changes={"memory_mb": 10**9},
                error=InvalidArgument,
                match="^the job asks for 1000000000 MiB of memory; this center allows at most",
            ),
        ),
    )


ENTRIES: dict[str, Callable[[pytest.FixtureRequest, Path], BackendEntry]] = {
    "process": process_entry,
    "detached-test": detached_entry,
    "slurm": slurm_entry,
    "docker": docker_entry,
}


@pytest.fixture(params=sorted(ENTRIES))
def entry(request: pytest.FixtureRequest, tmp_path: Path) -> BackendEntry:
    name: str = request.param
    return ENTRIES[name](request, tmp_path / "backend")


class Output:
    """An OutputSink that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []

    async def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def text(self, stream: str) -> str:
        return b"".join(d for s, d in self.chunks if s == stream).decode()


def sh(
    entry: BackendEntry, tmp_path: Path, script: str, job_id: str = "j-1", **changes: Any
) -> LaunchRequest:
    """A request that runs `script` with POSIX sh (the jobs use only what busybox has)."""
    fields: dict[str, object] = {
        "claim_id": f"c-{job_id}",
        "job_id": job_id,
        "command": ("sh", "-c", script),
        "env": {"GREETING": "hello", "ICX_POOL_ID": "p"},
        "device_indices": (2, 3),
        "workdir": tmp_path / "jobs" / job_id,
        **changes,
    }
    if entry.image:
        fields.setdefault("image", entry.image)
    return LaunchRequest(**fields)  # type: ignore[arg-type]
