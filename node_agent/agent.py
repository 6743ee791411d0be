"""The node agent: a center's side of the exchange. It puts together the link (the
stream to the broker, `_link`), the runs (claims, launches, supervision, fencing,
`_runs`), metering (`_metering`) and the usage outbox (`_outbox`), and paces them: one
housekeeping tick per heartbeat.

One bad job or one bad message never stops the agent: the runs contain a job's failures
(`_runs`), the link a message's (`_link`), metering a record's (`meter`), and the
housekeeping tick its own; each is logged and counted in the agent's metrics.

The agent is the authority on its free devices (DeviceBook). If it is cut off from the
broker for half the center expiry the broker announced, it stops its jobs: by the time
the broker gives up on the center and requeues them, they are no longer running here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from core.clock import SYSTEM, Clock
from core.ids import shown
from core.types import CenterDescriptor, LogChunk, Offer
from icx.v1 import agent_pb2
from identity import Credentials
from ledger import SignerKey
from node_agent._link import Link
from node_agent._messages import (
    CancelOrder,
    ClaimAnswer,
    HeldClaim,
    JobUpdate,
    LaunchOrder,
    LaunchRefusal,
    ReserveOrder,
    UsageAck,
    Welcome,
)
from node_agent._metering import RunFacts, usage_record
from node_agent._outbox import Outbox
from node_agent._output import STREAM_MAX_BYTES
from node_agent._run_table import RunTable
from node_agent._runs import Runs
from node_agent.backends import Backend, ProcessBackend
from node_agent.metrics import AgentMetrics

log = logging.getLogger("icx.agent")

OFFER_TTL_MS = 30_000
RUN_TABLE = "runs.json"
OUTBOX = "usage-outbox"


class Agent:
    """One center's agent. `workdir` holds the jobs' folders, the run table and the
    outbox, and must survive restarts for a restarted agent to re-attach and deliver."""

    def __init__(
        self,
        center: CenterDescriptor,
        broker: str,
        *,
        workdir: Path,
        backend: Backend | None = None,
        usage_key: SignerKey | None = None,
        credentials: Credentials | None = None,
        clock: Clock = SYSTEM,
        stream_max_bytes: int = STREAM_MAX_BYTES,
    ) -> None:
        """`stream_max_bytes`: how much of each job's output goes to the broker (all of
        it stays in the job's folder)."""
        self.center = center
        self.workdir = workdir
        # The center's membership (mutual TLS to the broker); None: a development broker
        # that runs --insecure.
        self.credentials = credentials
        self.clock = clock
        self.metrics = AgentMetrics()
        for pool in center.pools:
            self.metrics.devices_total.labels(pool=pool.pool_id).set(pool.devices_total)
        self.link = Link(
            center,
            broker,
            usage_key=usage_key,
            credentials=credentials,
            clock=clock,
            metrics=self.metrics,
        )
        # Signed usage the broker has not yet acknowledged; none without a key.
        self.outbox = Outbox(workdir / OUTBOX, usage_key) if usage_key else None
        self.runs = Runs(
            center=center,
            backend=backend or ProcessBackend(),
            table=RunTable(workdir / RUN_TABLE),
            workdir=workdir,
            clock=clock,
            events=_Events(self),
            metrics=self.metrics,
            stream_max_bytes=stream_max_bytes,
        )
        self._seq = 0
        self._advertised_at_ms = 0
        self._tg: asyncio.TaskGroup | None = None
        self._handler = _Handler(self)

    @property
    def connected(self) -> asyncio.Event:
        """Set while the stream to the broker is up."""
        return self.link.connected

    async def run(self) -> None:
        """Take up the runs an earlier life left, then serve the broker forever."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await self.runs.restore(self._spawn)
            tg.create_task(self._housekeeping())
            tg.create_task(self.link.run(self._handler))

    async def stop(self) -> None:
        """Stop the jobs (the agent is shutting down; with the process backend they
        would die with it anyway)."""
        await self.runs.stop()

    def offer(self) -> Offer:
        book = self.runs.book
        for pool in self.center.pools:
            self.metrics.devices_free.labels(pool=pool.pool_id).set(book.free(pool.pool_id))
        self.metrics.jobs_running.set(self.runs.running())
        self._seq += 1
        at = self.clock.now_ms()
        return Offer(
            center_id=self.center.center_id,
            seq=self._seq,
            issued_at_ms=at,
            expires_at_ms=at + OFFER_TTL_MS,
            pue_milli=self.center.pue_milli,
            grid_g_co2_per_kwh=self.center.grid_g_co2_per_kwh,
            pools=tuple(
                dataclasses.replace(p, devices_free=book.free(p.pool_id)) for p in self.center.pools
            ),
        )

    async def tick(self) -> None:
        """One heartbeat's housekeeping: lapse unlaunched reservations, re-advertise,
        heartbeat, fence when cut off, forget ends past their retention."""
        at = self.clock.now_ms()
        # Re-advertise on a change, and well before the last offer expires, so that an
        # idle center stays in matching.
        if self.runs.lapse(at) or at - self._advertised_at_ms > OFFER_TTL_MS // 3:
            self.advertise()
        self.link.send_heartbeat()
        if self.link.cut_off():
            silent_ms = self.link.silent_ms()
            stopped = await self.runs.fence()
            if stopped:
                log.warning(
                    "nothing heard from the broker for %d ms: stopped %d jobs "
                    "(they will be requeued)",
                    silent_ms,
                    stopped,
                )
        self.runs.forget_ended(at)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.link.heartbeat_s)
            try:
                await self.tick()
            except Exception:
                # A failing tick (a run table on a full disk, say) must not end the agent:
                # the next one tries again.
                log.exception("housekeeping failed; the agent goes on")
                self.metrics.faults.labels(where="housekeeping").inc()

    def advertise(self) -> None:
        """Send the current offer (on every change, and before the last one expires)."""
        self._advertised_at_ms = self.clock.now_ms()
        self.link.send_offer(self.offer())

    def receive(self, msg: agent_pb2.ConnectResponse) -> None:
        """Take one message as if the broker had sent it on the stream (a test sends
        what a real broker refuses at its edge). Requires a running agent."""
        self.link.receive(msg, self._handler)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None, "the agent is not running"
        return self._tg.create_task(coro)

    def meter(self, run: RunFacts) -> bool:
        """Sign what the run used and send it, kept until the broker acknowledges it;
        False when the agent has no key or the run no tenant to bill, or when the record
        cannot be made, signed or kept (a tenant that is no ledger id or is this center's
        own id, a full disk): that is logged and counted (`icx_agent_metering_failures`),
        and the run's end stands. Never raises."""
        if self.outbox is None or not run.tenant:
            return False
        try:
            entry = self.outbox.add(usage_record(self.center, run))
        except Exception as exc:
            self.metrics.metering_failures.inc()
            log.error(
                "job %s (claim %s, tenant %s): cannot meter the run: %s",
                run.job_id,
                run.claim_id,
                shown(run.tenant),
                exc,
            )
            return False
        self.link.send_usage(entry)
        return True


