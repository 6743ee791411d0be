"""A center that runs its jobs through Slurm, end to end: a real broker, `icx agent run`
with `[backend] kind = "slurm"`, and a real Slurm (tests/slurm_cluster.py) that the
center's own users use too. What icx does is checked in Slurm's own view (squeue)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ledger import ledger_paths
from cli._output import EXIT_USAGE
from cli.federation import LocalFederation, center_toml
from cli.slurm_local import LocalSlurm
from client import BrokerClient
from core.states import JobState
from core.types import CenterDescriptor, Job, JobSpec
from icx.v1 import broker_pb2_grpc
from node_agent import Agent, runs_on_disk
from node_agent._run_table import RunRow, RunTable
from node_agent.backends import LaunchRequest, make_backend
from node_agent.backends._slurm import JOB_PREFIX, job_ended
from node_agent.config import parse_backend
from tests.conftest import RESTART_BROKER, make_center, run_icx, wait_centers, wait_for
from tests.slurm_cluster import settle, slurm_cluster  # noqa: F401 (a fixture)
from tests.test_agent_restart import noted_and_started, output_of, usage_records

TENANT = "lab-s"
POOL = "p"


@pytest.fixture
def cluster(slurm_cluster: LocalSlurm) -> Iterator[LocalSlurm]:  # noqa: F811
    settle(slurm_cluster)
    yield slurm_cluster
    settle(slurm_cluster)


@pytest.fixture
def federation(tmp_path: Path, cluster: LocalSlurm) -> Iterator[LocalFederation]:
    """A broker whose center expiry (15 s) outlasts an agent's restart."""
    with LocalFederation(root=tmp_path / "fed", broker_args=RESTART_BROKER) as fed:
        yield fed


@pytest.fixture
def client(federation: LocalFederation) -> Iterator[BrokerClient]:
    with federation.client(TENANT) as c:
        yield c


def slurm_center(center_id: str) -> CenterDescriptor:
    # The config says 8 devices; the agent offers the 4 that Slurm has.
    return make_center(center_id, pools={POOL: ("ascend-910", 8, 36_000)})


def start_slurm_agent(fed: LocalFederation, center: CenterDescriptor, cluster: LocalSlurm) -> None:
    fed.start_agent(center, backend_toml=cluster.backend_toml([POOL], poll_s=0.1))


def gated(gate: Path, devices: int = 1) -> JobSpec:
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.1; done; echo finished"
    return JobSpec(accelerator="any", devices=devices, estimated_s=60, command=("sh", "-c", script))


def icx_jobs(cluster: LocalSlurm) -> list[dict[str, object]]:
    """icx's jobs as Slurm sees them, not ended."""
    return [j for j in cluster.jobs() if str(j["name"]).startswith(JOB_PREFIX) and not job_ended(j)]


def free_devices(client: BrokerClient, center_id: str) -> int | None:
    for c in client.centers():
        if c.center.center_id == center_id and c.offer is not None:
            return sum(p.devices_free for p in c.offer.pools)
    return None


def ended(client: BrokerClient, job_id: str) -> Job:
    job: Job = wait_for(
        lambda: (j := client.get_job(job_id)).state.terminal and j, 30, f"job {job_id} to end"
    )
    return job


def test_the_centers_own_slurm_jobs_shrink_the_offer_and_icx_never_overfills_slurm(
    federation: LocalFederation,
    client: BrokerClient,
    cluster: LocalSlurm,
    tmp_path: Path,
) -> None:
    center = slurm_center("CS")
    start_slurm_agent(federation, center, cluster)
    wait_centers(client, 1)
    assert wait_for(lambda: free_devices(client, "CS") == 4, 10, "4 devices offered")

    # The center's own users take 3 of the 4 GPUs, straight through Slurm.
    own = cluster.run(
        "sbatch", "--parsable", "--job-name=center-user", f"--partition={cluster.partition}",
        "--gres=gpu:fake:3", "--output=/dev/null", "--wrap", "sleep 300",
    )  # fmt: skip
    assert own.returncode == 0, own.stderr
    own_id = own.stdout.strip()
    wait_for(lambda: free_devices(client, "CS") == 1, 15, "the offer to shrink to 1 device")

    gate = tmp_path / "go"
    # Two devices wanted, one free: the matcher says why, and nothing goes to Slurm.
    wide = client.submit(gated(gate, devices=2)).job_id
    wait_for(lambda: client.get_job(wide).explanation, 20, "the matcher's reason")
    assert client.get_job(wide).state == JobState.QUEUED
    narrow = client.submit(gated(gate, devices=1)).job_id
    wait_for(lambda: output_of(client, narrow) == "started\n", 20, "the 1-device job running")
    # Slurm's own view: that one icx job, running; none submitted to wait for devices.
    [running] = icx_jobs(cluster)
    assert (running["name"], running["job_state"]) == (f"{JOB_PREFIX}{narrow}", "RUNNING")
    assert client.get_job(wide).state == JobState.QUEUED

    # The center's job ends: its devices are offered again, and the 2-device job runs.
    cluster.run("scancel", own_id)
    wait_for(lambda: output_of(client, wide) == "started\n", 30, "the 2-device job running")
    in_slurm = icx_jobs(cluster)
    assert sorted(str(j["name"]) for j in in_slurm) == sorted(
        f"{JOB_PREFIX}{j}" for j in (wide, narrow)
    )
    assert [j["job_state"] for j in in_slurm] == ["RUNNING", "RUNNING"]
    gate.touch()
    for job_id in (wide, narrow):
        assert ended(client, job_id).state == JobState.SUCCEEDED
        assert output_of(client, job_id) == "started\nfinished\n"
    wait_for(lambda: free_devices(client, "CS") == 4, 15, "all 4 devices offered again")


