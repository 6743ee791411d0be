"""BrokerClient: the broker's user, admin, ledger and peering calls over a blocking gRPC
channel, for the CLI, the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from client import _calls
from core import national_wire as nw
from core.national import (
    CenterDetail,
    Overview,
    PolicyVersion,
    RoundSummary,
    TimeSeries,
)
from core.states import JobState
from core.types import Job, JobEvent, JobSpec, LogChunk
from core.views import CenterStatus, Federation, JobPage, QuoteLine, RoundDump, WhoAmI
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    national_pb2,
    national_pb2_grpc,
)
from identity.tls import channel

if TYPE_CHECKING:
    from identity import Credentials
    from ledger import ProofBundle, VerifierKey
    from ledger.bill import LoggedRecord, TenantBill

R = TypeVar("R")


class BrokerClient:
    """One broker, one tenant, one channel; close it (or use `with`). Every method
    returns domain values and raises the error tree (core.errors), never grpc.RpcError:
    NotFound, InvalidArgument naming the field, PermissionDenied, FailedPrecondition,
    Unavailable naming the address when the broker is not there or too slow."""

    def __init__(
        self,
        address: str,
        credentials: Credentials | None = None,
        *,
        tenant: str = "default",
        timeout_s: float = _calls.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.credentials = credentials
        # Who the caller is: its certificate's member, or (--insecure brokers) a declared
        # tenant.
        self.tenant = credentials.member.tenant if credentials else _calls.check_tenant(tenant)
        self.timeout_s = timeout_s
        self._metadata = _calls.metadata(tenant, credentials)
        self._channel = channel(address, credentials)
        self._broker = broker_pb2_grpc.BrokerServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._ledger = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self._federation = federation_pb2_grpc.FederationServiceStub(self._channel)
        self._national = national_pb2_grpc.NationalServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, method: Callable[..., R], request: Any, timeout_s: float | None) -> R:
        try:
            return method(
                request,
                metadata=self._metadata,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
            )
        except grpc.RpcError as err:
            _calls.raise_error(err, self.address, self.credentials is not None)

    # ------------------------------------------------------------ BrokerService

    def submit(self, spec: JobSpec, *, request_id: str = "", timeout_s: float | None = None) -> Job:
        """The job as accepted, once it is on the broker's disk. A retry with the same
        `request_id` returns the job accepted the first time."""
        reply = self._unary(
            self._broker.SubmitJob, _calls.submit_request(spec, request_id), timeout_s
        )
        return _calls.job_of(reply)

    def get_job(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        reply = self._unary(self._broker.GetJob, broker_pb2.GetJobRequest(job_id=job_id), timeout_s)
        return _calls.job_of(reply)

    def list_jobs(
        self, states: Iterable[JobState] = (), *, limit: int = 0, timeout_s: float | None = None
    ) -> JobPage:
        """Newest first, only in `states` (all when empty), at most `limit` (0: all),
        following the broker's pages."""
        states = tuple(states)
        pages: list[JobPage] = []
        got, token = 0, ""
        while True:
            request = _calls.list_request(states, limit, got, token)
            reply = self._unary(self._broker.ListJobs, request, timeout_s)
            pages.append(_calls.page_of(reply))
            got += len(reply.jobs)
            token = reply.next_page_token
            if not _calls.more_pages(reply, limit, got):
                return _calls.gathered(pages, limit)

    def cancel(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        reply = self._unary(
            self._broker.CancelJob, broker_pb2.CancelJobRequest(job_id=job_id), timeout_s
        )
        return _calls.job_of(reply)

    def watch(
        self,
        job_id: str,
        *,
        include_logs: bool = False,
        follow: bool = True,
        timeout_s: float | None = None,
    ) -> Iterator[JobEvent | LogChunk]:
        """The job's events (and output) from the start; with `follow`, until it ends
        (no deadline unless `timeout_s`), else what is recorded now."""
        request = _calls.watch_request(job_id, include_logs=include_logs, snapshot=not follow)
        timeout = timeout_s if timeout_s is not None or follow else self.timeout_s
        try:
            for reply in self._broker.WatchJob(request, metadata=self._metadata, timeout=timeout):
                yield _calls.watch_item(reply)
        except grpc.RpcError as err:
            _calls.raise_error(err, self.address, self.credentials is not None)

    def centers(self, *, timeout_s: float | None = None) -> list[CenterStatus]:
        reply = self._unary(self._broker.ListCenters, broker_pb2.ListCentersRequest(), timeout_s)
        return _calls.centers_of(reply)

    def quote(self, spec: JobSpec, *, timeout_s: float | None = None) -> list[QuoteLine]:
        """The pools that could run `spec`, best first (nothing is submitted)."""
        reply = self._unary(self._broker.QuoteJob, _calls.quote_request(spec), timeout_s)
        return _calls.quote_of(reply)

    # ------------------------------------------------------------- AdminService

    def whoami(self, *, timeout_s: float | None = None) -> WhoAmI:
        """Who the broker takes this client to be."""
        reply = self._unary(self._admin.WhoAmI, admin_pb2.WhoAmIRequest(), timeout_s)
        return _calls.whoami_of(reply)

    def update_revocations(self, pem: bytes, *, timeout_s: float | None = None) -> int:
        """Hand the broker a newer signed revocation list; its number."""
        request = admin_pb2.UpdateRevocationsRequest(revocation_list=pem)
        return int(self._unary(self._admin.UpdateRevocations, request, timeout_s).number)

    def dump_round(self, *, current: bool = False, timeout_s: float | None = None) -> RoundDump:
        """The latest matching round, or with `current` the queue and offers as now."""
        reply = self._unary(
            self._admin.DumpRound, admin_pb2.DumpRoundRequest(current=current), timeout_s
        )
        return _calls.dump_of(reply)

    # --------------------------------------------------------- NationalService

    def overview(self, *, period_ms: int = 0, timeout_s: float | None = None) -> Overview:
        """Every center's and hub's figures over the last `period_ms` (0: one hour), the totals
        and the flows between hubs."""
        request = national_pb2.GetOverviewRequest(period_ms=period_ms)
        reply = self._unary(self._national.GetOverview, request, timeout_s)
        return nw.overview_from_proto(reply)

    def center_figures(
        self, center_id: str, *, period_ms: int = 0, timeout_s: float | None = None
    ) -> CenterDetail:
        """One center's figures over the last `period_ms` and its running jobs; NotFound if
        the broker knows no such center."""
        request = national_pb2.GetCenterRequest(center_id=center_id, period_ms=period_ms)
        reply = self._unary(self._national.GetCenter, request, timeout_s)
        return nw.center_detail_from_proto(reply)

    def time_series(
        self, *, window_ms: int = 0, step_ms: int = 0, timeout_s: float | None = None
    ) -> TimeSeries:
        """The last `window_ms` (0: one hour) in steps of `step_ms` (0: one minute)."""
        request = national_pb2.GetTimeSeriesRequest(window_ms=window_ms, step_ms=step_ms)
        reply = self._unary(self._national.GetTimeSeries, request, timeout_s)
        return nw.series_from_proto(reply)

    def rounds(self, *, limit: int = 0, timeout_s: float | None = None) -> list[RoundSummary]:
        """The latest matching rounds, newest first (`limit` 0: 20)."""
        request = national_pb2.ListRoundsRequest(limit=limit)
        reply = self._unary(self._national.ListRounds, request, timeout_s)
        return [nw.round_from_proto(r) for r in reply.rounds]

    def policy(self, *, timeout_s: float | None = None) -> PolicyVersion:
        """The coordinator's policy in force (version 0: never set on this broker)."""
        request = national_pb2.GetPolicyRequest()
        reply = self._unary(self._national.GetPolicy, request, timeout_s)
        return nw.policy_from_proto(reply.policy)

    def set_policy(
        self, policy_json: str, *, comment: str = "", timeout_s: float | None = None
    ) -> PolicyVersion:
        """A new policy (a coordinator only), in force from the next round; InvalidArgument
        naming the field for a bad one, and nothing changes."""
        request = national_pb2.SetPolicyRequest(policy_json=policy_json, comment=comment)
        reply = self._unary(self._national.SetPolicy, request, timeout_s)
        return nw.policy_from_proto(reply.policy)

    def policy_history(
        self, *, limit: int = 0, timeout_s: float | None = None
    ) -> list[PolicyVersion]:
        """The policy's stored changes, newest first (`limit` 0: 20)."""
        request = national_pb2.ListPolicyChangesRequest(limit=limit)
        reply = self._unary(self._national.ListPolicyChanges, request, timeout_s)
        return [nw.policy_from_proto(c) for c in reply.changes]

    # -------------------------------------------------------- FederationService

    def peers(self, *, timeout_s: float | None = None) -> Federation:
        """The broker's peering: its peer brokers, their summaries' version and age, the
        gossip counters and the forwarded jobs (`Federation.peering` False: the broker
        does not peer)."""
        request = federation_pb2.ListPeersRequest()
        reply = self._unary(self._federation.ListPeers, request, timeout_s)
        return _calls.federation_of(reply)

    # ------------------------------------------------------------ LedgerService

    def log_key(self, *, timeout_s: float | None = None) -> VerifierKey:
        """The ledger's verifier key, as the broker names it (trust it only once checked
        out of band)."""
        from ledger import VerifierKey

        reply = self._unary(self._ledger.GetLogKey, ledger_pb2.GetLogKeyRequest(), timeout_s)
        return VerifierKey.parse(reply.key)

    def checkpoint(self, *, timeout_s: float | None = None) -> str:
        """The latest checkpoint: a signed note, byte for byte."""
        reply = self._unary(
            self._ledger.GetCheckpoint, ledger_pb2.GetCheckpointRequest(), timeout_s
        )
        return str(reply.note)

    def prove(
        self,
        *,
        record_id: str | None = None,
        index: int | None = None,
        timeout_s: float | None = None,
    ) -> ProofBundle:
        """A self-contained inclusion proof of one entry, by record id or by index."""
        from ledger import ProofBundle

        request = _calls.prove_request(record_id, index)
        reply = self._unary(self._ledger.ProveRecord, request, timeout_s)
        return ProofBundle.from_json(reply.bundle_json)

    def statement(self, period: str, *, party: str = "", timeout_s: float | None = None) -> bytes:
        """The signed settlement statement of a month (YYYY-MM), as the ledger signed it."""
        request = ledger_pb2.GetStatementRequest(period=period, party=party)
        return bytes(self._unary(self._ledger.GetStatement, request, timeout_s).statement)

    def consistency_proof(
        self, size1: int, size2: int, *, timeout_s: float | None = None
    ) -> list[bytes]:
        """The proof that the tree at size2 extends the tree at size1 (RFC 9162)."""
        request = ledger_pb2.GetConsistencyProofRequest(size1=size1, size2=size2)
        return list(self._unary(self._ledger.GetConsistencyProof, request, timeout_s).proof)

    def add_cosignature(self, note: str, *, timeout_s: float | None = None) -> int:
        """Hand the broker a checkpoint with a witness's cosignature; returns how many
        cosignatures it keeps."""
        request = ledger_pb2.AddCosignatureRequest(note=note)
        return int(self._unary(self._ledger.AddCosignature, request, timeout_s).kept)

    def job_records(self, job_id: str, *, timeout_s: float | None = None) -> list[LoggedRecord]:
        """Every usage record logged for the job (each metering interval of each run),
        oldest first, with its index in the log, following the broker's pages."""
        out: list[LoggedRecord] = []
        after = 0
        while True:
            request = _calls.job_records_request(job_id, after)
            reply = self._unary(self._ledger.ListJobRecords, request, timeout_s)
            out.extend(_calls.logged_records_of(reply))
            after = reply.next_after_index
            if not after:
                return out

    def tenant_bill(
        self, period: str, *, tenant: str = "", timeout_s: float | None = None
    ) -> TenantBill:
        """A tenant's jobs charged in a month (YYYY-MM) with their totals: the caller's
        own tenant, or for a coordinator the one it names."""
        request = ledger_pb2.GetTenantBillRequest(period=period, tenant=tenant)
        reply = self._unary(self._ledger.GetTenantBill, request, timeout_s)
        return _calls.tenant_bill_of(reply)
