"""What the two clients share: the metadata, each request built from domain values and
each reply read back into them (through core.wire), and the one translation of a gRPC
status into the error tree. The clients differ only in how they wait."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

import grpc

from core import wire
from core.errors import InvalidArgument, Unauthenticated, Unavailable
from core.states import JobState
from core.status import error_for
from core.types import Job, JobEvent, JobSpec, LogChunk
from core.views import (
    CenterStatus,
    Federation,
    JobPage,
    PeerView,
    QuoteLine,
    RoundDump,
    WhoAmI,
)
from icx.v1 import admin_pb2, broker_pb2, federation_pb2, ledger_pb2
from identity import Credentials

if TYPE_CHECKING:  # the ledger is loaded by the calls that use it
    from ledger.bill import LoggedRecord, TenantBill

TENANT_METADATA = "x-icx-tenant"
DEFAULT_TIMEOUT_S = 10.0


def metadata(tenant: str, credentials: Credentials | None) -> tuple[tuple[str, str], ...]:
    """A declared tenant, for a broker that runs --insecure; with credentials the broker
    reads who the caller is from its certificate, and nothing is declared."""
    return () if credentials is not None else ((TENANT_METADATA, tenant),)


def check_tenant(tenant: str) -> str:
    if not tenant or any(c.isspace() for c in tenant):
        raise InvalidArgument(f"tenant must be a non-empty name without spaces, got {tenant!r}")
    return tenant


def raise_error(err: grpc.RpcError, address: str, secure: bool = False) -> NoReturn:
    """Raise the error tree's error for a failed call, keeping the gRPC error as the cause.
    A peer that is not there or does not answer in time is Unavailable, naming it; one
    that ends the TLS handshake is Unauthenticated."""
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and secure and _refused_in_handshake(details):
        raise Unauthenticated(
            f"the broker at {address} refused the connection in the TLS handshake: it does "
            "not take this certificate (not admitted to its federation, or expired), or "
            f"its own certificate does not name {address.rpartition(':')[0]} ({details})"
        ) from err
    if code == grpc.StatusCode.UNAVAILABLE:
        raise Unavailable(f"broker unreachable at {address}: {details}") from err
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise Unavailable(f"broker at {address} did not answer in time ({details})") from err
    raise error_for(code, details) from err


# ------------------------------------------------------------ BrokerService


def submit_request(spec: JobSpec, request_id: str) -> broker_pb2.SubmitJobRequest:
    return broker_pb2.SubmitJobRequest(spec=wire.spec_to_proto(spec), request_id=request_id)


def job_of(reply: broker_pb2.SubmitJobResponse | broker_pb2.GetJobResponse) -> Job:
    return wire.job_from_proto(reply.job)


# The most jobs the broker gives in one page.
MAX_PAGE = 1_000


def list_request(
    states: Iterable[JobState], limit: int, got: int = 0, page_token: str = ""
) -> broker_pb2.ListJobsRequest:
    """The request for the next page, `got` jobs already in hand of `limit` (0: all)."""
    if limit < 0:
        raise InvalidArgument(f"limit must be >= 0 (0: all), got {limit}")
    size = MAX_PAGE if limit == 0 else min(MAX_PAGE, limit - got)
    return broker_pb2.ListJobsRequest(
        states=[wire.state_to_proto(s) for s in states], limit=size, page_token=page_token
    )


def page_of(reply: broker_pb2.ListJobsResponse) -> JobPage:
    return wire.job_page_from_proto(reply)


def gathered(pages: list[JobPage], limit: int) -> JobPage:
    """The pages as one, at most `limit` jobs (0: all). Jobs may change state between
    pages; the total is the latest page's, never less than the jobs in hand."""
    jobs = [j for p in pages for j in p.jobs]
    if limit:
        jobs = jobs[:limit]
    total = max(pages[-1].total, len(jobs)) if pages else 0
    return JobPage(jobs=tuple(jobs), total=total)


def more_pages(reply: broker_pb2.ListJobsResponse, limit: int, got: int) -> bool:
    return bool(reply.next_page_token) and (limit == 0 or got < limit)


def watch_request(job_id: str, *, include_logs: bool, snapshot: bool) -> broker_pb2.WatchJobRequest:
    return broker_pb2.WatchJobRequest(job_id=job_id, include_logs=include_logs, snapshot=snapshot)


