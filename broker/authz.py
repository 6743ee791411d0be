"""Who may call what, and what "in its own name" means: the one table (RULES) and the
one gate that applies it to every call the broker serves.

The gate (a server interceptor) takes the caller from the verified peer certificate
(identity.tls.Trust), refuses a caller whose role has no right to the method, and leaves
the caller in a context variable for the call. Where "own name" depends on the object a
call names (a job's tenant, a statement's party, a stream's center), the handler asks
this module (check_job, jobs_tenant, check_center, statement_party, check_record): the
rule's scope says which applies, this module says what it allows.

Without a Trust (`--insecure`, loopback only) the caller is whoever it declares: the
tenant in the x-icx-tenant header, the center in its Hello, with every role.
"""

from __future__ import annotations

import contextvars
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from core import wire
from core.errors import IcxError, InvalidArgument, PermissionDenied
from core.status import status_for
from core.types import Job
from identity import Member, Role
from identity.tls import Trust

__all__ = [
    "RULES",
    "Caller",
    "Gate",
    "Rule",
    "Scope",
    "bill_tenant",
    "caller",
    "check_center",
    "check_job",
    "check_record",
    "job_tenant",
    "statement_party",
]

log = logging.getLogger("icx.broker.authz")

TENANT_METADATA = "x-icx-tenant"
DEFAULT_TENANT = "default"


class Scope(enum.Enum):
    """What "its own name" means for a method."""

    NONE = "no party's object"
    OWN_TENANT = "acts for the caller's tenant"
    TENANT_JOB = "the named job is the caller's tenant's (a coordinator: any job)"
    TENANT_JOBS = "lists the caller's tenant's jobs (a coordinator: every job)"
    OWN_CENTER = "the stream carries only the caller's own center"
    NAMED_PARTY = "a statement or record naming the caller (a coordinator: any)"
    TENANT_BILL = "the caller's tenant's bill (a coordinator: any tenant's it names)"
    FEDERATION = "changes or reads the federation's policy, rounds or membership"
    PEER_JOB = "a job the calling broker forwarded here (or forwards now)"


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[Role]
    scope: Scope


USERS = frozenset({Role.USER})
COORDINATOR = frozenset({Role.COORDINATOR})
EVERYONE = frozenset({Role.USER, Role.CENTER, Role.BROKER, Role.COORDINATOR})
READERS = frozenset({Role.USER, Role.COORDINATOR})
BROKERS = frozenset({Role.BROKER})
# The national view: the coordinator, and peer brokers (a federation's view is built
# from its members').
NATIONAL_READERS = frozenset({Role.COORDINATOR, Role.BROKER})

