"""The greedy baseline: each job, highest priority first (then longest waiting), to the
cheapest pool that satisfies every hard constraint. Fast, simple, and the floor the
optimising matcher must never fall below."""

from __future__ import annotations

import time

from matcher.model import (
    Assignment,
    JobRequest,
    PoolSlot,
    Problem,
    Solution,
    Unplaced,
    carbon_g,
    charge_fen,
    compatible,
    energy_wh,
    feasible,
)


def _why_unplaced(job: JobRequest, pools: tuple[PoolSlot, ...], free: dict[str, int]) -> str:
    """The first binding constraint, in words."""
    where = "any region" if job.regions is None else "regions " + ", ".join(job.regions)
    compat = [p for p in pools if compatible(job, p)]
    if not compat:
        return f"no pool of {job.accelerator} in {where}"
    big = [p for p in compat if free[p.pool_id] >= job.devices]
    if not big:
        most = max(free[p.pool_id] for p in compat)
        return (
            f"no pool with {job.devices} free devices of {job.accelerator} in {where} "
            f"(most free: {most})"
        )
    if job.max_price_fen is not None:
        cheapest = min(charge_fen(job, p) for p in big)
        if cheapest > job.max_price_fen:
            return f"cheapest feasible pool costs {cheapest} fen > budget {job.max_price_fen} fen"
    if job.deadline_s is not None and job.seconds > job.deadline_s:
        return f"run time {job.seconds} s exceeds the time to the deadline ({job.deadline_s} s)"
    return "no feasible pool"


class GreedyMatcher:
    name = "greedy"

    def solve(self, problem: Problem) -> Solution:
        started = time.perf_counter()
        free = {p.pool_id: p.free for p in problem.pools}
        # Cheapest first; ties broken by pool id so that the result is deterministic.
        by_price = sorted(problem.pools, key=lambda p: (p.price_fen_per_device_hour, p.pool_id))
        order = sorted(problem.jobs, key=lambda j: (-j.priority, -j.waited_s, j.job_id))
        assignments: list[Assignment] = []
        unplaced: list[Unplaced] = []
        objective = 0
        for job in order:
            best: PoolSlot | None = None
            best_charge = 0
            for pool in by_price:
                if feasible(job, pool, free[pool.pool_id]):
                    charge = charge_fen(job, pool)
                    if best is None or charge < best_charge:
                        best, best_charge = pool, charge
            if best is None:
                unplaced.append(
                    Unplaced(job_id=job.job_id, reason=_why_unplaced(job, by_price, free))
                )
                continue
            free[best.pool_id] -= job.devices
            objective += best_charge
            assignments.append(
                Assignment(
                    job_id=job.job_id,
                    pool_id=best.pool_id,
                    charge_fen=best_charge,
                    energy_wh=energy_wh(job, best),
                    carbon_g=carbon_g(job, best),
                    explanation=(
                        f"cheapest feasible pool {best.pool_id} at "
                        f"{best.price_fen_per_device_hour} fen/device-hour"
                    ),
                )
            )
        return Solution(
            assignments=tuple(assignments),
            unplaced=tuple(unplaced),
            objective=float(objective),
            bound=None,
            solver=self.name,
            seconds=time.perf_counter() - started,
        )