def watch_item(reply: broker_pb2.WatchJobResponse) -> JobEvent | LogChunk:
    if reply.HasField("log"):
        return wire.log_from_proto(reply.log)
    return wire.event_from_proto(reply.event)


def centers_of(reply: broker_pb2.ListCentersResponse) -> list[CenterStatus]:
    return [wire.center_status_from_proto(c) for c in reply.centers]


def quote_request(spec: JobSpec) -> broker_pb2.QuoteJobRequest:
    return broker_pb2.QuoteJobRequest(spec=wire.spec_to_proto(spec))


def quote_of(reply: broker_pb2.QuoteJobResponse) -> list[QuoteLine]:
    return [wire.quote_line_from_proto(q) for q in reply.lines]


# ------------------------------------------------------------- AdminService


def dump_of(reply: admin_pb2.DumpRoundResponse) -> RoundDump:
    return wire.round_dump_from_proto(reply)


def whoami_of(reply: admin_pb2.WhoAmIResponse) -> WhoAmI:
    return WhoAmI(
        name=reply.name,
        role=reply.role,
        region=reply.region,
        tenant=reply.tenant,
        serial=reply.serial,
        issuer=reply.issuer,
        not_after_ms=reply.not_after_ms,
        authenticated=reply.authenticated,
    )


# -------------------------------------------------------- FederationService


def federation_of(reply: federation_pb2.ListPeersResponse) -> Federation:
    """A broker's peering as it reports it; an empty broker name: it does not peer."""
    return Federation(
        broker=reply.broker,
        region=reply.region,
        peer_address=reply.peer_address,
        peers=tuple(
            PeerView(
                broker=p.broker,
                region=p.region,
                address=p.address,
                version=p.version,
                age_ms=p.age_ms,
                centers=p.centers,
                devices_free=p.devices_free,
                live=p.live,
                witness_key=p.witness_key,
            )
            for p in reply.peers
        ),
        published=reply.published,
        received=reply.received,
        pulls=reply.pulls,
        pull_failures=reply.pull_failures,
        dropped=tuple(sorted(reply.dropped.items())),
        forwarded_out=reply.forwarded_out,
        forwarded_in=reply.forwarded_in,
        witness_key=reply.witness_key,
    )


# ------------------------------------------------------------ LedgerService


def prove_request(record_id: str | None, index: int | None) -> ledger_pb2.ProveRecordRequest:
    if (record_id is None) == (index is None):
        raise InvalidArgument("name exactly one of record_id and index")
    if record_id is not None:
        return ledger_pb2.ProveRecordRequest(record_id=record_id)
    return ledger_pb2.ProveRecordRequest(index=index)


def job_records_request(job_id: str, after_index: int) -> ledger_pb2.ListJobRecordsRequest:
    return ledger_pb2.ListJobRecordsRequest(job_id=job_id, after_index=after_index)


def logged_records_of(reply: ledger_pb2.ListJobRecordsResponse) -> list[LoggedRecord]:
    """The reply's records, each parsed (and so checked: its figures and shape) on
    arrival; a record that does not parse raises the ledger's InvalidRecord."""
    from ledger import SignedRecord
    from ledger.bill import LoggedRecord

    return [
        LoggedRecord(index=r.index, signed=SignedRecord.from_entry(r.entry)) for r in reply.records
    ]


def tenant_bill_of(reply: ledger_pb2.GetTenantBillResponse) -> TenantBill:
    from ledger.bill import JobTotals, TenantBill

    return TenantBill(
        tenant=reply.tenant,
        period=reply.period,
        currency=reply.currency,
        checkpoint_size=reply.checkpoint_size,
        jobs=tuple(
            JobTotals(
                job_id=j.job_id,
                consumer=reply.tenant,
                currency=reply.currency,
                records=j.records,
                device_s=j.device_s,
                energy_wh=j.energy_wh,
                carbon_g=j.carbon_g,
                charge_minor=j.charge_minor,
            )
            for j in reply.jobs
        ),
    )


def _refused_in_handshake(details: str) -> bool:
    """gRPC reports a connection that TLS ended as UNAVAILABLE; tell it from a broker
    that is not listening (connection refused) or not answering (timeout)."""
    lowered = details.lower()
    return any(w in lowered for w in ("handshake", "socket closed", "ssl", "certificate"))