class _Events:
    """The runs' events, forwarded to the broker."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def update(self, update: JobUpdate) -> None:
        self._agent.link.send_update(update)

    def output(self, chunk: LogChunk) -> None:
        self._agent.link.send_output(chunk)

    def changed(self) -> None:
        self._agent.advertise()

    def ended(self, run: RunFacts) -> bool:
        return self._agent.meter(run)


class _Handler:
    """The broker's messages, handed to the runs and the outbox."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def held(self) -> list[HeldClaim]:
        return self._agent.runs.held()

    def welcomed(self, welcome: Welcome) -> None:
        agent = self._agent
        agent.runs.stale(welcome.stale_claim_ids)
        agent.advertise()
        for entry in agent.outbox.pending() if agent.outbox else ():
            agent.link.send_usage(entry)

    def reserve(self, order: ReserveOrder) -> ClaimAnswer:
        return self._agent.runs.reserve(order)

    def launch(self, order: LaunchOrder) -> None:
        self._agent.runs.start_launch(order)

    def launch_refused(self, refusal: LaunchRefusal) -> None:
        self._agent.runs.refuse_launch(refusal.claim_id, refusal.job_id, refusal.reason)

    def cancel(self, order: CancelOrder) -> None:
        self._agent.runs.start_cancel(order)

    def usage_acknowledged(self, ack: UsageAck) -> None:
        outbox = self._agent.outbox
        if outbox is None or not outbox.acknowledged(ack.record_id):
            return
        if ack.accepted:
            log.info("usage %s logged at entry %d", ack.record_id, ack.index)
        else:
            log.error("usage %s refused by the broker: %s", ack.record_id, ack.reason)
