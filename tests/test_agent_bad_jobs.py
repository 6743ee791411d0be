"""Jobs that go wrong at a real agent (`icx agent run`, a child process) on a real broker:
a program that does not exist, a job killed by a signal, a job that writes ~50 MB at
once. Each fails or ends only itself: the agent stays connected, the job's state and
reason are right, its devices are free again and the next job runs. The big job's
output is all in its folder at the center; the broker has its capped part with the
truncation note; the agent's memory stays bounded.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.states import JobState
from core.types import Job, JobSpec, LogChunk
from tests.conftest import make_center, wait_centers, wait_for

CENTER = make_center("CB", pools={"p": ("ascend-910", 4, 500)})
BROKER_CAP = 1024 * 1024  # the broker's default --max-log-bytes
BROKER_NOTE = (
    f"\n[icx: output truncated at {BROKER_CAP} bytes; the center keeps all of it in the "
    "job's folder]\n"
).encode()
LINE = b"0123456789abcdef" * 4 + b"\n"
BIG_BLOCKS = 48  # of 16,384 lines: 51 MB


def spec(*command: str) -> JobSpec:
    return JobSpec(accelerator="any", devices=2, estimated_s=60, command=command)


@pytest.fixture
def agent(federation: LocalFederation, client: BrokerClient) -> Iterator[int]:
    """The agent's process id, once its center is connected."""
    child = federation.start_agent(CENTER)
    wait_centers(client, 1)
    yield child.pid


def ended(client: BrokerClient, job: Job) -> Job:
    done = wait_for(
        lambda: (j := client.get_job(job.job_id)).state.terminal and j, 30, "the job to end"
    )
    assert isinstance(done, Job)
    return done


def all_free_and_next_job_runs(federation: LocalFederation, client: BrokerClient) -> None:
    child = federation.agents[CENTER.center_id]
    assert child.alive(), f"the agent exited; see {child.log_path}"

    def all_free() -> bool:
        [center] = client.centers()
        return (
            center.connected
            and center.offer is not None
            and center.offer.pools[0].devices_free == 4
        )

    wait_for(all_free, 10, "the broker to see every device free")
    nxt = ended(client, client.submit(spec(sys.executable, "-c", "print('next')")))
    assert nxt.state == JobState.SUCCEEDED


def test_a_program_that_does_not_exist_fails_its_job(
    federation: LocalFederation, client: BrokerClient, agent: int
) -> None:
    job = ended(client, client.submit(spec("no-such-program-here", "--flag")))
    assert (job.state, job.reason, job.exit_code) == (
        JobState.FAILED,
        "cannot start 'no-such-program-here': not found on PATH",
        None,
    )
    all_free_and_next_job_runs(federation, client)


def test_a_job_killed_by_a_signal_fails_saying_which(
    federation: LocalFederation, client: BrokerClient, agent: int
) -> None:
    job = ended(client, client.submit(spec("sh", "-c", "kill -KILL $$")))
    assert (job.state, job.reason, job.exit_code) == (JobState.FAILED, "killed by SIGKILL", -9)
    all_free_and_next_job_runs(federation, client)


def broker_metrics(federation: LocalFederation) -> dict[str, str]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{federation.metrics_port}/metrics", timeout=5
    ) as reply:
        text = reply.read().decode()
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("icx_"))


def vm_kib(pid: int, field: str) -> int:
    """A figure of /proc/PID/status, in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_job_writing_50_mb_keeps_it_all_at_the_center_and_bounded_elsewhere(
    federation: LocalFederation, client: BrokerClient, agent: int
) -> None:
    # Warm up: the first job's launch loads what every launch needs.
    ended(client, client.submit(spec(sys.executable, "-c", "print('warm')")))
    rss_before = vm_kib(agent, "VmRSS")
    script = (
        "import sys\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        f"block = {LINE!r} * 16384\n"
        f"for _ in range({BIG_BLOCKS}):\n"
        "    sys.stdout.buffer.write(block)\n"
    )
    job = ended(client, client.submit(spec(sys.executable, "-c", script)))
    assert (job.state, job.reason) == (JobState.SUCCEEDED, "exit 0")
    expected = LINE * 16384 * BIG_BLOCKS

    folder = federation.root / "work" / CENTER.center_id / job.job_id
    assert (folder / "icx-stdout.log").read_bytes() == expected
    assert (folder / "icx-stderr.log").read_bytes() == b"to stderr\n"

    chunks = [
        c
        for c in client.watch(job.job_id, include_logs=True, follow=False)
        if isinstance(c, LogChunk)
    ]
    kept = b"".join(c.data for c in chunks)
    assert len(kept) == BROKER_CAP + len(BROKER_NOTE)
    assert kept.endswith(BROKER_NOTE)
    stdout = b"".join(c.data for c in chunks if c.stream == "stdout")
    assert stdout.endswith(BROKER_NOTE)
    assert expected.startswith(stdout[: -len(BROKER_NOTE)])

    # Paced under the broker's rate: what it did not keep was past the cap, not dropped.
    dropped = broker_metrics(federation)
    assert 'icx_log_chunks_dropped_total{reason="rate"}' not in dropped
    assert float(dropped['icx_log_chunks_dropped_total{reason="cap"}']) >= 1

    # A sanity bound, not a measurement: buffering the output would take 50 MB.
    peak_growth_kib = vm_kib(agent, "VmHWM") - rss_before
    rss_after = vm_kib(agent, "VmRSS")
    assert peak_growth_kib < 24 * 1024, (rss_before, rss_after, peak_growth_kib)
    all_free_and_next_job_runs(federation, client)