def test_an_agent_killed_while_its_slurm_job_runs_finds_it_again_and_meters_it_once(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
    cluster: LocalSlurm,
    tmp_path: Path,
) -> None:
    center = slurm_center("CK")
    start_slurm_agent(federation, center, cluster)
    wait_centers(stub, 1)
    gate = tmp_path / "go"
    job_id = client.submit(gated(gate, devices=2)).job_id
    noted_and_started(client, job_id, 30)
    [slurm_job] = icx_jobs(cluster)

    federation.agents["CK"].kill()  # SIGKILL: the agent dies, its Slurm job does not
    assert [j["job_id"] for j in icx_jobs(cluster)] == [slurm_job["job_id"]]
    start_slurm_agent(federation, center, cluster)
    table = federation.root / "work" / "CK" / "runs.json"
    wait_for(
        lambda: [r["log_epoch"] for r in runs_on_disk(table)] == [1],
        20,
        "the restarted agent to re-attach",
    )
    gate.touch()

    job = ended(client, job_id)
    assert (job.state, job.attempts, job.exit_code) == (JobState.SUCCEEDED, 1, 0)
    assert output_of(client, job_id) == "started\nfinished\n"  # followed on, nothing twice
    assert icx_jobs(cluster) == []
    [slurm_end] = [j for j in cluster.jobs() if j["job_id"] == slurm_job["job_id"]]
    assert slurm_end["job_state"] == "COMPLETED"
    outbox = federation.root / "work" / "CK" / "usage-outbox"
    wait_for(lambda: not list(outbox.glob("*.entry")), 20, "the usage to be acknowledged")
    [signed] = usage_records(client, job_id)  # metered once
    assert (signed.record.producer, signed.record.devices) == ("CK", 2)
    federation.stop()
    db, _ = ledger_paths(federation.db)
    audit = run_icx("ledger", "audit", "--db", str(db))
    assert audit.returncode == 0, audit.stderr


