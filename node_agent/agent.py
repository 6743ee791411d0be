"""The node agent: dials out to its broker, keeps one stream open, advertises the
center's capacity, decides claims, runs jobs through a backend and reports them.

The agent is the authority on its free devices (DeviceBook). If it is cut off from the
broker for half the center expiry the broker announced, it stops its jobs: by the time
the broker gives up on the center and requeues them, they are no longer running here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from core import wire
from core.errors import IcxError
from core.states import JobState
from core.types import CenterDescriptor, Offer, Pool
from icx.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from ledger import SignedRecord, SignerKey, UsageRecord, sign_records
from ledger.records import carbon_g as usage_carbon_g
from ledger.records import charge_minor
from ledger.records import energy_wh as usage_energy_wh
from node_agent.backend import Backend, LaunchRequest, OutputSink, ProcessBackend, Run
from node_agent.devices import DeviceBook, Refused
from node_agent.metrics import AgentMetrics

log = logging.getLogger("icx.agent")

VERSION = "0.1.0"
OFFER_TTL_MS = 30_000
FINISHED_RETENTION_MS = 10 * 60_000
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True, kw_only=True)
class Task:
    """A claim's job at this center."""

    claim_id: str
    job_id: str
    state: JobState = JobState.CLAIMED
    run: Run | None = None
    exit_code: int | None = None
    ended_at_ms: int = 0
    log_seq: int = 0
    cancelled: bool = False
    tenant: str = ""
    pool_id: str = ""
    devices: int = 0
    started_at_ms: int = 0
    # Stopped because the broker went silent: given back (or left out of the next Hello)
    # so that the broker requeues it.
    fenced: bool = False


