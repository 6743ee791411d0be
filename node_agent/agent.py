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
import os
from collections.abc import Awaitable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from core.clock import SYSTEM, Clock
from core.ids import shown
from core.types import CenterDescriptor, LogChunk, Offer, PoolId
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
from node_agent._metering import DEFAULT_INTERVAL_S, Interval, RunFacts, interval_record
from node_agent._outbox import Decision, Outbox
from node_agent._output import STREAM_MAX_BYTES
from node_agent._run_table import RunTable
from node_agent._runs import Runs
from node_agent.backends import Backend, CapacitySource, ProcessBackend
from node_agent.discovery import NvmlWatch, OwnRuns
from node_agent.metrics import AgentMetrics

log = logging.getLogger("icx.agent")

OFFER_TTL_MS = 30_000
RUN_TABLE = "runs.json"
OUTBOX = "usage-outbox"
CAPACITY_TIMEOUT_S = 10.0
"""How long one refresh of the devices in use outside icx may take (Slurm may be slow to
answer); a refresh that takes longer is dropped, and the book keeps what it knew."""


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
        metering_interval_s: int = DEFAULT_INTERVAL_S,
        devices: NvmlWatch | None = None,
    ) -> None:
        """`stream_max_bytes`: how much of each job's output goes to the broker (all of
        it stays in the job's folder); `metering_interval_s`: how often a running job's
        usage is signed and sent (as well as at its end); `devices`: the machine's GPUs
        as NVML sees them (`center.discover = "nvml"`), asked each tick which are in use
        outside icx."""
        backend = backend or ProcessBackend()
        if isinstance(backend, CapacitySource):
            center = _with_totals(center, backend.devices_total())
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
        if self.outbox is not None:
            self.metrics.usage_orphaned_chains.set(len(self.outbox.orphaned))
        self.runs = Runs(
            center=center,
            backend=backend,
            table=RunTable(workdir / RUN_TABLE),
            workdir=workdir,
            clock=clock,
            events=_Events(self),
            metrics=self.metrics,
            stream_max_bytes=stream_max_bytes,
            metering_interval_s=metering_interval_s,
        )
        self._seq = 0
        self._advertised_at_ms = 0
        # The sources of outside use (the backend's name, "nvml") that cannot tell now,
        # and the out-of-range indices each one named (each logged once).
        self._capacity_failing: set[str] = set()
        self._beyond: dict[str, frozenset[tuple[str, int]]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self.devices = devices
        if devices is not None:
            gpus = devices.devices
            self.runs.device_names = lambda pool, indices: gpus.gpu_uuids(PoolId(pool), indices)
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
            await self.refresh_capacity()  # never raises
            tg.create_task(self._housekeeping())
            tg.create_task(self.link.run(self._handler))

    async def stop(self) -> None:
        """Stop the jobs (the agent is shutting down; with the process backend they
        would die with it anyway)."""
        await self.runs.stop()
        await self.runs.backend.aclose()
        if self.devices is not None:
            self.devices.close()

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
        heartbeat, fence when cut off, meter the running jobs' intervals that have
        passed, forget ends past their retention; and refresh the devices in use outside
        icx in the background (one refresh at a time: a slow Slurm never delays the
        heartbeat, after which the broker would give up on the center)."""
        self._start_refresh()
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
        self.runs.meter_due(at)
        self.runs.forget_ended(at)

    def _start_refresh(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return  # the last one is still asking
        spawn = self._tg.create_task if self._tg is not None else asyncio.create_task
        self._refreshing = spawn(self._refresh_contained())

    async def _refresh_contained(self) -> None:
        # In the agent's task group: an error here must not end the agent.
        try:
            await self.refresh_capacity()
        except Exception:
            log.exception("refreshing the devices in use outside icx failed; the agent goes on")
            self.metrics.faults.labels(where="capacity").inc()

    async def refresh_capacity(self) -> None:
        """Ask what knows the center's devices (a Slurm backend, NVML) which are in use
        outside icx; the book withholds them, and a change is advertised at once. When a
        source cannot tell (an error, no answer in CAPACITY_TIMEOUT_S), the book keeps
        what it last said (logged once per source). Never raises."""
        changed = False
        backend = self.runs.backend
        if isinstance(backend, CapacitySource):
            # Slurm's figure is a count: the book places it away from its claims.
            use = await self._ask(backend.name, backend.outside_use())
            changed |= self._withhold(backend.name, use, counted=True)
        if self.devices is not None:
            watch, own = self.devices, self._own_runs()
            use = await self._ask(
                "nvml",
                asyncio.to_thread(lambda: {str(p): d for p, d in watch.outside(own).items()}),
            )
            changed |= self._withhold("nvml", use, counted=False)
        if changed:
            self.advertise()

    async def _ask(
        self, source: str, asking: Awaitable[Mapping[str, frozenset[int]]]
    ) -> Mapping[str, frozenset[int]] | None:
        try:
            use = await asyncio.wait_for(asking, CAPACITY_TIMEOUT_S)
        except Exception as exc:
            if source not in self._capacity_failing:
                why = str(exc) or f"no answer in {CAPACITY_TIMEOUT_S:g} s"
                log.warning("%s: cannot read the devices in use outside icx (keeping the "
                            "last): %s", source, why)  # fmt: skip
                self._capacity_failing.add(source)
            return None
        if source in self._capacity_failing:
            log.info("%s: the devices in use outside icx can be read again", source)
            self._capacity_failing.discard(source)
        return use

    def _withhold(
        self, source: str, use: Mapping[str, frozenset[int]] | None, *, counted: bool
    ) -> bool:
        """Give the book what `source` says is in use outside icx; True if it changed.
        Indices beyond a pool (the engine's layout grew since the agent started) are
        dropped, logged once."""
        if use is None:
            return False
        changed = False
        beyond: set[tuple[str, int]] = set()
        for pool in self.center.pools:
            total = self.runs.book.total[pool.pool_id]
            named = use.get(pool.pool_id, frozenset())
            indices = frozenset(i for i in named if 0 <= i < total)
            beyond.update((pool.pool_id, i) for i in named - indices)
            if self.runs.book.set_outside(pool.pool_id, indices, source=source, counted=counted):
                changed = True
                log.info(
                    "pool %s: %d devices in use outside icx (%s, %s)",
                    pool.pool_id,
                    len(indices),
                    ",".join(map(str, sorted(indices))) or "none",
                    source,
                )
        if beyond and frozenset(beyond) != self._beyond.get(source):
            log.warning(
                "%s names devices beyond the pools this agent started with (ignored; "
                "restart the agent to use them): %s",
                source,
                ", ".join(f"{p}[{i}]" for p, i in sorted(beyond)),
            )
        self._beyond[source] = frozenset(beyond)
        return changed

    def _own_runs(self) -> OwnRuns:
        """The processes that are icx's: the agent and its descendants (the process
        backend's runs, each in a session of its own under the agent), and containers by
        their ids, which their cgroup paths carry. Slurm's run ids are job numbers, not
        pids: an agent that drives Slurm runs on no GPU node and has no NVML to ask."""
        marks = {
            t.row.backend_run_id
            for t in self.runs.tasks.values()
            if t.row is not None and t.row.backend == "docker"
        }
        return OwnRuns(pids=frozenset({os.getpid()}), cgroups=frozenset(marks))

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

    def meter(self, run: RunFacts, interval: Interval) -> bool:
        """Sign what the run used over `interval` and send it, kept until the broker
        acknowledges it; False when the agent has no key or the run no tenant to bill, or
        when the record cannot be made, signed or kept (a tenant that is no ledger id or
        is this center's own id, a full disk): that is logged and counted
        (`icx_agent_metering_failures`), and the run goes on. Never raises."""
        if self.outbox is None or not run.tenant:
            return False
        try:
            entry = self.outbox.add(interval_record(self.center, run, interval))
            self.metrics.usage_orphaned_chains.set(len(self.outbox.orphaned))
        except Exception as exc:
            self.metrics.metering_failures.inc()
            log.error(
                "job %s (claim %s, tenant %s): cannot meter interval %d of the run: %s",
                run.job_id,
                run.claim_id,
                shown(run.tenant),
                interval.n,
                exc,
            )
            return False
        if entry is not None:  # else set aside: an earlier interval was refused
            self.link.send_usage(entry)
        return True


def _with_totals(center: CenterDescriptor, totals: Mapping[str, int]) -> CenterDescriptor:
    """The center with each pool's device total as its backend's engine counts it."""
    pools = tuple(
        dataclasses.replace(p, devices_total=totals[p.pool_id], devices_free=totals[p.pool_id])
        if p.pool_id in totals
        else p
        for p in center.pools
    )
    return dataclasses.replace(center, pools=pools)


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

    def metered(self, run: RunFacts, interval: Interval) -> bool:
        return self._agent.meter(run, interval)


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
        agent, outbox = self._agent, self._agent.outbox
        if outbox is None:
            return
        decision = outbox.decide(ack.record_id, accepted=ack.accepted)
        agent.metrics.usage_orphaned_chains.set(len(outbox.orphaned))
        if decision is Decision.LOGGED:
            log.info("usage %s logged at entry %d", ack.record_id, ack.index)
            waiting = outbox.successor(ack.record_id)
            if waiting is not None:  # refused before this one was in; it is now
                agent.link.send_usage(waiting)
        elif decision is Decision.WAITING:
            log.info("usage %s waits for the interval before it: %s", ack.record_id, ack.reason)
        elif decision is Decision.SET_ASIDE:
            log.error("usage %s refused by the broker: %s", ack.record_id, ack.reason)
