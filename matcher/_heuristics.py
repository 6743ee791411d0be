"""Fast primal heuristics on an `Instance`. A solution here is `n`, the number of jobs
of each candidate's class placed on that candidate's pool (aligned with `inst.pool`).

Every function keeps every hard constraint: capacity per pool, at most `count` jobs per
class, quotas per region (the candidates already satisfy the per-job constraints).
"""

from __future__ import annotations

import numpy as np

from matcher._candidates import BIG, Instance, Int64s, exact_dot
from matcher.model import Problem


def empty(inst: Instance) -> Int64s:
    return np.zeros(len(inst.pool), dtype=np.int64)


def pool_used(inst: Instance, n: Int64s) -> Int64s:
    """Devices placed on each pool."""
    d = np.repeat(inst.devices, np.diff(inst.ptr))
    return np.bincount(inst.pool, weights=n * d, minlength=len(inst.pools)).astype(np.int64)


def region_used(inst: Instance, n: Int64s) -> Int64s:
    used = pool_used(inst, n)
    return np.bincount(inst.pool_region, weights=used, minlength=len(inst.regions)).astype(np.int64)


def evaluate(inst: Instance, n: Int64s) -> tuple[int, int]:
    """(placed value, cost in milli-minor units) of `n`."""
    v = np.repeat(inst.value, np.diff(inst.ptr))
    return exact_dot(n, v), exact_dot(n, inst.cost)


def better(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Lexicographic: more value, then less cost."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


class _Room:
    """Free devices per pool and quota left per region, as a solution fills them."""

    def __init__(self, inst: Instance, n: Int64s) -> None:
        self.inst = inst
        self.free = inst.free - pool_used(inst, n)
        self.quota = inst.quota - region_used(inst, n)

    def jobs_fitting(self, c: int, lo: int, hi: int) -> Int64s:
        """For candidates lo..hi of class c: how many more jobs fit on each."""
        d = int(self.inst.devices[c])
        pools = self.inst.pool[lo:hi]
        by_pool = self.free[pools] // d
        by_quota = self.quota[self.inst.pool_region[pools]] // d
        fitting: Int64s = np.minimum(by_pool, by_quota)
        return fitting

    def take(self, c: int, arc: int, jobs: int) -> None:
        devices = int(self.inst.devices[c]) * jobs
        pool = int(self.inst.pool[arc])
        self.free[pool] -= devices
        self.quota[self.inst.pool_region[pool]] -= devices


def _cheapest(inst: Instance, lo: int, fit: Int64s, below: int | None = None) -> int:
    """Index (from lo) of the cheapest candidate with room (least pool id on ties), or -1;
    with `below`, only candidates cheaper than that cost."""
    costs = inst.cost[lo : lo + len(fit)]
    usable = fit > 0
    if below is not None:
        usable &= costs < below
    if not usable.any():
        return -1
    return int(np.argmin(np.where(usable, costs, BIG)))


def greedy(problem: Problem, inst: Instance) -> Int64s:
    """The baseline's rule on the arrays: each job, highest priority first (then longest
    waiting, then id), to its cheapest candidate with room. Places exactly what
    `GreedyMatcher` places (the tests check it)."""
    n = empty(inst)
    room = _Room(inst, n)
    class_of_job = np.empty(len(problem.jobs), dtype=np.int64)
    for c, members in enumerate(inst.class_jobs):
        class_of_job[list(members)] = c
    order = sorted(
        range(len(problem.jobs)),
        key=lambda i: (
            -problem.jobs[i].priority,
            -problem.jobs[i].waited_s,
            problem.jobs[i].job_id,
        ),
    )
    for i in order:
        c = int(class_of_job[i])
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        if lo == hi:
            continue
        k = _cheapest(inst, lo, room.jobs_fitting(c, lo, hi))
        if k >= 0:
            n[lo + k] += 1
            room.take(c, lo + k, 1)
    return n


def fill(inst: Instance, n: Int64s) -> Int64s:
    """Place what still fits: classes by value per device (then value), each job on its
    cheapest candidate with room. Never removes a job, so value never drops. From an
    empty solution this is the value-per-device greedy."""
    n = n.copy()
    room = _Room(inst, n)
    placed = np.bincount(
        np.repeat(np.arange(len(inst.classes)), np.diff(inst.ptr)),
        weights=n,
        minlength=len(inst.classes),
    ).astype(np.int64)
    left = inst.count - placed
    order = np.lexsort((-inst.value, -inst.density))
    for c in order:
        c = int(c)
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        while left[c] > 0 and lo < hi:
            fit = room.jobs_fitting(c, lo, hi)
            k = _cheapest(inst, lo, fit)
            if k < 0:
                break
            jobs = min(int(left[c]), int(fit[k]))
            n[lo + k] += jobs
            room.take(c, lo + k, jobs)
            left[c] -= jobs
    return n


def improve_cost(inst: Instance, n: Int64s) -> Int64s:
    """Move placed jobs to cheaper candidates of their class where there is room.
    Value is unchanged; cost never rises."""
    n = n.copy()
    room = _Room(inst, n)
    classes = np.unique(np.repeat(np.arange(len(inst.classes)), np.diff(inst.ptr))[n > 0])
    for c in classes:
        c = int(c)
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        placed = [lo + int(k) for k in np.nonzero(n[lo:hi])[0]]
        # The most expensive placed candidates first.
        for arc in sorted(placed, key=lambda a: -int(inst.cost[a])):
            while n[arc] > 0:
                fit = room.jobs_fitting(c, lo, hi)
                k = _cheapest(inst, lo, fit, below=int(inst.cost[arc]))
                if k < 0:
                    break
                jobs = min(int(n[arc]), int(fit[k]))
                n[arc] -= jobs
                n[lo + k] += jobs
                room.take(c, lo + k, jobs)
                room.take(c, arc, -jobs)
    return n
