"""The link: the agent's one stream to its broker, and the only module that builds or
reads the stream's messages (`agent_pb2`). It dials out, says Hello, reconnects with
capped exponential back-off and jitter, turns each message from the broker into a domain
value for its handler and each domain value to send into a message, and keeps the time
the broker was last heard from, which decides fencing.

One message never ends the stream: a message the agent cannot handle is logged and
counted (`icx_agent_faults{where="message"}`) and the stream goes on; a launch whose
spec does not check is handed to the agent as a refusal, so that the job fails with the
reason and its devices are freed. Launches and cancels run in the background, so the
stream keeps reading (and hearing the broker) while a backend starts or stops a job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from core import wire
from core.clock import Clock
from core.handshake import proof_message
from core.states import TERMINAL, JobState
from core.types import CenterDescriptor, LogChunk, Offer
from icx.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from identity import Credentials
from identity.tls import aio_channel
from ledger import SignerKey
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
from node_agent._output import CHUNK_BYTES
from node_agent.metrics import AgentMetrics

log = logging.getLogger("icx.agent")

VERSION = "0.1.0"
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

HELD_OUTPUT_BYTES = 4 << 20
"""The most output held for the broker while the stream is down (job updates held with
it are never dropped: they are few, and each matters)."""

_FIRST_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 5.0
_PROBE_S = 1.0
_ANSWER_S = 5.0
"""How long a broker's host has to complete the connection (TLS, HTTP/2): one that takes
it and says nothing (a hung or cut-off machine) is passed over for the region's next
broker, well before gRPC's own 20 s connection deadline."""
_MAX_HEARTBEAT_S = 60.0


class LinkHandler(Protocol):
    """What the link asks of the agent, and hands it, in domain values."""

    def held(self) -> list[HeldClaim]: ...

    def welcomed(self, welcome: Welcome) -> None:
        """The stream is up (the link is `connected`): advertise, resend what waits."""
        ...

    def reserve(self, order: ReserveOrder) -> ClaimAnswer: ...

    def launch(self, order: LaunchOrder) -> None:
        """Start the launch; returns at once."""
        ...

    def launch_refused(self, refusal: LaunchRefusal) -> None: ...

    def cancel(self, order: CancelOrder) -> None:
        """Start the cancel; returns at once."""
        ...

    def usage_acknowledged(self, ack: UsageAck) -> None: ...


