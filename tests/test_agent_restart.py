"""A restarted agent takes up the runs it launched: it reads its run table, asks the
backend to re-attach to each run, lists them in its Hello and meters each run once. A
backend that cannot re-attach (the process backend: its jobs die with the agent) reports
the run lost, and the broker requeues the job.

The runs that outlive the agent here are the detached test backend's
(tests/agents/detached.py, for tests only): real processes in their own sessions."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import Child, LocalFederation, center_toml
from client import BrokerClient
from core.states import JobState
from core.types import CenterDescriptor, Job, JobEvent, JobSpec, LogChunk
from icx.v1 import broker_pb2_grpc
from ledger import SignedRecord, canonical
from ledger.records import charge_minor
from node_agent import runs_on_disk
from tests.conftest import RESTART_BROKER, make_center, wait_centers, wait_for

GATED_JOB = Path(__file__).parent / "jobs" / "gated.py"
TENANT = "lab-r"


def gated_spec(out: Path) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=2,
        estimated_s=60,
        command=(sys.executable, str(GATED_JOB), str(out)),
    )


# `python -m tests.agents.detached` takes no identity: this runs its main() with the
# center's credentials (its member folder, the first argument) given to the Agent.
_DETACHED_WITH_IDENTITY = """
import functools, pathlib, sys
from identity import Credentials
import tests.agents.detached as detached
credentials = Credentials.load(pathlib.Path(sys.argv.pop(1)))
detached.Agent = functools.partial(detached.Agent, credentials=credentials)
sys.exit(detached.main())
"""


def start_detached_agent(fed: LocalFederation, center: CenterDescriptor) -> Child:
    """As `fed.start_agent`, but the agent runs its jobs on the detached test backend."""
    config = fed.root / "centers" / f"{center.center_id}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # The center's membership and the usage key its certificate binds (CENTER.key).
    identity, _ = fed.center_identity(center.center_id, center.region)
    config.write_text(center_toml(center, key_file=f"{center.center_id}.key"))
    name = f"agent-{center.center_id}"
    log_path = fed.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-c", _DETACHED_WITH_IDENTITY, str(identity),
            "--config", str(config),
            "--broker", fed.address,
            "--workdir", str(work(fed, center)),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    child = Child(name=name, proc=proc, log_path=log_path, log_file=log_file)
    fed.agents[center.center_id] = child
    return child


def work(fed: LocalFederation, center: CenterDescriptor) -> Path:
    return fed.root / "work" / center.center_id


def run_table(fed: LocalFederation, center: CenterDescriptor) -> list[dict[str, object]]:
    return runs_on_disk(work(fed, center) / "runs.json")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def started_pids(out: Path, job_id: str) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in out.glob(f"{job_id}.*.started"))


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A broker whose center expiry (15 s) outlasts an agent's restart by far, so that
    what a test sees comes from the restarted agent's Hello, not from the expiry."""
    with LocalFederation(root=tmp_path / "fed", broker_args=RESTART_BROKER) as fed:
        yield fed


@pytest.fixture
def client(federation: LocalFederation) -> Iterator[BrokerClient]:
    with federation.client(TENANT) as c:
        yield c


