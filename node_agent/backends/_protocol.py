"""What the agent asks of a backend: start a job, and find its runs again after the agent
restarted. Slurm jobs and containers outlive the agent; local processes do not.

A run has an id that the backend chooses and the agent keeps in its run table (on disk,
before it reports the launch), so that a restarted agent can ask for the run again by id.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

OutputSink = Callable[[str, bytes], Awaitable[None]]
"""Where a run's output goes: (stream, data), stream "stdout" or "stderr"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    claim_id: str
    job_id: str
    command: Sequence[str]
    env: Mapping[str, str]
    device_indices: Sequence[int]
    workdir: Path
    # The job spec's container and limits: a container backend enforces them (see
    # core.types.JobSpec); a backend without containers runs only jobs with no image.
    image: str = ""
    memory_mb: int = 0
    millicpus: int = 0
    network: bool = False
    # The devices as the machine names them (NVML's GPU UUIDs), for CUDA_VISIBLE_DEVICES;
    # empty: the pool's indices are the machine's (devices from the config).
    visible_devices: Sequence[str] = ()


class Run(Protocol):
    """One job started by a backend."""

    @property
    def run_id(self) -> str:
        """The backend's id of this run, by which `Backend.reattach` finds it again."""
        ...

    async def wait(self) -> int:
        """Wait for the end (after the output was delivered, or a bounded time for it);
        the exit code, negative for a signal. Raising means the run is lost: the agent
        stops it and fails the job."""
        ...

    async def kill(self) -> None:
        """Stop the job and everything it started; returns once it is stopped."""
        ...


def engine_end_ms(run: Run) -> int | None:
    """When the engine says the run ended, for a backend whose runs outlive the agent
    (an optional `ended_at_ms` attribute of its runs): a run that ended while the agent
    was away ended then, not when the agent came back. None: the agent's clock decides."""
    at = getattr(run, "ended_at_ms", None)
    return at if isinstance(at, int) and not isinstance(at, bool) else None


class Backend(Protocol):
    name: str

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        """Start the job and return once it runs. Raises OSError when it cannot start
        (no such program, not executable), before anything runs; the agent takes any
        other exception as a failed launch too (the job fails with its message)."""
        ...

    async def list_runs(self) -> list[str]:
        """The ids of the runs this backend started (in this life of the agent or an
        earlier one) that it can still tell about: running, or ended and not yet waited
        for. A backend whose runs die with the agent lists only its live ones."""
        ...

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        """The run `run_id`, followed again: its output from where it was last delivered,
        its end through `wait`. Raises CannotReattach (naming the run and why) when the
        backend cannot, e.g. because the run died with the previous agent."""
        ...

    async def aclose(self) -> None:
        """Stop following runs: the agent is stopping. The runs are left as they are (the
        next agent takes them up, or they died with this one); what the backend had under
        way for them ends before this returns, not in the event loop's final cancel."""
        ...


@runtime_checkable
class CapacitySource(Protocol):
    """Optional, for a backend whose engine knows the center's devices (Slurm): the
    agent takes each pool's total from it at start, and on each housekeeping tick the
    devices in use outside icx, which it never reserves or offers
    (`DeviceBook.set_outside`). Indices are the DeviceBook's, 0..total-1 per pool. The
    process backend has none: its center's devices are the config's."""

    def devices_total(self) -> Mapping[str, int]:
        """Pool id -> devices the engine has for it (fixed for the agent's life)."""
        ...

    async def outside_use(self) -> Mapping[str, frozenset[int]]:
        """Pool id -> indices in use outside icx or unavailable (a pool left out: none).
        Raising means the engine cannot tell now: the agent keeps what it knew."""
        ...


def job_environment(request: LaunchRequest) -> dict[str, str]:
    """What a job sees: the agent's PATH and the like, the spec's env, its devices."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "TMPDIR")}
    env.update(request.env)
    devices = ",".join(str(i) for i in request.device_indices)
    env["ICX_DEVICES"] = devices
    env["CUDA_VISIBLE_DEVICES"] = ",".join(request.visible_devices) or devices
    env["ICX_JOB_ID"] = request.job_id
    return env
