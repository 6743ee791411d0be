"""Claims and their leases: the reserves sent to centers and not yet answered.

A claim holds its devices in the broker's view of the pool from the moment it is made
until the center answers or the lease lapses, so the next round does not offer them
again (invariant 1: the broker believes an offer minus its own unanswered claims).
"""

from __future__ import annotations

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
    def __init__(self) -> None:
        self._claims: dict[ClaimId, PendingClaim] = {}

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
