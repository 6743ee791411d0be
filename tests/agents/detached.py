"""FOR TESTS ONLY: a backend whose runs outlive the agent, and an agent that uses it.

The process backend's jobs die with the agent, so it cannot show a restarted agent
re-attaching. Slurm jobs and containers will outlive the agent but cannot run here. This
backend stands in for them with real processes: each run is a small wrapper process in
its own session (no death signal), tracked by files in its folder, so it survives the
agent's SIGKILL and a new agent can follow it again. It is not an option of `icx agent
run`: a run that outlives a dead agent is not fenced, so the broker could requeue a job
that still runs here; a real backend that outlives the agent must stop its runs itself.

    <root>/<run_id>/pid         the wrapper's pid, also the run's process group
    <root>/<run_id>/stdout      the job's output, appended as it runs
    <root>/<run_id>/stderr
    <root>/<run_id>/delivered   {"stdout": n, "stderr": n}: bytes handed to the agent
    <root>/<run_id>/exit        the exit code (negative for a signal), once it ended
    <root>/<run_id>/collected   present once an agent waited for the end

    python -m tests.agents.detached --config C --broker B --workdir W

runs an agent on this backend (runs under W/detached), like `icx agent run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from node_agent import Agent, CannotReattach, serve_agent
from node_agent.backends import LaunchRequest, OutputSink, Run, job_environment, resolve_program
from node_agent.config import load_center, load_usage_key

POLL_S = 0.05
KILL_GRACE_S = 2.0

# The wrapper: runs the job with its output to files, records the exit code, and stays
# alive on SIGTERM (sent to the whole group) until the job has ended.
_WRAPPER = """
import os, signal, subprocess, sys
folder, argv = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGTERM, lambda *_: None)
with open(os.path.join(folder, "stdout"), "ab") as out, \\
        open(os.path.join(folder, "stderr"), "ab") as err:
    code = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
tmp = os.path.join(folder, "exit.tmp")
with open(tmp, "w") as f:
    f.write(str(code))
os.replace(tmp, os.path.join(folder, "exit"))
"""


class DetachedTestBackend:
    name = "detached-test"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        request.workdir.mkdir(parents=True, exist_ok=True)
        env = job_environment(request)
        program = resolve_program(request.command, env, request.workdir)
        run_id = f"{request.job_id}-{secrets.token_hex(4)}"
        folder = self.root / run_id
        folder.mkdir(parents=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRAPPER, str(folder), program, *request.command[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=request.workdir,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        (folder / "pid").write_text(str(proc.pid))
        return DetachedRun(run_id, folder, output, proc)

    async def list_runs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if (p / "pid").exists() and not (p / "collected").exists()
        )

    async def aclose(self) -> None:
        """Nothing to stop: each run is followed by its own wait."""

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        folder = self.root / run_id
        if not (folder / "pid").exists() or (folder / "collected").exists():
            raise CannotReattach(f"run {run_id}: no such run in {self.root}")
        return DetachedRun(run_id, folder, output, None)


class DetachedRun:
    def __init__(
        self,
        run_id: str,
        folder: Path,
        output: OutputSink,
        proc: asyncio.subprocess.Process | None,
    ) -> None:
        self._run_id = run_id
        self._folder = folder
        self._output = output
        self._proc = proc  # the wrapper, while this agent is its parent (asyncio reaps it)
        self._pgid = int((folder / "pid").read_text())
        self._follow = asyncio.create_task(self._follow_output())  # owned: awaited in wait

    @property
    def run_id(self) -> str:
        return self._run_id

    async def wait(self) -> int:
        await self._follow
        if self._proc is not None:
            await self._proc.wait()  # the wrapper exits right after writing the code
        code = int((self._folder / "exit").read_text()) if self._ended() else -signal.SIGKILL
        (self._folder / "collected").touch()
        return code

    async def kill(self) -> None:
        if self._ended():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._follow), KILL_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pgid, signal.SIGKILL)
            await self._follow
        # The wrapper writes the exit code a moment before it exits: the run is over only
        # once the wrapper is gone too.
        if self._proc is not None:
            await self._proc.wait()
        else:
            await _exited(self._pgid)

    def _ended(self) -> bool:
        return (self._folder / "exit").exists()

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        try:
            stat = Path(f"/proc/{self._pgid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie waits for its reaper

    async def _follow_output(self) -> None:
        """Hand over new output until the run ended and all of it was handed over."""
        marks = self._folder / "delivered"
        delivered = json.loads(marks.read_text()) if marks.exists() else {}
        offsets = {s: int(delivered.get(s, 0)) for s in ("stdout", "stderr")}
        while True:
            done = self._ended() or not self._alive()
            for stream, offset in offsets.items():
                path = self._folder / stream
                if not path.exists():
                    continue
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read()
                if data:
                    await self._output(stream, data)
                    offsets[stream] = offset + len(data)
                    marks.write_text(json.dumps(offsets))
            if done:
                return
            await asyncio.sleep(POLL_S)


async def _exited(pid: int) -> None:
    """Once process `pid` (not this one's child) has exited: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def main() -> int:
    p = argparse.ArgumentParser(description="a node agent on the detached test backend")
    p.add_argument("--config", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Path(args.config)
    workdir = Path(args.workdir)
    agent = Agent(
        load_center(config),
        args.broker,
        workdir=workdir,
        usage_key=load_usage_key(config),
        backend=DetachedTestBackend(workdir / "detached"),
    )
    asyncio.run(serve_agent(agent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