class Agent:
    def __init__(
        self,
        center: CenterDescriptor,
        broker: str,
        *,
        workdir: Path,
        backend: Backend | None = None,
        usage_key: SignerKey | None = None,
    ) -> None:
        self.center = center
        self.broker = broker
        self.workdir = workdir
        self.backend: Backend = backend or ProcessBackend()
        self.book = DeviceBook(center)
        self.usage_key = usage_key
        # Signed usage records the broker has not yet acknowledged: resent on reconnect.
        # Kept on disk too (one file per record under the workdir), so that a restarted
        # agent still delivers what it signed before it died.
        self.outbox = workdir / "usage-outbox"
        self.unacked: dict[str, bytes] = self._load_outbox()
        self.metrics = AgentMetrics()
        for pool in center.pools:
            self.metrics.devices_total.labels(pool=pool.pool_id).set(pool.devices_total)
        self.tasks: dict[str, Task] = {}
        self._seq = 0
        self._out: asyncio.Queue[agent_pb2.ConnectRequest] | None = None
        self._heartbeat_s = 1.0
        self._fence_after_ms = 5_000
        # When the broker was last heard from (any message, heartbeat answers included).
        self._last_heard_ms = now_ms()
        self._advertised_at_ms = 0
        self._changed = asyncio.Event()
        self.connected = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    # ------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, and reconnect with capped exponential back-off, forever."""
        backoff = 0.2
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._housekeeping())
            while True:
                try:
                    await self._session()
                    backoff = 0.2
                except grpc.aio.AioRpcError as exc:
                    if "Connection refused" in (exc.details() or ""):
                        # Nothing listens at the broker's address: no broker is counting
                        # this center's silence, and a restarted one grants a full expiry
                        # from its start. Only silence from a live broker means fencing.
                        self._last_heard_ms = now_ms()
                    level = (
                        logging.ERROR if exc.code() != grpc.StatusCode.UNAVAILABLE else logging.INFO
                    )
                    log.log(level, "broker %s: %s %s", self.broker, exc.code().name, exc.details())
                except Exception:
                    # Whatever broke this connection, the agent outlives it: its jobs keep
                    # running and it reconnects.
                    log.exception("stream to broker %s failed", self.broker)
                finally:
                    if self.connected.is_set():
                        log.info("disconnected from broker %s", self.broker)
                    self.connected.clear()
                    self.metrics.connected.set(0)
                    self._out = None
                await asyncio.sleep(backoff * (0.5 + random.random()))
                # Reconnect well within the grace a restarted broker gives (its expiry).
                backoff = min(backoff * 2, 5.0, self._fence_after_ms / 2000)

    async def stop(self) -> None:
        for task in list(self.tasks.values()):
            if task.run is not None and task.state == JobState.RUNNING:
                await task.run.kill()

    async def _session(self) -> None:
        out: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
        out.put_nowait(agent_pb2.ConnectRequest(hello=self._hello()))

        async def write(call: Any) -> None:
            while True:
                await call.write(await out.get())

        async with grpc.aio.insecure_channel(self.broker, options=CHANNEL_OPTIONS) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect()
            writer = asyncio.create_task(write(call))  # owned here: cancelled when we leave
            try:
                await self._read(call, out)
            finally:
                writer.cancel()
                # The writer fails when the call has ended; the reader has said why.
                with contextlib.suppress(
                    asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError
                ):
                    await writer

    async def _read(self, call: Any, out: asyncio.Queue[agent_pb2.ConnectRequest]) -> None:
        async for msg in call:
            self._last_heard_ms = now_ms()
            kind = msg.WhichOneof("msg")
            if kind == "welcome":
                self._welcome(msg.welcome, out)
            elif kind == "reserve":
                self._reserve(msg.reserve)
            elif kind == "launch":
                await self._launch(msg.launch)
            elif kind == "cancel":
                await self._cancel(msg.cancel)
            elif kind == "usage_ack":
                self._usage_ack(msg.usage_ack)

    def _hello(self) -> agent_pb2.Hello:
        held = []
        for t in self.tasks.values():
            h = agent_pb2.HeldClaim(
                claim_id=t.claim_id, job_id=t.job_id, state=wire.state_to_proto(t.state)
            )
            if t.exit_code is not None:
                h.exit_code = t.exit_code
            held.append(h)
        return agent_pb2.Hello(
            center=wire.center_to_proto(self.center),
            agent_version=VERSION,
            held=held,
            usage_key=self.usage_key.verifier.text() if self.usage_key else "",
        )

    def _welcome(
        self, welcome: agent_pb2.Welcome, out: asyncio.Queue[agent_pb2.ConnectRequest]
    ) -> None:
        self._heartbeat_s = max(0.05, welcome.heartbeat_interval_ms / 1000)
        self._fence_after_ms = welcome.center_expiry_ms // 2
        for claim_id in welcome.stale_claim_ids:
            task = self.tasks.get(claim_id)
            if task is not None and task.state in (JobState.CLAIMED, JobState.RUNNING):
                log.info(
                    "claim %s (job %s) is stale at the broker: stopping", claim_id, task.job_id
                )
                self._spawn(self._cancel(agent_pb2.Cancel(claim_id=claim_id)))
            elif task is not None:
                self.tasks.pop(claim_id, None)
        self._out = out
        self.connected.set()
        self.metrics.connected.set(1)
        log.info("connected to broker %s as center %s", self.broker, self.center.center_id)
        self._advertise()
        for entry in self.unacked.values():
            self._send(usage=agent_pb2.UsageReport(entry=entry))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None, "the agent is not running"
        return self._tg.create_task(coro)

    # -------------------------------------------------------------- messages

    def _send(self, **msg: object) -> None:
        if self._out is not None:
            self._out.put_nowait(agent_pb2.ConnectRequest(**msg))  # type: ignore[arg-type]

    def offer(self) -> Offer:
        for pool in self.center.pools:
            self.metrics.devices_free.labels(pool=pool.pool_id).set(self.book.free(pool.pool_id))
        self.metrics.jobs_running.set(
            sum(1 for t in self.tasks.values() if t.state == JobState.RUNNING)
        )
        self._seq += 1
        at = now_ms()
        pools = tuple(_with_free(p, self.book.free(p.pool_id)) for p in self.center.pools)
        return Offer(
            center_id=self.center.center_id,
            seq=self._seq,
            issued_at_ms=at,
            expires_at_ms=at + OFFER_TTL_MS,
            pue_milli=self.center.pue_milli,
            grid_g_co2_per_kwh=self.center.grid_g_co2_per_kwh,
            pools=pools,
        )

    def _advertise(self) -> None:
        self._advertised_at_ms = now_ms()
        self._send(offer=wire.offer_to_proto(self.offer()))

    def _reserve(self, reserve: agent_pb2.Reserve) -> None:
        try:
            holding = self.book.reserve(
                claim_id=reserve.claim_id,
                job_id=reserve.job_id,
                pool_id=reserve.pool_id,
                devices=reserve.devices,
                lease_expires_at_ms=reserve.lease_expires_at_ms,
            )
        except Refused as exc:
            self.metrics.claims.labels(outcome="refused").inc()
            log.info("claim %s for job %s refused: %s", reserve.claim_id, reserve.job_id, exc)
            self._send(
                claim_reply=agent_pb2.ClaimReply(
                    claim_id=reserve.claim_id, accepted=False, reason=str(exc)
                )
            )
            return
        self.metrics.claims.labels(outcome="accepted").inc()
        self.tasks.setdefault(
            reserve.claim_id, Task(claim_id=reserve.claim_id, job_id=reserve.job_id)
        )
        log.info(
            "claim %s for job %s accepted: %s devices %s",
            reserve.claim_id,
            reserve.job_id,
            reserve.pool_id,
            ",".join(map(str, holding.indices)),
        )
        # The new free count goes up before the reply, so the broker never believes
        # these devices free once it hears the claim was accepted.
        self._advertise()
        self._send(
            claim_reply=agent_pb2.ClaimReply(
                claim_id=reserve.claim_id, accepted=True, device_indices=holding.indices
            )
        )

    async def _launch(self, launch: agent_pb2.Launch) -> None:
        task = self.tasks.get(launch.claim_id)
        holding = self.book.holdings.get(launch.claim_id)
        if task is None or holding is None:
            self._update(
                launch.claim_id,
                launch.job_id,
                # Given back, not failed: the job never started, so it runs elsewhere.
                JobState.QUEUED,
                message="reservation lapsed before the launch arrived",
            )
            return
        if task.state != JobState.CLAIMED:
            return  # already launched (a resent launch after reconnect)
        self.book.launch(launch.claim_id)
        spec = wire.spec_from_proto(launch.spec)
        request = LaunchRequest(
            job_id=launch.job_id,
            command=spec.command,
            env={
                **dict(spec.env),
                "ICX_CENTER_ID": self.center.center_id,
                "ICX_POOL_ID": holding.pool_id,
                "ICX_CLAIM_ID": holding.claim_id,
            },
            device_indices=holding.indices,
            workdir=self.workdir / launch.job_id,
        )
        task.state = JobState.RUNNING
        task.tenant = launch.tenant
        task.pool_id = holding.pool_id
        task.devices = len(holding.indices)
        task.started_at_ms = now_ms()
        try:
            task.run = await self.backend.launch(request, self._output_sink(task))
        except OSError as exc:
            self._end(
                task, JobState.FAILED, None, f"cannot start {spec.command[0]!r}: {exc.strerror}"
            )
            return
        log.info(
            "job %s running on %s devices %s", task.job_id, holding.pool_id, request.device_indices
        )
        self._update(
            task.claim_id, task.job_id, JobState.RUNNING, message=f"started on {holding.pool_id}"
        )
        self._spawn(self._supervise(task))

    def _output_sink(self, task: Task) -> OutputSink:
        async def sink(stream: str, data: bytes) -> None:
            task.log_seq += 1
            self._send(
                log=types_pb2.LogChunk(
                    job_id=task.job_id,
                    seq=task.log_seq,
                    stream=types_pb2.LOG_STREAM_STDOUT
                    if stream == "stdout"
                    else types_pb2.LOG_STREAM_STDERR,
                    data=data,
                )
            )

        return sink

    async def _supervise(self, task: Task) -> None:
        assert task.run is not None
        code = await task.run.wait()
        if task.fenced and code == 0:
            task.fenced = False  # it finished on its own before the stop took effect
        if task.fenced:
            self.book.release(task.claim_id)
            self.tasks.pop(task.claim_id, None)
            log.info("job %s stopped while cut off (exit %s): giving it back", task.job_id, code)
            # If the stream is back by now, say so; if not, the next Hello will not list
            # the job and the broker requeues it then.
            self._update(
                task.claim_id, task.job_id, JobState.QUEUED, message="stopped while cut off"
            )
            self._advertise()
        elif task.cancelled:
            self._end(task, JobState.CANCELLED, code, "cancelled")
        elif code == 0:
            self._end(task, JobState.SUCCEEDED, code, "exit 0")
        else:
            self._end(task, JobState.FAILED, code, f"exit {code}")

    def _end(self, task: Task, state: JobState, code: int | None, message: str) -> None:
        task.state = state
        task.exit_code = code
        task.ended_at_ms = now_ms()
        self.metrics.jobs_ended.labels(state=state.value).inc()
        self.book.release(task.claim_id)
        log.info("job %s %s (%s)", task.job_id, state, message)
        self._update(task.claim_id, task.job_id, state, exit_code=code, message=message)
        self._advertise()
        if task.started_at_ms and task.run is not None:
            self._report_usage(task)

    def _report_usage(self, task: Task) -> None:
        """Sign what the job used and send it; kept until the broker acknowledges it."""
        if self.usage_key is None or not task.tenant:
            return
        pool = next(p for p in self.center.pools if p.pool_id == task.pool_id)
        wall_s = (task.ended_at_ms - task.started_at_ms) // 1000
        energy = usage_energy_wh(task.devices, pool.power_w, wall_s, self.center.pue_milli)
        record = UsageRecord(
            record_id=f"{self.center.center_id}/{task.claim_id}",
            producer=self.center.center_id,
            consumer=task.tenant,
            job_id=task.job_id,
            start_ms=task.started_at_ms,
            end_ms=task.ended_at_ms,
            wall_s=wall_s,
            devices=task.devices,
            device_s=task.devices * wall_s,
            accelerator=pool.accelerator,
            energy_wh=energy,
            carbon_g=usage_carbon_g(energy, self.center.grid_g_co2_per_kwh),
            unit_price_minor=pool.price_minor_per_device_hour,
            charge_minor=charge_minor(task.devices * wall_s, pool.price_minor_per_device_hour),
        )
        entry = sign_records([record], self.usage_key)[0].entry()
        self.unacked[record.record_id] = entry
        self._keep(record.record_id, entry)
        self._send(usage=agent_pb2.UsageReport(entry=entry))

    def _outbox_path(self, record_id: str) -> Path:
        return self.outbox / (record_id.replace("/", "_") + ".entry")

    def _keep(self, record_id: str, entry: bytes) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self._outbox_path(record_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(entry)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _load_outbox(self) -> dict[str, bytes]:
        """Signed records a previous run of this agent had not delivered."""
        kept: dict[str, bytes] = {}
        for path in sorted(self.outbox.glob("*.entry")) if self.outbox.is_dir() else ():
            entry = path.read_bytes()
            try:
                kept[SignedRecord.from_entry(entry).record.record_id] = entry
            except IcxError as exc:
                log.error("unreadable usage record %s left aside: %s", path, exc)
        if kept:
            log.info("%d signed usage records from an earlier run to deliver", len(kept))
        return kept

    def _usage_ack(self, ack: agent_pb2.UsageAck) -> None:
        if self.unacked.pop(ack.record_id, None) is None:
            return
        self._outbox_path(ack.record_id).unlink(missing_ok=True)
        if ack.accepted:
            log.info("usage %s logged at entry %d", ack.record_id, ack.index)
        else:
            log.error("usage %s refused by the broker: %s", ack.record_id, ack.reason)

    def _update(
        self,
        claim_id: str,
        job_id: str,
        state: JobState,
        *,
        exit_code: int | None = None,
        message: str = "",
    ) -> None:
        update = agent_pb2.JobUpdate(
            claim_id=claim_id,
            job_id=job_id,
            state=wire.state_to_proto(state),
            message=message,
            at_ms=now_ms(),
        )
        if exit_code is not None:
            update.exit_code = exit_code
        self._send(job_update=update)

    async def _cancel(self, cancel: agent_pb2.Cancel) -> None:
        task = self.tasks.get(cancel.claim_id)
        if task is None:
            self.book.release(cancel.claim_id)
            return
        if task.state == JobState.CLAIMED:
            self.book.release(task.claim_id)
            self.tasks.pop(task.claim_id, None)
            self._advertise()
            return
        if task.state == JobState.RUNNING and task.run is not None:
            log.info("job %s: stopping (%s)", task.job_id, cancel.reason or "cancelled")
            task.cancelled = True
            await task.run.kill()

    # ---------------------------------------------------------- housekeeping

    async def _housekeeping(self) -> None:
        """Heartbeats, lapsed reservations, fencing when cut off, forgetting old ends."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            at = now_ms()
            lapsed = self.book.lapse(at)
            for h in lapsed:
                log.info("reservation %s for job %s lapsed", h.claim_id, h.job_id)
                self.tasks.pop(h.claim_id, None)
            # Re-advertise on a change, and well before the last offer expires, so that
            # an idle center stays in matching.
            if lapsed or at - self._advertised_at_ms > OFFER_TTL_MS // 3:
                self._advertise()
            if self._out is not None:
                self._send(heartbeat=agent_pb2.Heartbeat(sent_at_ms=at))
            if at - self._last_heard_ms >= self._fence_after_ms:
                await self._fence()
            for claim_id, task in list(self.tasks.items()):
                if task.ended_at_ms and at - task.ended_at_ms > FINISHED_RETENTION_MS:
                    del self.tasks[claim_id]

    async def _fence(self) -> None:
        live = [
            t
            for t in self.tasks.values()
            if t.state in (JobState.CLAIMED, JobState.RUNNING) and not t.fenced
        ]
        if not live:
            return
        log.warning(
            "nothing heard from the broker for %d ms: stopping %d jobs (they will be requeued)",
            now_ms() - self._last_heard_ms,
            len(live),
        )
        kills = []
        for task in live:
            if task.state == JobState.RUNNING and task.run is not None:
                task.fenced = True
                kills.append(task.run.kill())
            else:
                self.book.release(task.claim_id)
                self.tasks.pop(task.claim_id, None)
        await asyncio.gather(*kills)


def _with_free(pool: Pool, free: int) -> Pool:
    return dataclasses.replace(pool, devices_free=free)
