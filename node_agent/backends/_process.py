"""The process backend: each job a local process group in its own session, its output
piped back. Its runs die with the agent, so it cannot re-attach after a restart: the
agent reports such a run lost and the broker requeues its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.backends._protocol import LaunchRequest, OutputSink, Run, job_environment
from node_agent.errors import CannotReattach

_PR_SET_PDEATHSIG = 1
_KILL_GRACE_S = 2.0
# After the job's process ended, how long its output may still drain: a process that
# left the job's group (setsid) can hold the pipes open for ever, and the job's end
# (and its devices) must not wait for it.
_DRAIN_S = 2.0
_READ_BYTES = 65536


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If the agent dies (even by SIGKILL) the job dies too, so that a requeued job
    # never runs twice at the same time.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol for `create_subprocess_exec`, which also says when the
    process exited. `Process.wait()` returns only once the pipes are closed as well,
    and a process the job left behind can hold them open for ever."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class ProcessRun:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
        pumps: list[asyncio.Task[None]],
    ) -> None:
        self.proc = proc
        self._transport = transport
        self._protocol = protocol
        self._pumps = pumps

    @property
    def run_id(self) -> str:
        return str(self.proc.pid)

    @property
    def exited(self) -> bool:
        return self._protocol.exited.is_set()

    async def wait(self) -> int:
        await self._protocol.exited.wait()
        # The job is over: what it left running in its group goes too, so that nothing
        # of it still holds the devices when they are given to the next job.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        _, pending = await asyncio.wait(self._pumps, timeout=_DRAIN_S)
        for pump in pending:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._transport.close()  # our ends of the pipes, whoever holds the others
        for pump in self._pumps:
            if not pump.cancelled() and pump.exception() is not None:
                raise RuntimeError("the job's output could not be delivered") from pump.exception()
        code = self._transport.get_returncode()
        assert code is not None
        return code

    async def kill(self) -> None:
        if self._protocol.exited.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._protocol.exited.wait(), _KILL_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self._protocol.exited.wait()


def resolve_program(command: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
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
        self._live: dict[str, ProcessRun] = {}

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        request.workdir.mkdir(parents=True, exist_ok=True)
        env = job_environment(request)
        program = resolve_program(request.command, env, request.workdir)
        argv = [program, *request.command[1:]]
        hook = None
        if self._setpriv is not None:
            argv = [self._setpriv, "--pdeathsig", "KILL", "--", *argv]
        else:
            hook = _die_with_parent
        loop = asyncio.get_running_loop()
        # What asyncio.create_subprocess_exec does, with a protocol that tells the exit.
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(limit=_READ_BYTES, loop=loop),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=request.workdir,
            env=env,
            start_new_session=True,
            preexec_fn=hook,
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", output)),
        ]
        run = ProcessRun(proc, transport, protocol, pumps)
        self._live[run.run_id] = run
        return run

    async def list_runs(self) -> list[str]:
        for run_id in [i for i, r in self._live.items() if r.exited]:
            del self._live[run_id]
        return sorted(self._live)

    async def aclose(self) -> None:
        """Nothing to stop: the runs' processes are the agent's children, and their
        ends are followed by the runs' own waits."""

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        raise CannotReattach(
            f"run {run_id}: the process backend's runs die with the agent that started them"
        )


async def _pump(reader: asyncio.StreamReader, stream: str, output: OutputSink) -> None:
    while True:
        data = await reader.read(_READ_BYTES)
        if not data:
            return
        await output(stream, data)
