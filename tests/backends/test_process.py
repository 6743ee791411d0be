"""What only the process backend does: it ends a run with its process group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from node_agent.backends import LaunchRequest, ProcessBackend
from tests.backends.conftest import Output


def test_the_process_backend_ends_a_run_with_its_process(tmp_path: Path) -> None:
    """What the job left running in its group is stopped at its end; a process that
    left the group and holds the output open delays the end only by a bounded drain."""
    script = (
        "import subprocess\n"
        "left = subprocess.Popen(['sleep', '60'])\n"
        "escaped = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(left.pid, escaped.pid, flush=True)\n"
    )
    request = LaunchRequest(
        claim_id="c-1",
        job_id="j-1",
        command=(sys.executable, "-c", script),
        env={},
        device_indices=(0,),
        workdir=tmp_path / "j-1",
    )

    async def scenario() -> None:
        out = Output()
        run = await ProcessBackend().launch(request, out)
        assert await run.wait() == 0
        left, escaped = map(int, out.text("stdout").split())
        try:
            assert not alive(left)
            assert alive(escaped)  # out of reach of the job's group, as documented
        finally:
            os.kill(escaped, signal.SIGKILL)

    asyncio.run(scenario())


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
