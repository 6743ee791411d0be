"""The agent's book of devices: the only authority on what is free at this center.

A claim reserves specific device indices under a lease; launching keeps them until the
job ends; an unlaunched reservation lapses at its lease. A claim that cannot be honoured
is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.types import CenterDescriptor
from node_agent.errors import Refused


@dataclass(slots=True, kw_only=True)
class Holding:
    claim_id: str
    job_id: str
    pool_id: str
    indices: tuple[int, ...]
    lease_expires_at_ms: int
    launched: bool = False


class DeviceBook:
    def __init__(self, center: CenterDescriptor) -> None:
        self.total: dict[str, int] = {p.pool_id: p.devices_total for p in center.pools}
        self._free: dict[str, set[int]] = {
            p.pool_id: set(range(p.devices_total)) for p in center.pools
        }
        self.holdings: dict[str, Holding] = {}

    def free(self, pool_id: str) -> int:
        return len(self._free[pool_id])

    def reserve(
        self, *, claim_id: str, job_id: str, pool_id: str, devices: int, lease_expires_at_ms: int
    ) -> Holding:
        held = self.holdings.get(claim_id)
        if held is not None:  # a resent reserve: same answer
            return held
        if pool_id not in self._free:
            raise Refused(f"no pool {pool_id!r} at this center")
        if devices < 1:
            raise Refused(f"devices must be >= 1, got {devices}")
        free = self._free[pool_id]
        if devices > len(free):
            raise Refused(f"only {len(free)} of {devices} devices free in pool {pool_id}")
        indices = tuple(sorted(free)[:devices])
        free.difference_update(indices)
        holding = Holding(
            claim_id=claim_id,
            job_id=job_id,
            pool_id=pool_id,
            indices=indices,
            lease_expires_at_ms=lease_expires_at_ms,
        )
        self.holdings[claim_id] = holding
        return holding

    def launch(self, claim_id: str) -> Holding:
        holding = self.holdings.get(claim_id)
        if holding is None:
            raise Refused(f"no reservation {claim_id}")
        holding.launched = True
        return holding

    def release(self, claim_id: str) -> Holding | None:
        holding = self.holdings.pop(claim_id, None)
        if holding is not None:
            self._free[holding.pool_id].update(holding.indices)
        return holding

    def restore(
        self, *, claim_id: str, job_id: str, pool_id: str, indices: tuple[int, ...]
    ) -> Holding:
        """Hold `indices` for a launched run found again after a restart. Raises Refused
        when they are not all free (a table that does not fit this center's pools)."""
        free = self._free.get(pool_id)
        if free is None:
            raise Refused(f"no pool {pool_id!r} at this center")
        if not free.issuperset(indices):
            raise Refused(f"devices {list(indices)} of pool {pool_id} are not all free")
        free.difference_update(indices)
        holding = Holding(
            claim_id=claim_id,
            job_id=job_id,
            pool_id=pool_id,
            indices=indices,
            lease_expires_at_ms=0,
            launched=True,
        )
        self.holdings[claim_id] = holding
        return holding

    def lapse(self, now_ms: int) -> list[Holding]:
        """Release reservations whose lease passed without a launch."""
        lapsed = [
            h for h in self.holdings.values() if not h.launched and h.lease_expires_at_ms <= now_ms
        ]
        for h in lapsed:
            self.release(h.claim_id)
        return lapsed
