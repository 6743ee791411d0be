"""The agent reads time only from its clock: fencing, retention of ended runs, offer
expiry and the times in usage records. These tests run an agent in this process on a
ManualClock against a real broker, and move its clock instead of sleeping past real
timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from cli.federation import LocalFederation
from client import AsyncBrokerClient
from core.clock import ManualClock
from core.money import charge_minor
from core.states import JobState
from core.types import JobSpec
from identity import Role
from ledger import SignedRecord, canonical
from ledger.records import energy_wh
from node_agent import Agent, RunTable
from node_agent._runs import FINISHED_RETENTION_MS
from node_agent.agent import OFFER_TTL_MS
from tests.conftest import make_center, wait_for_async

GATED_JOB = Path(__file__).parent / "jobs" / "gated.py"
PRICE = 36_000


@contextlib.asynccontextmanager
async def running_agent(
    fed: LocalFederation, workdir: Path, clock: ManualClock
) -> AsyncIterator[Agent]:
    center = make_center("CM", pools={"p": ("ascend-910", 4, PRICE)})
    # The center's member folder and the usage key its certificate binds.
    _, usage_key = fed.center_identity(center.center_id, center.region)
    agent = Agent(
        center,
        fed.address,
        workdir=workdir,
        usage_key=usage_key,
        credentials=fed.credentials(Role.CENTER, center.center_id),
        clock=clock,
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for_async(agent.connected.is_set, 15, "the agent to connect")
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agent.stop()


def gated(out: Path) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=2,
        estimated_s=60,
        command=(sys.executable, str(GATED_JOB), str(out)),
    )


def started(out: Path) -> list[int]:
    return [int(p.name.split(".")[1]) for p in out.glob("*.started")]


def launched(agent: Agent, out: Path) -> bool:
    """The job started and its launch returned (its run in the table): the job writes its
    file before the launch returns, and until then a fence finds no run to stop."""
    rows = [t.row for t in agent.runs.tasks.values() if t.state == JobState.RUNNING]
    return bool(started(out)) and len(rows) == 1 and rows[0] is not None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_cut_off_agent_stops_its_jobs_once_its_clock_passes_half_the_expiry(
    federation: LocalFederation, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    clock = ManualClock()
    broker = federation.broker
    assert broker is not None

    async def scenario() -> None:
        async with (
            running_agent(federation, tmp_path / "work", clock) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            await client.submit(gated(out))
            await wait_for_async(lambda: launched(agent, out), 20, "the job launched")
            [pid] = started(out)
            # Half the 3 s center expiry the broker announced.
            assert agent.link.fence_after_ms == 1_500
            broker.proc.send_signal(signal.SIGSTOP)  # silent, its port still open
            try:
                clock.advance(1_499)
                await agent.tick()
                assert alive(pid) and agent.runs.running() == 1
                clock.advance(1)
                await agent.tick()
                assert not alive(pid)  # stopped before the broker can requeue it
                await wait_for_async(lambda: not agent.runs.held(), 5, "the job given back")
                assert RunTable(tmp_path / "work" / "runs.json").rows == {}
            finally:
                broker.proc.send_signal(signal.SIGCONT)

    asyncio.run(scenario())


def test_no_broker_listening_is_not_silence_and_stops_no_job(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """A dead broker refuses connections: nobody counts this center's silence, and a
    restarted broker grants a full expiry, so the agent keeps its jobs (a stopped broker,
    whose port still accepts, is silence: see the test above)."""
    out = tmp_path / "out"
    out.mkdir()
    clock = ManualClock()
    broker = federation.broker
    assert broker is not None

    async def scenario() -> None:
        async with (
            running_agent(federation, tmp_path / "work", clock) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            await client.submit(gated(out))
            await wait_for_async(lambda: launched(agent, out), 20, "the job launched")
            [pid] = started(out)
            broker.kill()  # the port is closed: connections are refused
            await wait_for_async(lambda: not agent.connected.is_set(), 10, "the stream to break")
            for _ in range(4):  # 4 s on the agent's clock, past the 1.5 s fence
                clock.advance(1_000)
                await wait_for_async(lambda: agent.link.silent_ms() == 0, 10, "a refused reconnect")
                await agent.tick()
            assert alive(pid) and agent.runs.running() == 1

    asyncio.run(scenario())


def test_record_times_retention_and_offers_follow_the_agents_clock(
    federation: LocalFederation, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    clock = ManualClock()
    workdir = tmp_path / "work"

    async def scenario() -> None:
        async with (
            running_agent(federation, workdir, clock) as agent,
            AsyncBrokerClient(federation.address, federation.credentials()) as client,
        ):
            offer = agent.offer()
            assert (offer.issued_at_ms, offer.expires_at_ms) == (
                clock.now_ms(),
                clock.now_ms() + OFFER_TTL_MS,
            )
            job = await client.submit(gated(out))
            await wait_for_async(lambda: launched(agent, out), 20, "the job launched")
            started_at_ms = clock.now_ms()
            clock.advance(5_000)
            (out / "go").touch()
            await wait_for_async(
                lambda: [h.state for h in agent.runs.held()] == [JobState.SUCCEEDED],
                20,
                "the job to end",
            )

            # Metered on the agent's clock: exactly five seconds on two devices, as the
            # broker's ledger logged it.
            [held] = agent.runs.held()
            outbox = agent.outbox
            assert outbox is not None
            await wait_for_async(lambda: not outbox.pending(), 20, "the usage acknowledged")
            bundle = await client.prove(record_id=f"CM/{held.claim_id}")
            r = SignedRecord.from_json(canonical.decode(bundle.leaf)).record
            assert (r.job_id, r.start_ms, r.end_ms) == (
                job.job_id,
                started_at_ms,
                started_at_ms + 5_000,
            )
            assert (r.wall_s, r.devices, r.device_s) == (5, 2, 10)
            assert r.energy_wh == energy_wh(2, 300, 5, 1250)
            assert r.charge_minor == charge_minor(10, PRICE) == 100

            # Held (for the Hello) for the retention period after its end, then forgotten.
            table = workdir / "runs.json"
            clock.advance(FINISHED_RETENTION_MS)
            await agent.tick()
            assert [h.job_id for h in agent.runs.held()] == [job.job_id]
            assert list(RunTable(table).rows) == [held.claim_id]
            clock.advance(1)
            await agent.tick()
            assert agent.runs.held() == []
            assert RunTable(table).rows == {}

    asyncio.run(scenario())
