"""The agent stream: AgentService.Connect, one long-lived stream per connected center.

The only module of the broker that reads and builds the stream's messages (icx.v1
agent_pb2): it turns what a center says into domain values for the Broker, and the
commands in a session's outbox into messages. Requests are handled in order; usage
records are appended by the ledger's thread while the stream goes on and acknowledged by
record id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

from broker import authz
from broker.centers import (
    Cancel,
    ClaimReply,
    Close,
    Command,
    HeartbeatEcho,
    HeldClaim,
    JobUpdate,
    Launch,
    Reserve,
    Session,
    UsageAck,
)
from broker.core import Broker, Welcome
from core import wire
from core.errors import IcxError, InvalidArgument, PermissionDenied, Unauthenticated
from core.handshake import NONCE_BYTES, proof_message
from core.ids import check_text
from core.status import status_for
from core.types import JobId, LogChunk
from icx.v1 import agent_pb2, agent_pb2_grpc
from identity import Member
from ledger import VerifierKey

log = logging.getLogger("icx.broker.agents")

# How long a center has to answer the challenge.
PROOF_TIMEOUT_S = 10.0
# The most a center may say about a claim or a job (kept in events).
MAX_MESSAGE_CHARS = 4_096


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        session: Session | None = None
        reader: asyncio.Task[None] | None = None
        getter: asyncio.Future[Command] | None = None
        requests = aiter(request_iterator)
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("msg") != "hello":
                raise InvalidArgument("the first message on a stream must be hello")
            hello = first.hello
            center = wire.center_from_proto(hello.center)
            held = [_held_from_proto(h) for h in hello.held]
            member = authz.caller().member
            if member is not None:
                # TLS proved the certified key; the certificate names the center and the
                # key that signs its usage.
                authz.check_center(center.center_id)
                if member.region and center.region != member.region:
                    raise PermissionDenied(
                        f"center {center.center_id} was admitted in region {member.region}, "
                        f"not {center.region!r} (its config's [center] region)"
                    )
                usage_key = _certified_usage_key(member, hello.usage_key)
                certificate = _peer_certificate(context)
            else:  # --insecure: the center proves the key it declares (kept on first use)
                usage_key, certificate = hello.usage_key, ""
                key = await self.broker.usage.key_to_prove(center.center_id, usage_key)
                if key is not None:
                    nonce = os.urandom(NONCE_BYTES)
                    yield agent_pb2.ConnectResponse(challenge=agent_pb2.Challenge(nonce=nonce))
                    await _check_proof(requests, center.center_id, key, nonce)
            session, welcome = await self.broker.connect(
                center, held, usage_key, member=member, certificate=certificate
            )
            yield agent_pb2.ConnectResponse(welcome=_welcome_to_proto(welcome))
            reader = asyncio.create_task(self._read(session, requests))
            while True:
                getter = asyncio.ensure_future(session.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    exc = reader.exception()
                    if exc is not None:
                        raise exc
                    return  # the agent closed its side
                command = getter.result()
                if isinstance(command, Close) and command.refusal:
                    raise Unauthenticated(command.refusal)
                if not session.connected or isinstance(command, Close):
                    return  # replaced by a newer stream or taken out
                yield _command_to_proto(command)
        except IcxError as exc:
            if session is not None:
                log.warning("center %s: %s", session.center_id, exc)
            await context.abort(status_for(exc), str(exc))
        except Exception as exc:  # CancelledError is not one: it passes through
            log.error("agent stream failed", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            # The agent may end the stream at any await here: leave no task behind.
            if getter is not None:
                getter.cancel()
            if reader is not None:
                reader.cancel()
            if session is not None:
                self.broker.disconnect(session)

    async def _read(
        self, session: Session, requests: AsyncIterator[agent_pb2.ConnectRequest]
    ) -> None:
        try:
            async with asyncio.TaskGroup() as usage:
                await self._read_in_order(session, requests, usage)
        except ExceptionGroup as group:  # the stream's own error, as the handler expects it
            raise group.exceptions[0] from None

    async def _acknowledge_usage(self, session: Session, entry: bytes) -> None:
        session.send(await self.broker.on_usage(session, entry))

    async def _read_in_order(
        self,
        session: Session,
        requests: AsyncIterator[agent_pb2.ConnectRequest],
        usage: asyncio.TaskGroup,
    ) -> None:
        broker = self.broker
        async for req in requests:
            kind = req.WhichOneof("msg")
            if kind == "heartbeat":
                broker.heartbeat(session)
                session.send(HeartbeatEcho(sent_at_ms=req.heartbeat.sent_at_ms))
            elif kind == "offer":
                broker.on_offer(session, wire.offer_from_proto(req.offer))
            elif kind == "claim_reply":
                r = req.claim_reply
                await broker.on_claim_reply(
                    session,
                    ClaimReply(
                        claim_id=_id("claim_id", r.claim_id),
                        accepted=r.accepted,
                        reason=_text("reason", r.reason),
                        device_indices=tuple(r.device_indices),
                    ),
                )
            elif kind == "job_update":
                u = req.job_update
                await broker.on_job_update(
                    session,
                    JobUpdate(
                        claim_id=_id("claim_id", u.claim_id),
                        job_id=_id("job_id", u.job_id),
                        state=wire.state_from_proto(u.state),
                        exit_code=u.exit_code if u.HasField("exit_code") else None,
                        message=_text("message", u.message),
                    ),
                )
            elif kind == "log":
                chunk = req.log
                broker.on_log(
                    session,
                    LogChunk(
                        job_id=JobId(_id("job_id", chunk.job_id)),
                        seq=chunk.seq,
                        stream=wire.log_stream_from_proto(chunk.stream),
                        data=chunk.data,
                    ),
                )
            elif kind == "usage":
                usage.create_task(self._acknowledge_usage(session, req.usage.entry))
            elif kind == "hello":
                raise InvalidArgument("hello may only be the first message")
            else:
                raise InvalidArgument("empty message on the agent stream")


async def _check_proof(
    requests: AsyncIterator[agent_pb2.ConnectRequest],
    center_id: str,
    key: VerifierKey,
    nonce: bytes,
) -> None:
    """The agent's answer to the challenge must be a signature by `key` over the nonce."""
    try:
        answer = await asyncio.wait_for(anext(requests, None), PROOF_TIMEOUT_S)
    except TimeoutError:
        answer = None
    if answer is None or answer.WhichOneof("msg") != "proof":
        raise PermissionDenied(
            f"center {center_id} must answer the challenge with a proof of key {key.key_id}"
        )
    if not key.verify(proof_message(center_id, nonce), answer.proof.signature):
        raise PermissionDenied(
            f"center {center_id}: the proof does not verify with key {key.key_id}"
        )


