"""The agent's book of devices: the only authority on what is free at this center.

A claim reserves specific device indices under a lease; launching keeps them until the
job ends; an unlaunched reservation lapses at its lease. A claim that cannot be honoured
is refused with the reason.

Devices in use outside icx (the center's own users' Slurm jobs, a drained node, a GPU
that NVML sees busy with a process icx did not start) are told to the book by index with
`set_outside`: they are never reserved or offered while the last word of any source
names them. A device is free when no claim holds it and no source names it:

    free(pool) = {0..total-1} - held(pool) - union over sources of outside(pool, source)

A source whose indices are the book's own numbering (NVML with the process backend: a
job's devices are the indices it was given) may name a device a claim holds (it cannot
tell icx's own use from others'); that device is counted once. A source whose figure is
really a count (Slurm: it picks the physical devices of icx's jobs itself, so its
numbering is not the book's) says `counted=True`, and the book places its devices on
indices no claim holds, so that each of them takes one device off what is free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import InvalidArgument
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
        self._held: dict[str, set[int]] = {p.pool_id: set() for p in center.pools}
        # pool -> source -> indices that source says are in use outside icx
        self._outside: dict[str, dict[str, frozenset[int]]] = {p.pool_id: {} for p in center.pools}
        self.holdings: dict[str, Holding] = {}

    def free(self, pool_id: str) -> int:
        return len(self._free(pool_id))

    def _free(self, pool_id: str) -> set[int]:
        return set(range(self.total[pool_id])) - self._held[pool_id] - self.outside(pool_id)

    def outside(self, pool_id: str) -> frozenset[int]:
        """The pool's devices in use outside icx, by any source."""
        return frozenset().union(*self._outside[pool_id].values())

    def set_outside(
        self, pool_id: str, indices: Iterable[int], *, source: str = "", counted: bool = False
    ) -> bool:
        """Say which devices of `pool_id` are in use outside icx now, by index
        (0..total-1), as `source` sees them (a backend, device discovery; each source's
        latest word replaces its previous one). Such devices are not reserved or
        offered; claims that hold some already keep them. With `counted`, only how many
        counts: the book keeps the given indices that no claim holds and moves the
        others to the lowest indices neither held nor given (as many as there are). True
        if the pool's outside set changed. Raises InvalidArgument (nothing changed) for
        an unknown pool or an index beyond the pool."""
        if pool_id not in self.total:
            raise InvalidArgument(f"no pool {pool_id!r} at this center")
        new = frozenset(indices)
        bad = sorted(i for i in new if not 0 <= i < self.total[pool_id])
        if bad:
            raise InvalidArgument(
                f"pool {pool_id} has devices 0..{self.total[pool_id] - 1}, got index {bad[0]}"
            )
        if counted:
            new = self._away_from_held(pool_id, new)
        before = self.outside(pool_id)
        if new:
            self._outside[pool_id][source] = new
        else:
            self._outside[pool_id].pop(source, None)
        return self.outside(pool_id) != before

    def _away_from_held(self, pool_id: str, indices: frozenset[int]) -> frozenset[int]:
        held = self._held[pool_id]
        kept = set(indices - held)
        moved = len(indices & held)
        for i in range(self.total[pool_id]):
            if moved == 0:
                break
            if i not in kept and i not in held:
                kept.add(i)
                moved -= 1
        return frozenset(kept)

    def reserve(
        self, *, claim_id: str, job_id: str, pool_id: str, devices: int, lease_expires_at_ms: int
    ) -> Holding:
        held = self.holdings.get(claim_id)
        if held is not None:  # a resent reserve: same answer
            return held
        if pool_id not in self.total:
            raise Refused(f"no pool {pool_id!r} at this center")
        if devices < 1:
            raise Refused(f"devices must be >= 1, got {devices}")
        free = self._free(pool_id)
        if devices > len(free):
            raise Refused(f"only {len(free)} of {devices} devices free in pool {pool_id}")
        indices = tuple(sorted(free)[:devices])
        self._held[pool_id].update(indices)
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
            self._held[holding.pool_id].difference_update(holding.indices)
        return holding

    def restore(
        self, *, claim_id: str, job_id: str, pool_id: str, indices: tuple[int, ...]
    ) -> Holding:
        """Hold `indices` for a launched run found again after a restart. Raises Refused
        when a claim holds one of them already or one is beyond the pool (a table that
        does not fit this center's pools). Devices named outside may be restored: a
        source may see the run itself as outside use."""
        held = self._held.get(pool_id)
        if held is None:
            raise Refused(f"no pool {pool_id!r} at this center")
        if held.intersection(indices) or any(not 0 <= i < self.total[pool_id] for i in indices):
            raise Refused(f"devices {list(indices)} of pool {pool_id} are not all free")
        held.update(indices)
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