class Link:
    def __init__(
        self,
        center: CenterDescriptor,
        broker: str,
        *,
        usage_key: SignerKey | None,
        credentials: Credentials | None = None,
        clock: Clock,
        metrics: AgentMetrics,
    ) -> None:
        self.center = center
        # A region's brokers, tried in turn: one active, the others standing by on the
        # same database without listening until they take over (docs/deploy.md).
        self._brokers = [b for b in broker.split(",") if b]
        self._current = 0
        self.connected = asyncio.Event()
        self.heartbeat_s = 1.0
        self.fence_after_ms = 5_000
        # Proves, on each new stream, that this agent holds the center's admitted key.
        self._usage_key = usage_key
        self._credentials = credentials
        self._clock = clock
        self._metrics = metrics
        self._out: asyncio.Queue[agent_pb2.ConnectRequest] | None = None
        # Output and job updates produced while disconnected (a run re-attached before
        # the stream is up, a job writing or ending through a reconnect), in order, sent
        # once the broker has taken the Hello.
        self._held: collections.deque[agent_pb2.ConnectRequest] = collections.deque()
        self._held_bytes = 0
        # When the broker was last heard from (any message, heartbeat answers included).
        self._last_heard_ms = clock.now_ms()

    @property
    def broker(self) -> str:
        """The broker address the agent dials now."""
        return self._brokers[self._current]

    def silent_ms(self) -> int:
        """How long the broker has not been heard from."""
        return self._clock.now_ms() - self._last_heard_ms

    def cut_off(self) -> bool:
        """Silent for half the center expiry the broker announced: by the time the broker
        gives up on this center, its jobs must no longer run here."""
        return self.silent_ms() >= self.fence_after_ms

    # -------------------------------------------------------------------- sending

    def send_offer(self, offer: Offer) -> None:
        self._send(offer=wire.offer_to_proto(offer))

    def send_claim_answer(self, answer: ClaimAnswer) -> None:
        self._send(
            claim_reply=agent_pb2.ClaimReply(
                claim_id=answer.claim_id,
                accepted=answer.accepted,
                device_indices=answer.device_indices,
                reason=answer.reason,
            )
        )

    def send_update(self, update: JobUpdate) -> None:
        msg = agent_pb2.JobUpdate(
            claim_id=update.claim_id,
            job_id=update.job_id,
            state=wire.state_to_proto(update.state),
            message=update.message,
            at_ms=update.at_ms,
        )
        if update.exit_code is not None:
            msg.exit_code = update.exit_code
        if self._out is not None:
            self._out.put_nowait(agent_pb2.ConnectRequest(job_update=msg))
        else:  # after the output it follows, once connected (see `_hello`)
            self._held.append(agent_pb2.ConnectRequest(job_update=msg))

    def send_output(self, chunk: LogChunk) -> None:
        """Output goes now, or once connected: up to HELD_OUTPUT_BYTES of it is held
        while the stream is down (the oldest goes first beyond that; all of it stays in
        the job's folder)."""
        msg = wire.log_to_proto(chunk)
        if self._out is not None:
            self._out.put_nowait(agent_pb2.ConnectRequest(log=msg))
            return
        self._held.append(agent_pb2.ConnectRequest(log=msg))
        self._held_bytes += len(msg.data)
        while self._held_bytes > HELD_OUTPUT_BYTES:
            i = next(i for i, m in enumerate(self._held) if m.HasField("log"))
            self._held_bytes -= len(self._held[i].log.data)
            del self._held[i]

    def _send_held(self, out: asyncio.Queue[agent_pb2.ConnectRequest]) -> None:
        """Send what was held, each job's messages in order. A job's successive pieces of
        one stream are joined up to CHUNK_BYTES (under the sequence number of the last):
        the broker takes a center's chunks at a bounded rate, and what the jobs wrote
        through an outage would otherwise arrive all at once, in as many pieces."""
        # Each message to send, with the pieces of output joined into it (joined once, at
        # the end: a bytes field grown piece by piece is copied whole each time).
        sending: list[tuple[agent_pb2.ConnectRequest, _Joined | None]] = []
        joining: dict[str, _Joined] = {}  # job -> its last message, while that is output
        for m in self._held:
            if not m.HasField("log"):
                joining.pop(m.job_update.job_id, None)
                sending.append((m, None))
                continue
            piece = m.log
            last = joining.get(piece.job_id)
            if (
                last is not None
                and last.chunk.stream == piece.stream
                and last.size + len(piece.data) <= CHUNK_BYTES
            ):
                last.parts.append(piece.data)
                last.size += len(piece.data)
                last.chunk.seq = piece.seq
                continue
            joined = joining[piece.job_id] = _Joined(piece, [piece.data], len(piece.data))
            sending.append((m, joined))
        self._held.clear()
        self._held_bytes = 0
        for m, into in sending:
            if into is not None and len(into.parts) > 1:
                m.log.data = b"".join(into.parts)
            out.put_nowait(m)

    def send_usage(self, entry: bytes) -> None:
        """`entry`: the ledger's signed entry bytes, carried as they are."""
        self._send(usage=agent_pb2.UsageReport(entry=entry))

    def send_heartbeat(self) -> None:
        self._send(heartbeat=agent_pb2.Heartbeat(sent_at_ms=self._clock.now_ms()))

    def _send(self, **msg: Any) -> None:
        # Dropped while disconnected: the Hello, the offer at connect and the outbox's
        # resend carry what matters across a reconnect (job updates and output are held:
        # `send_update`, `send_output`).
        if self._out is not None:
            self._out.put_nowait(agent_pb2.ConnectRequest(**msg))

    # ------------------------------------------------------------------- the stream

    async def run(self, handler: LinkHandler) -> None:
        """Connect, and reconnect with capped exponential back-off, forever."""
        backoff = _FIRST_BACKOFF_S
        refusals = 0  # addresses that refused in a row
        while True:
            refused = unreachable = False
            try:
                await self._session(handler)
                backoff = _FIRST_BACKOFF_S
            except _NoAnswer:
                unreachable = True
                log.info("broker %s: no answer in %g s", self.broker, _ANSWER_S)
            except grpc.aio.AioRpcError as exc:
                unavailable = exc.code() == grpc.StatusCode.UNAVAILABLE
                unreachable = unavailable
                refused = unavailable and await _nobody_listens(self.broker)
                level = logging.INFO if unavailable else logging.ERROR
                log.log(level, "broker %s: %s %s", self.broker, exc.code().name, exc.details())
            except Exception:
                # Whatever broke this connection, the agent outlives it: its jobs keep
                # running and it reconnects.
                log.exception("stream to broker %s failed", self.broker)
            finally:
                if self.connected.is_set():
                    log.info("disconnected from broker %s", self.broker)
                self.connected.clear()
                self._metrics.connected.set(0)
                self._out = None
            refusals = refusals + 1 if refused else 0
            if refusals >= len(self._brokers):
                # No broker of the region listens: none is counting this center's
                # silence, and a restarted one grants a full expiry from its start. Only
                # silence from a live broker (or one cut off from here, or hung) means
                # fencing, even while another address refuses.
                self._last_heard_ms = self._clock.now_ms()
            if unreachable and len(self._brokers) > 1:
                # Nobody answers there (refused, or a host that is down or cut off):
                # another of the region's brokers may have taken over. Each is tried
                # once before the back-off.
                self._current = (self._current + 1) % len(self._brokers)
                if self._current != 0:
                    continue
            await asyncio.sleep(backoff * (0.5 + random.random()))
            # Reconnect well within the grace a restarted broker gives (its expiry).
            backoff = min(backoff * 2, _MAX_BACKOFF_S, self.fence_after_ms / 2000)

    async def _session(self, handler: LinkHandler) -> None:
        out: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
        out.put_nowait(agent_pb2.ConnectRequest(hello=self._hello(handler.held())))

        async def write(call: Any) -> None:
            while True:
                await call.write(await out.get())

        async with aio_channel(self.broker, self._credentials, CHANNEL_OPTIONS) as channel:
            await _connected(channel)
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            writer = asyncio.create_task(write(call))  # owned here: cancelled when we leave
            try:
                await self._read(call, out, handler)
            finally:
                writer.cancel()
                # The writer fails when the call has ended; the reader has said why.
                with contextlib.suppress(
                    asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError
                ):
                    await writer

    async def _read(
        self, call: Any, out: asyncio.Queue[agent_pb2.ConnectRequest], handler: LinkHandler
    ) -> None:
        msg = await call.read()
        while msg is not grpc.aio.EOF:
            self._last_heard_ms = self._clock.now_ms()
            if msg.WhichOneof("msg") == "challenge":
                out.put_nowait(agent_pb2.ConnectRequest(proof=self._prove(msg.challenge.nonce)))
            elif msg.WhichOneof("msg") == "welcome":
                self._welcome(msg.welcome, out)
                self.receive(msg, handler)  # what the agent does once welcomed
            else:
                self.receive(msg, handler)
            msg = await call.read()

    def receive(self, msg: agent_pb2.ConnectResponse, handler: LinkHandler) -> None:
        """Hand one message from the broker to `handler` as the stream does, after the
        handshake: an error is logged and counted, never raised."""
        kind = msg.WhichOneof("msg")
        try:
            self._handle(kind, msg, handler)
        except Exception:
            log.exception("broker %s: cannot handle its %s message; going on", self.broker, kind)
            self._metrics.faults.labels(where="message").inc()

    def _handle(
        self, kind: str | None, msg: agent_pb2.ConnectResponse, handler: LinkHandler
    ) -> None:
        if kind == "welcome":
            w = msg.welcome
            handler.welcomed(
                Welcome(
                    heartbeat_interval_ms=w.heartbeat_interval_ms,
                    center_expiry_ms=w.center_expiry_ms,
                    stale_claim_ids=tuple(w.stale_claim_ids),
                )
            )
        elif kind == "reserve":
            r = msg.reserve
            answer = handler.reserve(
                ReserveOrder(
                    claim_id=r.claim_id,
                    job_id=r.job_id,
                    pool_id=r.pool_id,
                    devices=r.devices,
                    lease_expires_at_ms=r.lease_expires_at_ms,
                    image=r.image,
                )
            )
            self.send_claim_answer(answer)
        elif kind == "launch":
            launch = msg.launch
            try:
                spec = wire.spec_from_proto(launch.spec)
            except Exception as exc:  # whatever the spec holds, only this job fails
                handler.launch_refused(
                    LaunchRefusal(claim_id=launch.claim_id, job_id=launch.job_id, reason=str(exc))
                )
                return
            handler.launch(
                LaunchOrder(
                    claim_id=launch.claim_id, job_id=launch.job_id, spec=spec, tenant=launch.tenant
                )
            )
        elif kind == "cancel":
            handler.cancel(CancelOrder(claim_id=msg.cancel.claim_id, reason=msg.cancel.reason))
        elif kind == "usage_ack":
            ack = msg.usage_ack
            handler.usage_acknowledged(
                UsageAck(
                    record_id=ack.record_id,
                    accepted=ack.accepted,
                    index=ack.index,
                    reason=ack.reason,
                )
            )

    def _hello(self, held: list[HeldClaim]) -> agent_pb2.Hello:
        """The Hello for `held`. The broker keeps a job's output only while the job is
        live (its output precedes its end), and it takes what the Hello says before the
        held messages: a job that ended while the stream was down with output still held
        is said to be running here, and its held end follows its output. The held updates
        of the jobs whose end the Hello says are dropped (it said more)."""
        held_output = {m.log.job_id for m in self._held if m.HasField("log")}
        held_ends = {
            m.job_update.claim_id
            for m in self._held
            if m.HasField("job_update") and wire.state_from_proto(m.job_update.state) in TERMINAL
        }
        claims = []
        told_ended = set()
        for h in held:
            state = h.state
            # A cancelled job may never have started (its launch did not return): it is
            # not said to run; its held output goes, and the broker drops it.
            waits = h.job_id in held_output and h.claim_id in held_ends
            if state in TERMINAL and (state == JobState.CANCELLED or not waits):
                told_ended.add(h.claim_id)
            elif state in TERMINAL:
                state = JobState.RUNNING
            claim = agent_pb2.HeldClaim(
                claim_id=h.claim_id, job_id=h.job_id, state=wire.state_to_proto(state)
            )
            if h.exit_code is not None and state in TERMINAL:
                claim.exit_code = h.exit_code
            claims.append(claim)
        self._held = collections.deque(
            m
            for m in self._held
            if not (m.HasField("job_update") and m.job_update.claim_id in told_ended)
        )
        return agent_pb2.Hello(
            center=wire.center_to_proto(self.center),
            agent_version=VERSION,
            held=claims,
            usage_key=self._usage_key.verifier.text() if self._usage_key else "",
        )

    def _prove(self, nonce: bytes) -> agent_pb2.HelloProof:
        if self._usage_key is None:  # the broker will refuse the stream: say why here
            log.error(
                "broker %s asks center %s to prove its key, and this agent has none "
                "(center.key_file)",
                self.broker,
                self.center.center_id,
            )
            return agent_pb2.HelloProof()
        message = proof_message(self.center.center_id, nonce)
        return agent_pb2.HelloProof(signature=self._usage_key.sign(message))

    def _welcome(
        self, welcome: agent_pb2.Welcome, out: asyncio.Queue[agent_pb2.ConnectRequest]
    ) -> None:
        # A period the broker leaves unsaid (zero) keeps the agent's own: an expiry of
        # zero would fence every job at every tick.
        if welcome.heartbeat_interval_ms > 0:
            self.heartbeat_s = min(
                max(0.05, welcome.heartbeat_interval_ms / 1000), _MAX_HEARTBEAT_S
            )
        if welcome.center_expiry_ms > 0:
            self.fence_after_ms = welcome.center_expiry_ms // 2
        else:
            log.warning(
                "broker %s announced no center expiry: fencing after %d ms",
                self.broker,
                self.fence_after_ms,
            )
        self._out = out
        self._send_held(out)
        self.connected.set()
        self._metrics.connected.set(1)
        log.info("connected to broker %s as center %s", self.broker, self.center.center_id)


@dataclass(slots=True)
class _Joined:
    """A held piece of output and those joined to it (`_send_held`)."""

    chunk: types_pb2.LogChunk
    parts: list[bytes]
    size: int


class _NoAnswer(Exception):
    """The broker's host took the connection and did not complete the handshake in time."""


async def _connected(channel: grpc.aio.Channel) -> None:
    """Until the channel is connected (TLS and HTTP/2 set up) or has failed (the call
    then fails at once, saying why: refused, say); _NoAnswer after _ANSWER_S, a host that
    took the connection and says nothing. Only the transport is timed: the broker's
    answer to the Hello may wait on its database."""
    ready = grpc.ChannelConnectivity.READY
    failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def settled() -> None:
        state = channel.get_state(try_to_connect=True)
        while state not in (ready, failed):
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    try:
        await asyncio.wait_for(settled(), _ANSWER_S)
    except TimeoutError:
        raise _NoAnswer from None


async def _nobody_listens(address: str) -> bool:
    """True when a TCP connection to `address` (HOST:PORT) is refused: no process has the
    port open. A stopped broker still has its port (the kernel accepts for it), and an
    unreachable host does not answer at all; both count as silence."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), _PROBE_S
        )
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False
