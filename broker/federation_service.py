"""FederationService: what a peer broker may ask of this one (forward a job here, follow
it, cancel it) and what an operator may read of the peering (ListPeers).

Every caller of the first three is a broker, proven by its certificate (the gate's
table); it acts only on the jobs it forwarded itself (`Broker.check_home`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from broker import authz
from broker.core import Broker
from broker.ledger import BrokerLedger
from broker.service import abort, unary
from core import wire
from core.errors import FailedPrecondition, InvalidArgument
from core.states import JobState
from core.types import CenterId, JobId, PoolId, PoolRef
from icx.v1 import federation_pb2, federation_pb2_grpc

if TYPE_CHECKING:
    from broker.witnessing import Witnessing
    from peering import PeerHost


def _home() -> str:
    """The calling broker's name."""
    who = authz.caller()
    if who.member is None:
        raise FailedPrecondition("federation needs membership: this broker runs --insecure")
    return who.member.name


class FederationServicer(federation_pb2_grpc.FederationServiceServicer):
    def __init__(
        self,
        broker: Broker,
        ledger: BrokerLedger | None = None,
        host: PeerHost | None = None,
        region: str = "",
    ) -> None:
        self.broker = broker
        self.ledger = ledger
        self.host = host
        self.region = region
        # The peers' witness keys and this broker's own, once peering.
        self.witnessing: Witnessing | None = None

    @unary
    async def ForwardJob(
        self, request: federation_pb2.ForwardJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> federation_pb2.ForwardJobResponse:
        home = _home()
        if not request.HasField("job"):
            raise InvalidArgument("job is required")
        job = wire.job_from_proto(request.job)
        ref = PoolRef(
            center_id=CenterId(wire.id_from_proto("center_id", request.center_id)),
            pool_id=PoolId(wire.id_from_proto("pool_id", request.pool_id)),
        )
        why, held = await self.broker.accept_forward(home, job, ref, request.explanation)
        reply = federation_pb2.ForwardJobResponse(accepted=not why, reason=why)
        if held is not None:
            reply.job.CopyFrom(wire.job_to_proto(held))
        return reply

    async def FollowJob(
        self, request: federation_pb2.FollowJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[federation_pb2.FollowJobResponse]:
        try:
            job_id = JobId(wire.job_id_from_proto(request.job_id))
            self.broker.check_home(_home(), job_id)
        except Exception as exc:
            await abort(context, exc)
            return
        event_seq, log_seq = request.after_event_seq, request.after_log_seq
        # The state of the last committed event read (those the caller holds included).
        held = [e for e in self.broker.events_after(job_id, 0) if e.seq <= event_seq]
        committed: JobState | None = held[-1].state if held else None
        while True:
            changed = self.broker.change_event(job_id)
            job = self.broker.get(job_id)
            sent = False
            # Output and events are read from the store: what is there is committed.
            for chunk in self.broker.logs_after(job_id, log_seq):
                log_seq = chunk.seq
                sent = True
                yield federation_pb2.FollowJobResponse(
                    log=wire.log_to_proto(chunk), job=wire.job_to_proto(job)
                )
            for event in self.broker.events_after(job_id, event_seq):
                event_seq = event.seq
                committed = event.state
                sent = True
                yield federation_pb2.FollowJobResponse(
                    event=wire.event_to_proto(event), job=wire.job_to_proto(job)
                )
            if not sent:  # the state as it is, so that the caller knows where it stands
                yield federation_pb2.FollowJobResponse(job=wire.job_to_proto(job))
            final = job.state.terminal or job.state == JobState.QUEUED
            if final and committed == job.state:
                # Ended (or handed back), and that change committed: the output written
                # before it is committed too (a store keeps its writes' order), and sent.
                return
            await changed.wait()

    @unary
    async def CancelForwarded(
        self,
        request: federation_pb2.CancelForwardedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> federation_pb2.CancelForwardedResponse:
        job_id = JobId(wire.job_id_from_proto(request.job_id))
        job = await self.broker.cancel_forwarded(_home(), job_id)
        return federation_pb2.CancelForwardedResponse(job=wire.job_to_proto(job))

    @unary
    async def JobRecords(
        self, request: federation_pb2.JobRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> federation_pb2.JobRecordsResponse:
        job = self.broker.check_home(_home(), JobId(wire.job_id_from_proto(request.job_id)))
        if self.ledger is None:
            raise FailedPrecondition("this broker keeps no ledger")
        runs = [f"{c.pool.center_id}/{c.claim_id}" for c in self.broker.claims.of_job(job.job_id)]
        bundles = []
        for entry in await self.ledger.run_entries(runs):
            text, _ = await self.ledger.prove(index=entry.index)
            bundles.append(text)
        return federation_pb2.JobRecordsResponse(bundles_json=bundles)

    @unary
    async def ListPeers(
        self, request: federation_pb2.ListPeersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> federation_pb2.ListPeersResponse:
        peers = self.broker.peers
        reply = federation_pb2.ListPeersResponse(region=self.region)
        if peers is None or self.host is None:
            return reply
        now = self.broker.clock.now_ms()
        reply.broker = peers.name
        reply.peer_address = self.host.address
        keys: dict[str, str] = {}
        if self.witnessing is not None:
            reply.witness_key = self.witnessing.key.verifier.text()
            keys = self.witnessing.witness_keys
        for summary in sorted(peers.views.values(), key=lambda s: s.broker):
            reply.peers.append(
                federation_pb2.PeerStatus(
                    broker=summary.broker,
                    region=summary.region,
                    address=summary.address,
                    version=summary.version,
                    age_ms=max(0, summary.age_ms(now)),
                    centers=len({p.ref.center_id for p in summary.pools}),
                    devices_free=sum(p.free for p in summary.pools),
                    live=peers.live(summary, now),
                    witness_key=keys.get(summary.broker, ""),
                )
            )
        counts = self.host.counts()
        reply.published = counts.published
        reply.received = counts.received
        reply.pulls = counts.pulls
        reply.pull_failures = counts.pull_failures
        for reason, n in counts.dropped.items():
            reply.dropped[str(reason)] = n
        reply.forwarded_out, reply.forwarded_in = peers.counts()
        return reply