def test_an_agent_for_a_partition_slurm_does_not_have_refuses_to_start(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    center = slurm_center("CP")
    config = tmp_path / "CP.toml"
    config.write_text(
        center_toml(center) + cluster.backend_toml([POOL]).replace('"icx"', '"nope"', 1)
    )
    before = cluster.jobs()
    done = subprocess.run(
        [
            sys.executable, "-m", "cli.main", "agent", "run", "--insecure",
            "--config", str(config), "--broker", "127.0.0.1:1",
            "--workdir", str(tmp_path / "work"),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_USAGE
    assert done.stderr == (
        "icx: error: backend.partition 'nope': no such partition in Slurm (it has icx)\n"
    )
    assert cluster.jobs() == before  # nothing submitted


def slurm_agent(cluster: LocalSlurm, workdir: Path, center_id: str) -> Agent:
    """An agent on the Slurm backend, built as `icx agent run` builds it, whose broker
    is nowhere (these cases are the agent's own)."""
    center = slurm_center(center_id)
    config = parse_backend(tomllib.loads(cluster.backend_toml([POOL], poll_s=0.1)))
    backend = make_backend(config, workdir, center)
    return Agent(center, "127.0.0.1:1", workdir=workdir, backend=backend)


def test_a_slurm_that_does_not_answer_never_delays_the_heartbeat(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """The devices in use outside icx are asked for beside the housekeeping tick, one
    question at a time: with slurmctld stopped, each tick (its heartbeat, fencing,
    metering) still takes no time, and the book keeps what it knew."""
    agent = slurm_agent(cluster, tmp_path / "work", "CH")
    [ctld] = [p for p, n in zip(cluster.pids, ("munged", "slurmctld", "slurmd"), strict=True)
              if n == "slurmctld"]  # fmt: skip

    async def scenario() -> None:
        await agent.refresh_capacity()
        assert agent.runs.book.free(POOL) == 4
        os.kill(ctld, signal.SIGSTOP)
        try:
            for _ in range(3):
                await asyncio.wait_for(agent.tick(), 1.0)
            assert agent.runs.book.free(POOL) == 4
        finally:
            os.kill(ctld, signal.SIGCONT)

    asyncio.run(scenario())


def test_outside_use_beyond_the_pools_the_agent_started_with_is_dropped_and_logged_once(
    cluster: LocalSlurm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Slurm's layout may grow after the agent started (a node added): indices beyond
    the pool are left out, said once, and the refresh (and the agent) goes on. The
    growth is made here by an agent whose book counts 2 devices, with the center's own
    job on Slurm's devices 2 and 3 of 4."""
    held = cluster.run(
        "sbatch", "--parsable", "--gres=gpu:fake:2", "--output=/dev/null", "--wrap", "sleep 300",
    )  # fmt: skip
    first = cluster.run(
        "sbatch", "--parsable", "--gres=gpu:fake:2", "--output=/dev/null", "--wrap", "sleep 300",
    )  # fmt: skip
    assert held.returncode == first.returncode == 0
    wait_for(
        lambda: [j["job_state"] for j in cluster.jobs() if not job_ended(j)] == ["RUNNING"] * 2,
        20,
        "both jobs running, on Slurm's devices 0,1 and 2,3",
    )
    cluster.run("scancel", held.stdout.strip())
    wait_for(
        lambda: (
            [str(j["job_id"]) for j in cluster.jobs() if not job_ended(j)] == [first.stdout.strip()]
        ),
        20,
        "the second job alone, on Slurm's devices 2 and 3",
    )
    agent = slurm_agent(cluster, tmp_path / "work", "CG")
    agent.runs.book.total[POOL] = 2  # as when the agent started on a 2-device layout

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, "icx.agent"):
            await agent.refresh_capacity()
            await agent.refresh_capacity()
        assert agent.runs.book.outside(POOL) == frozenset()

    asyncio.run(scenario())
    beyond = [r.getMessage() for r in caplog.records if "beyond the pools" in r.getMessage()]
    assert beyond == [
        "slurm names devices beyond the pools this agent started with (ignored; restart the "
        "agent to use them): p[2], p[3]"
    ]


def test_a_run_that_cannot_be_taken_up_after_a_restart_is_stopped_in_slurm(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """A run in the table that the restarted agent cannot take up (here its devices do
    not fit the pool) is left out of the Hello, so the broker requeues its job: its
    Slurm job is cancelled, never left to run beside the requeued one."""
    work = tmp_path / "work"
    agent = slurm_agent(cluster, work, "CR")

    async def scenario() -> None:
        run = await agent.runs.backend.launch(
            LaunchRequest(
                claim_id="c-1", job_id="j-1", command=("sh", "-c", "sleep 300"),
                env={"ICX_POOL_ID": POOL}, device_indices=(0,), workdir=work / "j-1",
            ),
            discard,
        )  # fmt: skip
        RunTable(work / "runs.json").put(
            RunRow(
                claim_id="c-1", job_id="j-1", pool_id=POOL, device_indices=(9,),
                backend="slurm", backend_run_id=run.run_id, tenant=TENANT,
                started_at_ms=1, state=JobState.RUNNING,
            )
        )  # fmt: skip
        restarted = slurm_agent(cluster, work, "CR")
        await restarted.runs.restore(asyncio.create_task)
        assert restarted.runs.tasks == {}
        [job] = [j for j in cluster.jobs() if str(j["job_id"]) == run.run_id]
        assert job_ended(job), job["job_state"]
        await agent.runs.backend.aclose()
        await restarted.runs.backend.aclose()

    asyncio.run(scenario())


async def discard(stream: str, data: bytes) -> None:
    """Output nobody reads."""


def test_a_slurm_job_that_ends_while_its_agent_is_away_is_billed_to_slurms_end(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
    cluster: LocalSlurm,
    tmp_path: Path,
) -> None:
    """The agent dies, the job ends in Slurm, the agent comes back later: the usage ends
    when Slurm ended the job, not when the agent found it over."""
    center = slurm_center("CE")
    start_slurm_agent(federation, center, cluster)
    wait_centers(stub, 1)
    gate = tmp_path / "go"
    job_id = client.submit(gated(gate, devices=1)).job_id
    noted_and_started(client, job_id, 30)
    [slurm_job] = icx_jobs(cluster)
    federation.agents["CE"].kill()
    gate.touch()
    wait_for(lambda: icx_jobs(cluster) == [], 30, "the job to end in Slurm")
    [slurm_end] = [j for j in cluster.jobs() if j["job_id"] == slurm_job["job_id"]]
    end_s = int(slurm_end["end_time"])
    # The agent stays away past the second Slurm ended the job in.
    wait_for(lambda: time.time() > end_s + 2, 10, "the agent's absence to outlast the end")
    restarted_ms = int(time.time() * 1000)
    start_slurm_agent(federation, center, cluster)
    assert ended(client, job_id).state == JobState.SUCCEEDED
    wait_for(lambda: usage_records(client, job_id), 20, "the usage to be logged")
    [signed] = usage_records(client, job_id)
    assert signed.record.end_ms <= (end_s + 1) * 1000 < restarted_ms