# Every method the broker serves has a row; a method without one is refused.
RULES: dict[str, Rule] = {
    "/icx.v1.BrokerService/SubmitJob": Rule(USERS, Scope.OWN_TENANT),
    "/icx.v1.BrokerService/GetJob": Rule(READERS, Scope.TENANT_JOB),
    "/icx.v1.BrokerService/ListJobs": Rule(READERS, Scope.TENANT_JOBS),
    "/icx.v1.BrokerService/CancelJob": Rule(USERS, Scope.TENANT_JOB),
    "/icx.v1.BrokerService/WatchJob": Rule(READERS, Scope.TENANT_JOB),
    "/icx.v1.BrokerService/QuoteJob": Rule(READERS, Scope.NONE),
    "/icx.v1.BrokerService/ListCenters": Rule(EVERYONE, Scope.NONE),
    "/icx.v1.AgentService/Connect": Rule(frozenset({Role.CENTER}), Scope.OWN_CENTER),
    "/icx.v1.AdminService/DumpRound": Rule(COORDINATOR, Scope.FEDERATION),
    "/icx.v1.AdminService/UpdateRevocations": Rule(COORDINATOR, Scope.FEDERATION),
    "/icx.v1.AdminService/WhoAmI": Rule(EVERYONE, Scope.NONE),
    "/icx.v1.LedgerService/GetLogKey": Rule(EVERYONE, Scope.NONE),
    "/icx.v1.LedgerService/GetCheckpoint": Rule(EVERYONE, Scope.NONE),
    "/icx.v1.LedgerService/GetConsistencyProof": Rule(EVERYONE, Scope.NONE),
    "/icx.v1.LedgerService/ProveRecord": Rule(EVERYONE, Scope.NAMED_PARTY),
    "/icx.v1.LedgerService/GetStatement": Rule(EVERYONE, Scope.NAMED_PARTY),
    "/icx.v1.LedgerService/AddCosignature": Rule(
        frozenset({Role.BROKER, Role.COORDINATOR}), Scope.NONE
    ),
    "/icx.v1.LedgerService/ListJobRecords": Rule(READERS, Scope.TENANT_JOB),
    "/icx.v1.LedgerService/GetTenantBill": Rule(READERS, Scope.TENANT_BILL),
    "/icx.v1.FederationService/ForwardJob": Rule(BROKERS, Scope.PEER_JOB),
    "/icx.v1.FederationService/FollowJob": Rule(BROKERS, Scope.PEER_JOB),
    "/icx.v1.FederationService/CancelForwarded": Rule(BROKERS, Scope.PEER_JOB),
    "/icx.v1.FederationService/JobRecords": Rule(BROKERS, Scope.PEER_JOB),
    "/icx.v1.FederationService/ListPeers": Rule(
        frozenset({Role.USER, Role.BROKER, Role.COORDINATOR}), Scope.NONE
    ),
    "/icx.v1.NationalService/GetOverview": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/icx.v1.NationalService/GetCenter": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/icx.v1.NationalService/GetTimeSeries": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/icx.v1.NationalService/ListRounds": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/icx.v1.NationalService/GetPolicy": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/icx.v1.NationalService/SetPolicy": Rule(COORDINATOR, Scope.FEDERATION),
    "/icx.v1.NationalService/ListPolicyChanges": Rule(NATIONAL_READERS, Scope.FEDERATION),
    "/grpc.health.v1.Health/Check": Rule(EVERYONE, Scope.NONE),
    "/grpc.health.v1.Health/Watch": Rule(EVERYONE, Scope.NONE),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(EVERYONE, Scope.NONE),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """The party behind a call. `member` is None only under --insecure."""

    member: Member | None
    tenant: str = ""

    @property
    def sees_all(self) -> bool:
        return self.member is None or self.member.role is Role.COORDINATOR

    @property
    def party(self) -> str:
        """The name the caller has in the ledger: a user's tenant, else its own name."""
        if self.member is None:
            return self.tenant
        return self.member.tenant if self.member.role is Role.USER else self.member.name

    def describe(self) -> str:
        return self.member.describe() if self.member else f"unauthenticated tenant {self.tenant}"


_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("icx_caller")


def caller() -> Caller:
    """The caller of the call being served (set by the Gate)."""
    return _CALLER.get()


def job_tenant() -> str:
    """The tenant a submit acts for: the caller's own."""
    return caller().tenant


def check_job(job: Job) -> Job:
    """The job, if the caller may see and act on it."""
    who = caller()
    if not who.sees_all and job.tenant != who.tenant:
        raise PermissionDenied(f"job {job.job_id} belongs to another tenant")
    return job


def jobs_tenant() -> str | None:
    """Whose jobs a listing shows: the caller's tenant, or None for every tenant."""
    who = caller()
    return None if who.sees_all else who.tenant


def check_center(center_id: str) -> None:
    """A center's stream names only the center its certificate names."""
    who = caller()
    if who.member is not None and center_id != who.member.name:
        raise PermissionDenied(
            f"this certificate is for center {who.member.name}, not {center_id!r}"
        )


def statement_party(asked: str) -> str:
    """The party whose statement to read: any (or "" for all) for a coordinator, else
    the caller's own."""
    who = caller()
    if who.member is not None and who.member.role is Role.COORDINATOR:
        return asked
    if asked and asked != who.party:
        raise PermissionDenied(f"{who.describe()} reads only its own statement, not {asked!r}")
    return who.party


def bill_tenant(asked: str) -> str:
    """The tenant whose bill to read: a user's own; the one a coordinator names."""
    who = caller()
    if who.sees_all:
        if asked or who.tenant:
            return asked or who.tenant
        raise InvalidArgument("name the tenant whose bill to read (--tenant)")
    if asked and asked != who.tenant:
        raise PermissionDenied(f"{who.describe()} reads only its own tenant's bill, not {asked!r}")
    return who.tenant


def check_record(parties: tuple[str, ...]) -> None:
    """A usage record is read only by the parties it names (and a coordinator)."""
    who = caller()
    if parties and not who.sees_all and who.party not in parties:
        raise PermissionDenied(f"{who.describe()} is not named in this record")


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Admits each call: the caller from its certificate, the method's rule from RULES."""

    def __init__(
        self, trust: Trust | None, on_refused: Callable[[str, grpc.StatusCode], None] | None = None
    ) -> None:
        self.trust = trust
        self._on_refused = on_refused

    def admit(self, method: str, context: Any) -> Caller:
        rule = RULES.get(method)
        if rule is None:
            raise PermissionDenied(f"{method} has no authorization rule")
        if self.trust is None:
            return Caller(None, tenant=_declared_tenant(context))
        member = self.trust.member(context)
        if member.role not in rule.roles:
            raise PermissionDenied(f"a {member.role} may not call {method.rpartition('/')[2]}")
        tenant = member.tenant if member.role is Role.USER else ""
        return Caller(member, tenant=tenant)

    async def _enter(self, method: str, context: Any) -> None:
        """Admit the call or abort it. Each call is served in its own task, so the
        caller set here is seen by that call alone."""
        try:
            who = self.admit(method, context)
        except IcxError as exc:
            code = status_for(exc)
            if self._on_refused is not None:
                self._on_refused(method, code)
            log.debug("refused %s: %s", method, exc)
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises
        _CALLER.set(who)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        enter = self._enter

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await enter(method, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )

        streaming = handler.unary_stream or handler.stream_stream
        if streaming is None:  # client streaming: none of ours; refuse rather than pass
            raise PermissionDenied(f"{method}: client-streaming methods are not served")

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await enter(method, context)
            result = streaming(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a handler that writes through context.write
                await result

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return make(stream, handler.request_deserializer, handler.response_serializer)


def _declared_tenant(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA and value:
            return wire.id_from_proto("tenant", str(value))
    return DEFAULT_TENANT
