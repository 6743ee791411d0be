"""The greedy baseline: each job, highest priority first (then longest waiting, then id),
to the feasible pool of least objective cost (then pool id) with room, within the
region quotas. Fast, simple, plain Python, and the floor the optimising matcher must
never fall below."""

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
    compatible,
    cost_milli_minor,
    energy_wh,
    feasible,
    image_reason,
    job_charge_minor,
    transfer_ms,
    value,
)


def why_unplaced(
    job: JobRequest, problem: Problem, free: dict[str, int], quota_left: dict[str, int]
) -> str:
    """The first binding constraint, in words."""
    where = "any region" if job.regions is None else "the allowed regions " + ", ".join(job.regions)
    compat = [p for p in problem.pools if compatible(job, p)]
    if not compat:
        place = f"of {job.accelerator} in {where}"
        return image_reason(job, problem.pools, place) or f"no pool {place}"
    big = [p for p in compat if p.free >= job.devices]
    if not big:
        most = max(p.free for p in compat)
        return (
            f"no pool with {job.devices} free devices of {job.accelerator} in {where} "
            f"(most free: {most})"
        )
    if job.max_price_minor is not None:
        cheapest = min(job_charge_minor(job, p) for p in big)
        if cheapest > job.max_price_minor:
            return (
                f"cheapest feasible pool costs {cheapest / 100:,.2f} yuan > "
                f"budget {job.max_price_minor / 100:,.2f} yuan"
            )
    ok = [p for p in big if feasible(job, p, p.free, transfer_ms(job, p, problem))]
    if not ok:
        return f"no pool meets the deadline of {job.deadline_s} s (transfer + run)"
    if all(free[p.pool_id] < job.devices for p in ok):
        return f"all {len(ok)} feasible pools are taken by higher-priority work this round"
    return "region quota used up"


class GreedyMatcher:
    name = "greedy"

    def solve(self, problem: Problem) -> Solution:
        started = time.perf_counter()
        free = {p.pool_id: p.free for p in problem.pools}
        quota_left = dict(problem.policy.quota_devices)
        by_id = sorted(problem.pools, key=lambda p: p.pool_id)
        order = sorted(problem.jobs, key=lambda j: (-j.priority, -j.waited_s, j.job_id))
        assignments: list[Assignment] = []
        unplaced_jobs: list[JobRequest] = []
        placed_value = 0
        total_cost = 0
        for job in order:
            best: PoolSlot | None = None
            best_cost = 0
            for pool in by_id:
                if quota_left.get(pool.region, job.devices) < job.devices:
                    continue
                if feasible(job, pool, free[pool.pool_id], transfer_ms(job, pool, problem)):
                    cost = cost_milli_minor(job, pool, problem)
                    if best is None or cost < best_cost:
                        best, best_cost = pool, cost
            if best is None:
                unplaced_jobs.append(job)
                continue
            free[best.pool_id] -= job.devices
            if best.region in quota_left:
                quota_left[best.region] -= job.devices
            placed_value += value(job, problem.policy)
            total_cost += best_cost
            assignments.append(
                Assignment(
                    job_id=job.job_id,
                    pool_id=best.pool_id,
                    charge_minor=job_charge_minor(job, best),
                    energy_wh=energy_wh(job, best),
                    carbon_g=carbon_g(job, best),
                    explanation=(
                        f"cheapest feasible pool with room: {best.pool_id} at "
                        f"{best.price_minor_per_device_hour / 100:,.2f} yuan/device-hour"
                    ),
                    transfer_ms=transfer_ms(job, best, problem),
                    cost_milli_minor=best_cost,
                )
            )
        unplaced = tuple(
            Unplaced(job_id=j.job_id, reason=why_unplaced(j, problem, free, quota_left))
            for j in unplaced_jobs
        )
        return Solution(
            assignments=tuple(assignments),
            unplaced=unplaced,
            objective=placed_value / 3600,
            bound=None,
            solver=self.name,
            seconds=time.perf_counter() - started,
            cost_milli_minor=total_cost,
        )
