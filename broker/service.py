"""The broker's gRPC faces: BrokerService for users and AgentService for node agents.

Each method converts the request (core.wire), calls the Broker, converts back. One
table maps the package's errors to status codes; anything else is logged and sent as a
bare INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker.core import Broker, Session, now_ms
from broker.ledger import BrokerLedger
from core import wire
from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from core.types import JobId, LogChunk
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)
from ledger import VerificationError
from matcher import dump_problem, solution_to_json

log = logging.getLogger("icx.broker.service")

STATUS: dict[type[IcxError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A signature, proof or note that does not verify is bad input.
    VerificationError: grpc.StatusCode.INVALID_ARGUMENT,
}

TENANT_METADATA = "x-icx-tenant"
DEFAULT_TENANT = "default"

R = TypeVar("R")


def status_for(exc: IcxError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, IcxError):
        await context.abort(status_for(exc), str(exc))
    log.error("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except Exception as exc:  # CancelledError is not one: it passes through
            await abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's tenant. Until user authentication lands this is a declared name."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA and value:
            return str(value)
    return DEFAULT_TENANT


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @unary
    async def SubmitJob(
        self, request: broker_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.SubmitJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required")
        spec = wire.spec_from_proto(request.spec)
        job = await self.broker.submit(tenant_of(context), spec, request.request_id)
        return broker_pb2.SubmitJobResponse(job=wire.job_to_proto(job))

    @unary
    async def GetJob(
        self, request: broker_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.GetJobResponse:
        return broker_pb2.GetJobResponse(job=wire.job_to_proto(self.broker.get(request.job_id)))

    @unary
    async def ListJobs(
        self, request: broker_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.ListJobsResponse:
        if request.limit < 0:
            raise InvalidArgument(f"limit must be >= 0, got {request.limit}")
        states = [wire.state_from_proto(s) for s in request.states]
        jobs = self.broker.list_jobs(states, request.limit)
        total = len(self.broker.list_jobs(states))
        return broker_pb2.ListJobsResponse(jobs=[wire.job_to_proto(j) for j in jobs], total=total)

    @unary
    async def CancelJob(
        self, request: broker_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.CancelJobResponse:
        job = await self.broker.cancel(tenant_of(context), request.job_id)
        return broker_pb2.CancelJobResponse(job=wire.job_to_proto(job))

    async def WatchJob(
        self, request: broker_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[broker_pb2.WatchJobResponse]:
        try:
            job = self.broker.get(request.job_id)
        except IcxError as exc:
            await abort(context, exc)
            return
        job_id = JobId(job.job_id)
        event_seq = 0
        log_seq = 0
        ended = False
        while not ended:
            changed = self.broker.change_event(job_id)
            # Only committed events are read. The agent sends a job's output before its
            # final update, so the output is committed no later than the end.
            for event in self.broker.events_after(job_id, event_seq):
                event_seq = event.seq
                ended = ended or event.state.terminal
                yield broker_pb2.WatchJobResponse(event=wire.event_to_proto(event))
            if request.include_logs:
                for chunk in self.broker.logs_after(job_id, log_seq):
                    log_seq = chunk.seq
                    yield broker_pb2.WatchJobResponse(log=wire.log_to_proto(chunk))
            if not ended and not request.snapshot:
                await changed.wait()
            ended = ended or request.snapshot

    @unary
    async def QuoteJob(
        self, request: broker_pb2.QuoteJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.QuoteJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required")
        lines = self.broker.quote(wire.spec_from_proto(request.spec))
        return broker_pb2.QuoteJobResponse(
            lines=[
                broker_pb2.QuoteLine(
                    rank=q.rank,
                    center_id=q.center_id,
                    pool_id=q.pool_id.split("/", 1)[-1],
                    region=q.region,
                    accelerator=q.accelerator,
                    price_minor_per_device_hour=q.price_minor_per_device_hour,
                    charge_minor=q.charge_minor,
                    rtt_ms=q.rtt_ms,
                    transfer_ms=q.transfer_ms,
                    energy_wh=q.energy_wh,
                    carbon_g=q.carbon_g,
                    has_capacity=q.has_capacity,
                    feasible=q.feasible,
                    reason=q.reason,
                )
                for q in lines
            ]
        )

    @unary
    async def ListCenters(
        self, request: broker_pb2.ListCentersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.ListCentersResponse:
        out = []
        for view in self.broker.center_views():
            status = broker_pb2.CenterStatus(
                center=wire.center_to_proto(view.center),
                connected=view.connected,
                last_seen_ms=view.last_seen_ms,
                jobs_running=view.jobs_running,
            )
            if view.offer is not None:
                status.offer.CopyFrom(wire.offer_to_proto(view.offer))
            out.append(status)
        return broker_pb2.ListCentersResponse(centers=out)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @unary
    async def DumpRound(
        self, request: admin_pb2.DumpRoundRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.DumpRoundResponse:
        last = self.broker.last_round
        if request.current or last is None:
            problem = self.broker.current_problem()
            return admin_pb2.DumpRoundResponse(
                round=0, at_ms=now_ms(), problem_json=json.dumps(dump_problem(problem), indent=1)
            )
        return admin_pb2.DumpRoundResponse(
            round=last.number,
            at_ms=last.at_ms,
            problem_json=json.dumps(dump_problem(last.problem), indent=1),
            solution_json=json.dumps(solution_to_json(last.solution), indent=1),
        )


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, ledger: BrokerLedger) -> None:
        self.ledger = ledger

    @unary
    async def GetLogKey(
        self, request: ledger_pb2.GetLogKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GetLogKeyResponse:
        return ledger_pb2.GetLogKeyResponse(key=await self.ledger.key_text())

    @unary
    async def GetCheckpoint(
        self, request: ledger_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GetCheckpointResponse:
        return ledger_pb2.GetCheckpointResponse(note=await self.ledger.latest_note())

    @unary
    async def ProveRecord(
        self, request: ledger_pb2.ProveRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.ProveRecordResponse:
        which = request.WhichOneof("entry")
        if which == "record_id":
            text = await self.ledger.prove(record_id=request.record_id)
        elif which == "index":
            if request.index < 0:
                raise InvalidArgument(f"index must be >= 0, got {request.index}")
            text = await self.ledger.prove(index=request.index)
        else:
            raise InvalidArgument("name a record_id or an index")
        return ledger_pb2.ProveRecordResponse(bundle_json=text)

    @unary
    async def GetStatement(
        self, request: ledger_pb2.GetStatementRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GetStatementResponse:
        return ledger_pb2.GetStatementResponse(
            statement=await self.ledger.statement(request.period)
        )

    @unary
    async def GetConsistencyProof(
        self,
        request: ledger_pb2.GetConsistencyProofRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ledger_pb2.GetConsistencyProofResponse:
        proof = await self.ledger.consistency_proof(request.size1, request.size2)
        return ledger_pb2.GetConsistencyProofResponse(proof=proof)

    @unary
    async def AddCosignature(
        self, request: ledger_pb2.AddCosignatureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.AddCosignatureResponse:
        return ledger_pb2.AddCosignatureResponse(
            kept=await self.ledger.add_cosignatures(request.note)
        )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """One stream per connected center: requests are handled in order; responses come
    from the session's outbox."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        session: Session | None = None
        reader: asyncio.Task[None] | None = None
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("msg") != "hello":
                raise InvalidArgument("the first message on a stream must be hello")
            center = wire.center_from_proto(first.hello.center)
            session, welcome = await self.broker.connect(
                center, list(first.hello.held), first.hello.usage_key
            )
            yield agent_pb2.ConnectResponse(welcome=welcome)
            reader = asyncio.create_task(self._read(session, request_iterator))
            while True:
                getter = asyncio.ensure_future(session.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    exc = reader.exception()
                    if exc is not None:
                        raise exc
                    return  # the agent closed its side
                msg = getter.result()
                if not session.connected or msg.WhichOneof("msg") is None:
                    return  # replaced by a newer stream or taken out
                yield msg
        except IcxError as exc:
            if session is not None:
                log.warning("center %s: %s", session.center.center_id, exc)
            await context.abort(status_for(exc), str(exc))
        finally:
            if reader is not None:
                reader.cancel()
            if session is not None:
                self.broker.disconnect(session)

    async def _read(
        self, session: Session, requests: AsyncIterator[agent_pb2.ConnectRequest]
    ) -> None:
        # Usage records touch no job state: they are appended by the ledger's own thread
        # while this stream goes on, and acknowledged by record id when done.
        try:
            async with asyncio.TaskGroup() as usage:
                await self._read_in_order(session, requests, usage)
        except ExceptionGroup as group:  # the stream's own error, as the handler expects it
            raise group.exceptions[0] from None

    async def _acknowledge_usage(self, session: Session, entry: bytes) -> None:
        ack = await self.broker.on_usage(session, entry)
        session.outbox.put_nowait(agent_pb2.ConnectResponse(usage_ack=ack))

    async def _read_in_order(
        self,
        session: Session,
        requests: AsyncIterator[agent_pb2.ConnectRequest],
        usage: asyncio.TaskGroup,
    ) -> None:
        async for req in requests:
            kind = req.WhichOneof("msg")
            if kind == "heartbeat":
                self.broker.heartbeat(session)
                session.outbox.put_nowait(agent_pb2.ConnectResponse(heartbeat=req.heartbeat))
            elif kind == "offer":
                self.broker.on_offer(session, wire.offer_from_proto(req.offer))
            elif kind == "claim_reply":
                await self.broker.on_claim_reply(session, req.claim_reply)
            elif kind == "job_update":
                await self.broker.on_job_update(session, req.job_update)
            elif kind == "log":
                chunk = req.log
                self.broker.on_log(
                    session,
                    LogChunk(
                        job_id=JobId(chunk.job_id),
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