def _certified_usage_key(member: Member, declared: str) -> str:
    """The usage key the center's certificate binds; a different declared one is a key
    change, which needs a new admission."""
    if not member.usage_key:
        raise PermissionDenied(f"the certificate of center {member.name} binds no usage key")
    if declared and declared != member.usage_key:
        raise PermissionDenied(
            f"center {member.name} declares a usage key its certificate does not bind: "
            "a new key needs a new admission (icx agent init, icx admin admit)"
        )
    return member.usage_key


def _peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    auth = context.auth_context() or {}
    return b"".join(auth.get("x509_pem_cert") or ()).decode("ascii", "replace")


def _id(field: str, value: str) -> str:
    return wire.id_from_proto(field, value)


def _text(field: str, value: str) -> str:
    """A center's words about a claim or a job, kept in events: bounded, no NUL."""
    check_text(field, value, InvalidArgument, max_chars=MAX_MESSAGE_CHARS)
    return value


def _held_from_proto(h: agent_pb2.HeldClaim) -> HeldClaim:
    return HeldClaim(
        claim_id=_id("claim_id", h.claim_id),
        job_id=_id("job_id", h.job_id),
        state=wire.state_from_proto(h.state),
        exit_code=h.exit_code if h.HasField("exit_code") else None,
    )


def _welcome_to_proto(w: Welcome) -> agent_pb2.Welcome:
    return agent_pb2.Welcome(
        heartbeat_interval_ms=w.heartbeat_interval_ms,
        center_expiry_ms=w.center_expiry_ms,
        stale_claim_ids=list(w.stale_claim_ids),
    )


def _command_to_proto(command: Command) -> agent_pb2.ConnectResponse:
    match command:
        case Reserve():
            return agent_pb2.ConnectResponse(
                reserve=agent_pb2.Reserve(
                    claim_id=command.claim_id,
                    job_id=command.job_id,
                    pool_id=command.pool_id,
                    devices=command.devices,
                    lease_expires_at_ms=command.lease_expires_at_ms,
                    image=command.image,
                )
            )
        case Launch():
            job = command.job
            return agent_pb2.ConnectResponse(
                launch=agent_pb2.Launch(
                    claim_id=command.claim_id,
                    job_id=job.job_id,
                    spec=wire.spec_to_proto(job.spec),
                    tenant=job.tenant,
                )
            )
        case Cancel():
            return agent_pb2.ConnectResponse(
                cancel=agent_pb2.Cancel(
                    claim_id=command.claim_id, job_id=command.job_id, reason=command.reason
                )
            )
        case UsageAck():
            return agent_pb2.ConnectResponse(
                usage_ack=agent_pb2.UsageAck(
                    record_id=command.record_id,
                    accepted=command.accepted,
                    index=command.index,
                    reason=command.reason,
                )
            )
        case HeartbeatEcho():
            return agent_pb2.ConnectResponse(
                heartbeat=agent_pb2.Heartbeat(sent_at_ms=command.sent_at_ms)
            )
    raise AssertionError(f"no message for {command!r}")
