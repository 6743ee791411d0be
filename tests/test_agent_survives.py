"""One bad job or one bad order never stops the agent (issue 9, item 2).

An agent runs in this process against a real broker, as in tests/test_agent_clock.py.
What the broker refuses at its edge (a NUL byte in a command, a tenant that is no ledger
id or is a center's id) is handed to the agent as a hand-made order, as another broker
version or a bug would send it. A cancel is tried in each state a run passes through,
held there by `GatedBackend`: the process backend with gates the test opens.

Each time: the agent is still connected, the job ended with the right state and reason,
its devices are free again (in the agent's offer and in the offer the broker holds),
and the next job runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cli.federation import LocalFederation
from client import AsyncBrokerClient
from core import wire
from core.clock import SYSTEM
from core.states import JobState
from core.types import JobSpec
from icx.v1 import agent_pb2
from identity import Role
from node_agent import Agent
from node_agent._messages import LaunchOrder
from node_agent.backends import LaunchRequest, OutputSink, ProcessBackend, Run
from tests.conftest import make_center, wait_for_async

GATED_JOB = Path(__file__).parent / "jobs" / "gated.py"
CENTER = "CS"
DEVICES = 4


class GatedRun:
    def __init__(self, inner: Run, ended: asyncio.Event) -> None:
        self.inner = inner
        self._ended = ended

    @property
    def run_id(self) -> str:
        return self.inner.run_id

    async def wait(self) -> int:
        code = await self.inner.wait()
        await self._ended.wait()  # "ending": the process is gone, its end not reported
        return code

    async def kill(self) -> None:
        await self.inner.kill()


class GatedBackend:
    """The process backend, holding each launch before it returns the run (while
    `launch_gate` is clear: the job is launching) and each run's end after its process
    ended (while `end_gate` is clear: the job is ending). Both gates start open."""

    name = "process"

    def __init__(self) -> None:
        self.inner = ProcessBackend()
        self.launch_gate = asyncio.Event()
        self.launch_gate.set()
        self.end_gate = asyncio.Event()
        self.end_gate.set()
        self.pids: list[int] = []

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        run = await self.inner.launch(request, output)
        self.pids.append(int(run.run_id))
        await self.launch_gate.wait()
        return GatedRun(run, self.end_gate)

    async def list_runs(self) -> list[str]:
        return await self.inner.list_runs()

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        return await self.inner.reattach(run_id, output)

    async def aclose(self) -> None:
        await self.inner.aclose()


def held(agent: Agent, claim_id: str) -> tuple[JobState, str] | None:
    task = agent.runs.tasks.get(claim_id)
    return None if task is None else (task.state, task.reason)


async def launched(backend: GatedBackend, n: int) -> int:
    """Until the backend has started `n` processes; the last one's pid."""
    await wait_for_async(_async(lambda: len(backend.pids) == n), 20, f"launch {n}")
    return backend.pids[-1]


async def gone(pid: int) -> None:
    await wait_for_async(_async(lambda: not alive(pid)), 20, f"process {pid} to end")


async def cancel_arrives(agent: Agent, claim_id: str) -> None:
    await wait_for_async(_async(lambda: agent.runs.tasks[claim_id].cancelled), 10, "the cancel")


