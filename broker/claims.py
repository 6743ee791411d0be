"""Claims and their leases: the reserves sent to centers and not yet answered.

A claim holds its devices in the broker's view of the pool from the moment it is made
until the center answers or the lease lapses, so the next round does not offer them
again (invariant 1: the broker believes an offer minus its own unanswered claims).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.types import ClaimId, JobId, PoolRef


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingClaim:
    claim_id: ClaimId
    job_id: JobId
    pool: PoolRef
    devices: int
    lease_expires_at_ms: int


class ClaimBook:
    """Pending claims (memory only: a restarted broker learns them again from the agents'
    Hello) and the record of every claim made (kept in the store)."""

    def __init__(self) -> None:
        self._claims: dict[ClaimId, PendingClaim] = {}
        self.records: dict[ClaimId, ClaimRecord] = {}
        # Each job's claims, in the order they were made: a job's usage is found by them.
        self._by_job: dict[JobId, list[ClaimId]] = {}
        # Told of every record noted (the national figures' index).
        self.on_note: Callable[[ClaimRecord], None] | None = None

    def load(self, records: Iterable[ClaimRecord]) -> None:
        for r in records:
            self.note(r)

    def of_job(self, job_id: JobId) -> list[ClaimRecord]:
        """Every claim ever made for `job_id`, oldest first."""
        return [self.records[c] for c in self._by_job.get(job_id, ())]

    def record(self, claim_id: str | None) -> ClaimRecord | None:
        return self.records.get(ClaimId(claim_id)) if claim_id else None

    def note(self, record: ClaimRecord) -> ClaimRecord:
        if record.claim_id not in self.records:
            self._by_job.setdefault(record.job_id, []).append(record.claim_id)
        self.records[record.claim_id] = record
        if self.on_note is not None:
            self.on_note(record)
        return record

    def __contains__(self, claim_id: object) -> bool:
        return claim_id in self._claims

    def __len__(self) -> int:
        return len(self._claims)

    def add(self, claim: PendingClaim) -> None:
        self._claims[claim.claim_id] = claim

    def pop(self, claim_id: str | None) -> PendingClaim | None:
        """The claim, now answered (or given up); None if it was not pending."""
        return self._claims.pop(ClaimId(claim_id), None) if claim_id else None

    def held(self) -> dict[PoolRef, int]:
        """Devices held by unanswered claims, per pool."""
        out: dict[PoolRef, int] = {}
        for c in self._claims.values():
            out[c.pool] = out.get(c.pool, 0) + c.devices
        return out

    def lapsed(self, at_ms: int) -> list[PendingClaim]:
        """Claims whose lease has passed, removed from the book."""
        gone = [c for c in self._claims.values() if c.lease_expires_at_ms <= at_ms]
        for c in gone:
            del self._claims[c.claim_id]
        return gone


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRecord:
    """What the broker itself saw of one claim, kept after it is answered: who holds it,
    for whom, on which pool at which price and power, and when it was claimed, started
    and ended as the broker observed. A center's usage record for the claim must agree
    with it (broker.usage)."""

    claim_id: ClaimId
    job_id: JobId
    tenant: str
    pool: PoolRef
    accelerator: str
    devices: int
    price_minor_per_device_hour: int
    power_w: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    claimed_at_ms: int
    started_at_ms: int | None = None
    ended_at_ms: int | None = None
    billed_record_id: str = ""
