"""How a center runs a job. The agent talks to a Backend; `ProcessBackend` runs each job
as a local process group. Slurm, Docker and others implement the same two methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("icx.agent.backend")

OutputSink = Callable[[str, bytes], Awaitable[None]]  # (stream, data)

_PR_SET_PDEATHSIG = 1
_KILL_GRACE_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    job_id: str
    command: Sequence[str]
    env: Mapping[str, str]
    device_indices: Sequence[int]
    workdir: Path


class Run(Protocol):
    async def wait(self) -> int:
        """Wait for the end (after all output was delivered); the exit code, negative
        for a signal."""
        ...

    async def kill(self) -> None:
        """Stop the job and everything it started."""
        ...


class Backend(Protocol):
    name: str

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run: ...


def job_environment(request: LaunchRequest) -> dict[str, str]:
    """What a job sees: the agent's PATH and the like, the spec's env, its devices."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "TMPDIR")}
    env.update(request.env)
    devices = ",".join(str(i) for i in request.device_indices)
    env["ICX_DEVICES"] = devices
    env["CUDA_VISIBLE_DEVICES"] = devices
    env["ICX_JOB_ID"] = request.job_id
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If the agent dies (even by SIGKILL) the job dies too, so that a requeued job
    # never runs twice at the same time.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProcessRun:
    def __init__(self, proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
        self.proc = proc
        self._pumps = pumps

    async def wait(self) -> int:
        await asyncio.gather(*self._pumps)
        return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), _KILL_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def _resolve(command: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """The program to run, or OSError saying why it cannot run (before anything forks)."""
    program = command[0]
    if "/" in program:
        path = program if os.path.isabs(program) else str(cwd / program)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(errno.ENOENT, "no executable file", program)
        return program
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", program)
    return found


class ProcessBackend:
    """Each job a process group in its own session, output piped back.

    The job dies with the agent (PR_SET_PDEATHSIG). With util-linux's `setpriv` the
    death signal is set by a tiny exec in the child, so the agent never runs Python
    between fork and exec and Python can use its fast spawn path; without it, a
    pre-exec hook in the forked agent sets it.
    """

    name = "process"

    def __init__(self) -> None:
        self._setpriv = shutil.which("setpriv")

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        request.workdir.mkdir(parents=True, exist_ok=True)
        env = job_environment(request)
        program = _resolve(request.command, env, request.workdir)
        argv = [program, *request.command[1:]]
        hook = None
        if self._setpriv is not None:
            argv = [self._setpriv, "--pdeathsig", "KILL", "--", *argv]
        else:
            hook = _die_with_parent
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=request.workdir,
            env=env,
            start_new_session=True,
            preexec_fn=hook,
        )
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", output)),
        ]
        return ProcessRun(proc, pumps)


async def _pump(reader: asyncio.StreamReader, stream: str, output: OutputSink) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        await output(stream, data)
