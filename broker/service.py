"""The broker's gRPC faces for users, the coordinator and auditors: BrokerService,
AdminService and LedgerService (the agents' stream is broker.agent_link).

Each method converts the request (core.wire), calls the Broker, converts back. One
table (core.status) maps the package's errors to status codes; anything else is logged
and sent as a bare INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker import authz
from broker.core import Broker
from broker.ledger import BrokerLedger
from core import wire
from core.errors import IcxError, InvalidArgument, NotFound
from core.money import CURRENCY
from core.status import status_for
from core.types import JobId
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)
from matcher import dump_problem, solution_to_json

log = logging.getLogger("icx.broker.service")


# A page of jobs: the default and the most a caller may ask for; and the size at which a
# page stops early (under gRPC's 4 MiB default message limit).
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
MAX_PAGE_BYTES = 3 << 20
PAGE_STEP = 20

MAX_RECORD_ID = 128

R = TypeVar("R")


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
        job = await self.broker.submit(
            authz.job_tenant(), spec, wire.request_id_from_proto(request.request_id)
        )
        return broker_pb2.SubmitJobResponse(job=wire.job_to_proto(job))

    @unary
    async def GetJob(
        self, request: broker_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.GetJobResponse:
        job = authz.check_job(self.broker.get(wire.job_id_from_proto(request.job_id)))
        return broker_pb2.GetJobResponse(job=wire.job_to_proto(job))

    @unary
    async def ListJobs(
        self, request: broker_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.ListJobsResponse:
        if not 0 <= request.limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be 0..{MAX_PAGE}, got {request.limit}")
        if len(request.page_token) > 64:
            raise InvalidArgument("page_token is not one this broker gave")
        limit = request.limit or DEFAULT_PAGE
        states = [wire.state_from_proto(s) for s in request.states]
        tenant = authz.jobs_tenant()
        try:
            jobs = self.broker.jobs.page(states, request.page_token, tenant)
        except NotFound as exc:
            raise InvalidArgument(f"page_token is not one this broker gave: {exc}") from exc
        reply = broker_pb2.ListJobsResponse(total=self.broker.count_jobs(states, tenant))
        # The page is taken at once (a walk of the page, not of every job), then built a
        # few jobs per turn of the loop, so that a flood of reads leaves room for the rest.
        page = list(itertools.islice(jobs, limit + 1))
        size = 0
        for n, job in enumerate(page[:limit]):
            if size > MAX_PAGE_BYTES:
                break
            if n and n % PAGE_STEP == 0:
                await asyncio.sleep(0)
            msg = wire.job_to_proto(job)
            size += msg.ByteSize()
            reply.jobs.append(msg)
        if len(reply.jobs) < len(page):
            reply.next_page_token = reply.jobs[-1].job_id
        return reply

    @unary
    async def CancelJob(
        self, request: broker_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.CancelJobResponse:
        job = authz.check_job(self.broker.get(wire.job_id_from_proto(request.job_id)))
        job = await self.broker.cancel(job.tenant, job.job_id)
        return broker_pb2.CancelJobResponse(job=wire.job_to_proto(job))

    async def WatchJob(
        self, request: broker_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[broker_pb2.WatchJobResponse]:
        try:
            job = authz.check_job(self.broker.get(wire.job_id_from_proto(request.job_id)))
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
        quoted = self.broker.quote(wire.spec_from_proto(request.spec))
        return broker_pb2.QuoteJobResponse(lines=[wire.quote_line_to_proto(q) for q in quoted])

    @unary
    async def ListCenters(
        self, request: broker_pb2.ListCentersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> broker_pb2.ListCentersResponse:
        return broker_pb2.ListCentersResponse(
            centers=[wire.center_status_to_proto(v) for v in self.broker.center_views()]
        )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @unary
    async def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WhoAmIResponse:
        who = authz.caller()
        if who.member is None:
            return admin_pb2.WhoAmIResponse(
                name=who.tenant, role="user", tenant=who.tenant, authenticated=False
            )
        m = who.member
        return admin_pb2.WhoAmIResponse(
            name=m.name,
            role=str(m.role),
            region=m.region,
            tenant=m.tenant,
            serial=f"{m.serial:x}",
            issuer=m.issuer,
            not_after_ms=int(m.not_after.timestamp() * 1000),
            authenticated=True,
        )

    @unary
    async def UpdateRevocations(
        self,
        request: admin_pb2.UpdateRevocationsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.UpdateRevocationsResponse:
        taken = await self.broker.take_revocations(
            request.revocation_list, by=authz.caller().describe()
        )
        return admin_pb2.UpdateRevocationsResponse(number=taken.number, revoked=len(taken.serials))

    @unary
    async def DumpRound(
        self, request: admin_pb2.DumpRoundRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.DumpRoundResponse:
        last = self.broker.last_round
        if request.current or last is None:
            problem = self.broker.current_problem()
            return admin_pb2.DumpRoundResponse(
                round=0,
                at_ms=self.broker.clock.now_ms(),
                problem_json=json.dumps(dump_problem(problem), indent=1),
            )
        return admin_pb2.DumpRoundResponse(
            round=last.number,
            at_ms=last.at_ms,
            problem_json=json.dumps(dump_problem(last.problem), indent=1),
            solution_json=json.dumps(solution_to_json(last.solution), indent=1),
        )


# The most records one ListJobRecords reply carries (each a signed entry under 2 KiB).
RECORDS_PAGE = 500


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, ledger: BrokerLedger, broker: Broker | None = None) -> None:
        """`broker`: the jobs and claims that a job's records are found by (without
        one, ListJobRecords knows no job)."""
        self.ledger = ledger
        self.broker = broker

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
            if len(request.record_id) > MAX_RECORD_ID:  # the ledger's own bound
                raise InvalidArgument(f"record_id must be at most {MAX_RECORD_ID} characters")
            text, parties = await self.ledger.prove(record_id=request.record_id)
        elif which == "index":
            if request.index < 0:
                raise InvalidArgument(f"index must be >= 0, got {request.index}")
            text, parties = await self.ledger.prove(index=request.index)
        else:
            raise InvalidArgument("name a record_id or an index")
        authz.check_record(parties)
        return ledger_pb2.ProveRecordResponse(bundle_json=text)

    @unary
    async def GetStatement(
        self, request: ledger_pb2.GetStatementRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GetStatementResponse:
        asked = wire.id_from_proto("party", request.party) if request.party else ""
        party = authz.statement_party(asked)
        return ledger_pb2.GetStatementResponse(
            statement=await self.ledger.statement(request.period, party)
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

    @unary
    async def ListJobRecords(
        self,
        request: ledger_pb2.ListJobRecordsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ledger_pb2.ListJobRecordsResponse:
        if self.broker is None:
            raise NotFound("this broker keeps no jobs")
        if request.after_index < 0:
            raise InvalidArgument(f"after_index must be >= 0, got {request.after_index}")
        job = authz.check_job(self.broker.get(wire.job_id_from_proto(request.job_id)))
        runs = [f"{c.pool.center_id}/{c.claim_id}" for c in self.broker.claims.of_job(job.job_id)]
        own = [(e.index, e.leaf) for e in await self.ledger.run_entries(runs)]
        # What ran at a peer broker: the records this broker accepted from the peer's log.
        accepted = await self.ledger.accepted_of_job(job.job_id)
        entries = sorted(e for e in (*own, *accepted) if e[0] > request.after_index)
        page = entries[:RECORDS_PAGE]
        more = len(entries) > len(page)
        return ledger_pb2.ListJobRecordsResponse(
            records=[ledger_pb2.JobRecord(index=i, entry=leaf) for i, leaf in page],
            next_after_index=page[-1][0] if more else 0,
        )

    @unary
    async def GetTenantBill(
        self,
        request: ledger_pb2.GetTenantBillRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ledger_pb2.GetTenantBillResponse:
        asked = wire.id_from_proto("tenant", request.tenant) if request.tenant else ""
        tenant = authz.bill_tenant(asked)
        size, jobs = await self.ledger.tenant_bill(request.period, tenant)
        return ledger_pb2.GetTenantBillResponse(
            tenant=tenant,
            period=request.period,
            currency=CURRENCY,
            checkpoint_size=size,
            jobs=[
                ledger_pb2.JobBill(
                    job_id=j.job_id,
                    records=j.records,
                    device_s=j.device_s,
                    energy_wh=j.energy_wh,
                    carbon_g=j.carbon_g,
                    charge_minor=j.charge_minor,
                )
                for j in jobs
            ],
        )