@pytest.fixture
def detached_runs(federation: LocalFederation) -> Iterator[None]:
    """Detached runs outlive every agent: stop whatever is left of them."""
    yield
    for pid_file in (federation.root / "work").glob("*/detached/*/pid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def output_of(client: BrokerClient, job_id: str) -> str:
    items = client.watch(job_id, include_logs=True, follow=False)
    return "".join(i.data.decode() for i in items if isinstance(i, LogChunk))


def noted_and_started(client: BrokerClient, job_id: str, timeout_s: float) -> None:
    """Until the job's agent reports it running and its first output is in. An agent
    writes a run to its table before it reports it running, so a kill after this finds the
    run again; output alone can come first (a Slurm job writes before squeue lists it
    running, and the launch returns only then), and a kill then leaves a run that no
    claim holds, which the restarted agent stops."""
    wait_for(
        lambda: (
            client.get_job(job_id).state == JobState.RUNNING
            and "started" in output_of(client, job_id)
        ),
        timeout_s,
        "the job noted running by its agent, and its first output",
    )


def usage_records(client: BrokerClient, job_id: str) -> list[SignedRecord]:
    size = int(client.checkpoint().splitlines()[1])
    found = []
    for index in range(size):
        entry = canonical.decode(client.prove(index=index).leaf)
        if isinstance(entry, dict) and entry.get("type") == "usage":
            signed = SignedRecord.from_json(entry)
            if signed.record.job_id == job_id:
                found.append(signed)
    return found


def test_a_restarted_agent_reattaches_to_its_run_and_meters_it_once(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
    detached_runs: None,
    tmp_path: Path,
) -> None:
    center = make_center("CA", pools={"p": ("ascend-910", 4, 36_000)})
    agent = start_detached_agent(federation, center)
    wait_centers(stub, 1)
    out = tmp_path / "out"
    out.mkdir()
    job_id = client.submit(gated_spec(out)).job_id

    def running() -> Job | None:
        job = client.get_job(job_id)
        return job if job.state == JobState.RUNNING and started_pids(out, job_id) else None

    job = wait_for(running, 20, "the job running")
    [pid] = started_pids(out, job_id)
    [row] = run_table(federation, center)
    # In the table, with what a restart needs, by the time the broker heard it runs.
    assert {k: row[k] for k in ("job_id", "pool_id", "device_indices")} == {
        "job_id": job_id,
        "pool_id": "p",
        "device_indices": list(job.device_indices),
    }
    assert (row["backend"], row["tenant"], row["state"]) == ("detached-test", TENANT, "running")
    wait_for(lambda: "started" in output_of(client, job_id), 10, "the job's first output")

    agent.kill()  # SIGKILL: the agent dies, its run does not
    assert alive(pid)
    start_detached_agent(federation, center)
    wait_for(
        lambda: [r["log_epoch"] for r in run_table(federation, center)] == [1],
        20,
        "the restarted agent to re-attach",
    )
    wait_centers(stub, 1)
    (out / "go").touch()

    job = wait_for(lambda: (j := client.get_job(job_id)).state.terminal and j, 20, "the job to end")
    assert (job.state, job.attempts, job.exit_code) == (JobState.SUCCEEDED, 1, 0)
    assert started_pids(out, job_id) == [pid]  # it ran once, through the restart
    text = output_of(client, job_id)
    assert text == f"started {job_id}\nfinished {job_id}\n"  # followed on, nothing twice

    outbox = work(federation, center) / "usage-outbox"
    wait_for(lambda: not list(outbox.glob("*.entry")), 20, "the usage to be acknowledged")
    [signed] = usage_records(client, job_id)
    r = signed.record
    assert (r.record_id, r.consumer, r.devices) == (f"CA/{row['claim_id']}", TENANT, 2)
    assert r.start_ms == row["started_at_ms"]  # metered from the launch before the restart
    assert r.charge_minor == charge_minor(r.device_s, 36_000)
    [ended] = run_table(federation, center)
    assert (ended["state"], ended["metered"], ended["exit_code"]) == ("succeeded", True, 0)
    assert ended["ended_at_ms"] == r.end_ms


def test_a_restarted_agent_on_the_process_backend_reports_its_run_lost(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
    tmp_path: Path,
) -> None:
    center = make_center("CA", pools={"p": ("ascend-910", 4, 500)})
    agent = federation.start_agent(center)
    wait_centers(stub, 1)
    out = tmp_path / "out"
    out.mkdir()
    job_id = client.submit(gated_spec(out)).job_id
    noted_and_started(client, job_id, 20)  # in the run table, not only started
    [first] = started_pids(out, job_id)
    [row] = run_table(federation, center)
    assert row["backend"] == "process"

    agent.kill()
    wait_for(lambda: not alive(first), 10, "the job to die with its agent")
    restarted = federation.start_agent(center)
    wait_for(lambda: len(started_pids(out, job_id)) == 2, 30, "the job to run again")
    (out / "go").touch()

    job = wait_for(lambda: (j := client.get_job(job_id)).state.terminal and j, 20, "the job to end")
    assert (job.state, job.attempts) == (JobState.SUCCEEDED, 2)
    # Requeued because the restarted agent's Hello did not hold it.
    events = [i for i in client.watch(job_id, follow=False) if isinstance(i, JobEvent)]
    assert "requeued: center CA no longer holds the job" in [e.message for e in events]
    [again] = run_table(federation, center)  # the lost run left the table
    assert again["backend_run_id"] != row["backend_run_id"]
    log = restarted.log_path.read_text()
    assert (
        f"job {job_id} lost across the restart (claim {row['claim_id']}): run "
        f"{row['backend_run_id']}: the process backend's runs die with the agent that "
        "started them"
    ) in log