async def ends(agent: Agent, claim_id: str, state: JobState, reason: str) -> None:
    """Until the agent has ended the claim's job in `state`, saying `reason`."""
    await wait_for_async(
        _async(lambda: held(agent, claim_id) == (state, reason)),
        20,
        f"claim {claim_id} to end {state} ({reason})",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.asynccontextmanager
async def running_agent(
    fed: LocalFederation, workdir: Path, backend: GatedBackend | None = None
) -> AsyncIterator[Agent]:
    center = make_center(CENTER, pools={"p": ("ascend-910", DEVICES, 500)})
    # The center's member folder and the usage key its certificate binds.
    _, usage_key = fed.center_identity(CENTER, center.region)
    agent = Agent(
        center,
        fed.address,
        workdir=workdir,
        backend=backend,
        usage_key=usage_key,
        credentials=fed.credentials(Role.CENTER, CENTER),
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for_async(_async(agent.connected.is_set), 15, "the agent to connect")
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agent.stop()


def _async(predicate: Callable[[], object]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(predicate())

    return check


def quick(devices: int = 2) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=devices,
        estimated_s=60,
        command=(sys.executable, "-c", "print('next')"),
    )


def gated(out: Path) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=2,
        estimated_s=60,
        command=(sys.executable, str(GATED_JOB), str(out)),
    )


async def all_free_and_next_job_runs(agent: Agent, client: AsyncBrokerClient) -> None:
    """The agent is connected, its offer (its own and the one the broker holds) shows
    every device free, and a next job runs to its end."""
    assert agent.connected.is_set()
    [pool] = agent.offer().pools
    assert pool.devices_free == DEVICES

    async def broker_sees_all_free() -> bool:
        [center] = [c for c in await client.centers() if c.center.center_id == CENTER]
        return (
            center.connected
            and center.offer is not None
            and center.offer.pools[0].devices_free == DEVICES
        )

    await wait_for_async(broker_sees_all_free, 10, "the broker to see every device free")
    job = await client.submit(quick())
    await wait_for_async(
        lambda: _state(client, job.job_id, JobState.SUCCEEDED), 20, "the next job to succeed"
    )


async def _state(client: AsyncBrokerClient, job_id: str, state: JobState) -> bool:
    return (await client.get_job(job_id)).state == state


def reserve(claim_id: str, job_id: str, devices: int = 2) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(
        reserve=agent_pb2.Reserve(
            claim_id=claim_id,
            job_id=job_id,
            pool_id="p",
            devices=devices,
            lease_expires_at_ms=SYSTEM.now_ms() + 60_000,
        )
    )


def launch(claim_id: str, job_id: str, spec: JobSpec, tenant: str) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(
        launch=agent_pb2.Launch(
            claim_id=claim_id, job_id=job_id, spec=wire.spec_to_proto(spec), tenant=tenant
        )
    )


# ------------------------------------------------------------ what the broker refuses


def test_a_launch_with_a_nul_byte_fails_its_job_and_frees_its_devices(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """Once where the agent reads the spec (it does not check), once where the
    backend execs it (a spec that skipped the check: exec raises ValueError)."""

    async def scenario() -> None:
        async with (
            running_agent(federation, tmp_path / "work") as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            bad = launch("c-nul", "j-nul", quick(), "lab-a")
            bad.launch.spec.command[2] = "print('a\x00b')"
            # Reserve and launch in one step: the broker, which knows no such claim,
            # cancels it as soon as it hears the agent accepted it.
            agent.receive(reserve("c-nul", "j-nul"))
            agent.receive(bad)
            assert held(agent, "c-nul") == (
                JobState.FAILED,
                "cannot start the job: command[2] must not contain a NUL character, "
                "got \"print('a\\x00b')\"",
            )

            unchecked = quick()
            object.__setattr__(unchecked, "env", (("GREETING", "a\x00b"),))
            agent.receive(reserve("c-exec", "j-exec"))
            agent.runs.start_launch(
                dataclasses.replace(_order("c-exec", "j-exec", quick()), spec=unchecked)
            )
            await wait_for_async(
                _async(
                    lambda: (
                        held(agent, "c-exec")
                        == (JobState.FAILED, "cannot start the job: embedded null byte")
                    )
                ),
                10,
                "the launch to fail",
            )
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


def _order(claim_id: str, job_id: str, spec: JobSpec) -> LaunchOrder:
    return LaunchOrder(claim_id=claim_id, job_id=job_id, spec=spec, tenant="lab-a")


def test_a_tenant_the_ledger_refuses_fails_only_the_metering(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """A tenant that is no ledger id, or that is this center's own id: the run ends and
    is reported, the record cannot be signed, which is logged and counted."""
    out = tmp_path / "out"
    out.mkdir()

    async def scenario() -> None:
        async with (
            running_agent(federation, tmp_path / "work") as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            for claim_id, tenant in (("c-space", "bad tenant"), ("c-center", CENTER)):
                agent.receive(reserve(claim_id, f"j-{claim_id}"))
                agent.receive(launch(claim_id, f"j-{claim_id}", gated(out), tenant))
                # The broker knows no such claim: it cancels the run, which was metered.
                await ends(agent, claim_id, JobState.CANCELLED, "cancelled")
            failures = agent.metrics.registry.get_sample_value("icx_agent_metering_failures_total")
            assert failures == 2
            assert agent.outbox is not None and agent.outbox.pending() == []
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


# ------------------------------------------------------------- a cancel in each state


def test_a_cancel_while_reserved_frees_the_devices(
    federation: LocalFederation, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with (
            running_agent(federation, tmp_path / "work") as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            agent.receive(reserve("c-held", "j-held", devices=3))
            assert agent.runs.book.free("p") == 1
            agent.receive(agent_pb2.ConnectResponse(cancel=agent_pb2.Cancel(claim_id="c-held")))
            await wait_for_async(_async(lambda: "c-held" not in agent.runs.tasks), 10, "the cancel")
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


def test_a_cancel_while_launching_stops_the_job_once_started(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """The backend has started the process and not yet returned the run. When it
    returns within the settle time, the run is stopped and the job ends cancelled; when
    it does not, the cancel ends the job and frees the devices, and the run is stopped
    the moment the backend returns it."""
    out = tmp_path / "out"
    out.mkdir()

    async def scenario() -> None:
        backend = GatedBackend()
        backend.launch_gate.clear()
        async with (
            running_agent(federation, tmp_path / "work", backend) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            agent.runs.cancel_settle_s = 0.5
            for n, returns in enumerate((True, False), start=1):
                job = await client.submit(gated(out))
                pid = await launched(backend, n)
                [task] = [t for t in agent.runs.tasks.values() if t.job_id == job.job_id]
                assert task.launching
                assert (await client.get_job(job.job_id)).state == JobState.CLAIMED
                cancelled = await client.cancel(job.job_id)
                assert (cancelled.state, cancelled.reason) == (
                    JobState.CANCELLED,
                    "cancelled by the user",
                )
                await cancel_arrives(agent, task.claim_id)
                if returns:
                    backend.launch_gate.set()
                    await ends(agent, task.claim_id, JobState.CANCELLED, "cancelled")
                else:
                    reason = "cancelled (the launch did not return)"
                    await ends(agent, task.claim_id, JobState.CANCELLED, reason)
                    assert agent.runs.book.free("p") == DEVICES
                    assert alive(pid)
                    backend.launch_gate.set()
                await gone(pid)
                backend.launch_gate.clear()
            backend.launch_gate.set()
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


def test_a_cancel_while_running_stops_the_job(federation: LocalFederation, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()

    async def scenario() -> None:
        backend = GatedBackend()
        async with (
            running_agent(federation, tmp_path / "work", backend) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            job = await client.submit(gated(out))
            await wait_for_async(
                lambda: _state(client, job.job_id, JobState.RUNNING), 20, "the job to run"
            )
            await client.cancel(job.job_id)
            [task] = agent.runs.tasks.values()
            await ends(agent, task.claim_id, JobState.CANCELLED, "cancelled")
            assert not alive(backend.pids[0])
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


def test_a_cancel_while_ending_frees_the_devices_with_or_without_the_end(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """The job's process has ended and its end is not reported yet. When the backend
    reports it, the job ends cancelled; when the backend never does, the cancel ends
    the job itself after its settle time."""

    async def scenario() -> None:
        backend = GatedBackend()
        backend.end_gate.clear()
        async with (
            running_agent(federation, tmp_path / "work", backend) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            agent.runs.cancel_settle_s = 0.5
            for n, reported in enumerate((True, False), start=1):
                job = await client.submit(quick())
                pid = await launched(backend, n)
                await gone(pid)
                [task] = [t for t in agent.runs.tasks.values() if t.job_id == job.job_id]
                assert task.state == JobState.RUNNING
                await client.cancel(job.job_id)
                if reported:
                    await cancel_arrives(agent, task.claim_id)
                    backend.end_gate.set()
                    await ends(agent, task.claim_id, JobState.CANCELLED, "cancelled")
                else:
                    await ends(
                        agent,
                        task.claim_id,
                        JobState.CANCELLED,
                        "cancelled (the run did not report its end)",
                    )
                assert (await client.get_job(job.job_id)).state == JobState.CANCELLED
                backend.end_gate.clear()
            backend.end_gate.set()
            await all_free_and_next_job_runs(agent, client)

    asyncio.run(scenario())


def test_a_run_is_billed_from_when_its_backend_says_it_runs(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """A backend may hold the launch while the job waits in its engine's queue (Slurm):
    the run starts, for the bill, when the launch returns, not when it was asked."""
    out = tmp_path / "out"
    out.mkdir()

    async def scenario() -> None:
        backend = GatedBackend()
        backend.launch_gate.clear()
        async with (
            running_agent(federation, tmp_path / "work", backend) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            job = await client.submit(gated(out))
            await launched(backend, 1)
            [task] = [t for t in agent.runs.tasks.values() if t.job_id == job.job_id]
            # The engine holds the job until the agent's clock has moved on from the ask.
            asked_ms = agent.clock.now_ms()
            await wait_for_async(
                _async(lambda: agent.clock.now_ms() > asked_ms), 5, "the clock to move"
            )
            returned_ms = agent.clock.now_ms()
            backend.launch_gate.set()
            await wait_for_async(_async(lambda: task.row is not None), 10, "the run's row")
            assert task.row is not None and task.row.started_at_ms >= returned_ms
            await client.cancel(job.job_id)
            await ends(agent, task.claim_id, JobState.CANCELLED, "cancelled")

    asyncio.run(scenario())
