"""The two seams between matching and the centers.

Capacity reaches a round through `CapacitySource`s: what pools exist, where, at what
price, and how many devices the broker may believe are free. A round's choice leaves
through a `ClaimRoute`, chosen by the pool's broker: this broker's own centers
(`LocalCenters`: offers from connected agents, a reserve sent on the agent's stream), and
the peer brokers (`broker.peers.Peers`: their gossiped summaries, a job forwarded to the
broker that owns the chosen center).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from broker.centers import Centers, Reserve
from broker.claims import ClaimBook, ClaimRecord, PendingClaim
from broker.jobs import JobBook
from core.clock import Clock
from core.states import JobState
from core.types import LOCAL_BROKER, ClaimId, JobId, Pool, PoolRef

log = logging.getLogger("icx.broker")

# The route for every pool whose broker has no route of its own: the peer brokers.
PEER_BROKERS = "*"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolCapacity:
    """One pool as a round sees it."""

    ref: PoolRef
    region: str
    pool: Pool
    free: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    images: tuple[str, ...] = ()  # the center's accepted container images


class CapacitySource(Protocol):
    def capacity(self, at_ms: int, *, include_full: bool = False) -> Iterable[PoolCapacity]:
        """Pools with a live offer; with `include_full`, also those with nothing free."""
        ...


class ClaimRoute(Protocol):
    async def claim(self, job_id: JobId, ref: PoolRef, explanation: str) -> bool:
        """Claim `ref`'s devices for the job, if it is still queued (the job becomes
        CLAIMED once the claim is sent); False if it is not, or if the pool is no longer
        reachable. The job is read afresh: the user may have cancelled it since the
        round chose it."""
        ...


class LocalCenters:
    """This broker's own connected centers, as a capacity source and a claim route."""

    broker = LOCAL_BROKER

    def __init__(
        self, centers: Centers, claims: ClaimBook, jobs: JobBook, clock: Clock, lease_ms: int
    ) -> None:
        self.centers = centers
        self.claims = claims
        self.jobs = jobs
        self.clock = clock
        self.lease_ms = lease_ms

    def capacity(self, at_ms: int, *, include_full: bool = False) -> Iterable[PoolCapacity]:
        held = self.claims.held()
        for session in self.centers.live_sessions():
            offer = session.offer
            if offer is None or offer.expires_at_ms <= at_ms:
                continue
            for pool in offer.pools:
                ref = PoolRef(center_id=session.center_id, pool_id=pool.pool_id)
                free = max(0, pool.devices_free - held.get(ref, 0))
                if free == 0 and not include_full:
                    continue
                yield PoolCapacity(
                    ref=ref,
                    region=session.center.region,
                    pool=pool,
                    free=free,
                    pue_milli=offer.pue_milli,
                    grid_g_co2_per_kwh=offer.grid_g_co2_per_kwh,
                    images=session.center.images,
                )

    async def claim(self, job_id: JobId, ref: PoolRef, explanation: str) -> bool:
        job = self.jobs.find(job_id)
        session = self.centers.live(ref.center_id)
        if job is None or session is None or job.state != JobState.QUEUED:
            return False
        pool = next((p for p in session.center.pools if p.pool_id == ref.pool_id), None)
        if pool is None:
            return False
        claim_id = ClaimId("c-" + secrets.token_hex(6))
        at = self.clock.now_ms()
        lease_until = at + self.lease_ms
        # Held before the commit so that the next round already subtracts these devices.
        self.claims.add(
            PendingClaim(
                claim_id=claim_id,
                job_id=job.job_id,
                pool=ref,
                devices=job.spec.devices,
                lease_expires_at_ms=lease_until,
            )
        )
        # What the broker saw of the claim, against which the center's bill is checked:
        # the descriptor's price, power and site figures, as the center signs them.
        record = self.claims.note(
            ClaimRecord(
                claim_id=claim_id,
                job_id=job.job_id,
                tenant=job.tenant,
                pool=ref,
                accelerator=pool.accelerator,
                devices=job.spec.devices,
                price_minor_per_device_hour=pool.price_minor_per_device_hour,
                power_w=pool.power_w,
                pue_milli=session.center.pue_milli,
                grid_g_co2_per_kwh=session.center.grid_g_co2_per_kwh,
                claimed_at_ms=at,
            )
        )
        stored = self.jobs.store.put_claim(record)
        await self.jobs.transition(
            job,
            JobState.CLAIMED,
            f"claim {claim_id} at {ref}",
            center_id=ref.center_id,
            pool_id=ref.pool_id,
            claim_id=claim_id,
            device_indices=(),
            explanation=explanation,
        )
        await stored
        session.send(
            Reserve(
                claim_id=claim_id,
                job_id=job.job_id,
                pool_id=ref.pool_id,
                devices=job.spec.devices,
                lease_expires_at_ms=lease_until,
                image=job.spec.image,
            )
        )
        return True
