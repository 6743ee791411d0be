"""Quotes: before a job is submitted, the candidate pools ranked for that one job, with
what each would charge, how long its data would take to arrive, its energy and carbon,
and whether it has the capacity now."""

from __future__ import annotations

from dataclasses import dataclass, replace

from matcher.model import (
    JobRequest,
    Problem,
    admissible,
    carbon_g,
    compatible,
    cost_milli_minor,
    deadline_of,
    energy_wh,
    job_charge_minor,
    on_time,
    rtt_ms,
    transfer_ms,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuoteLine:
    """One candidate pool for a job. `feasible`: every hard constraint but capacity
    holds; `has_capacity`: the pool has the devices free now; `reason` says why not."""

    rank: int
    pool_id: str
    center_id: str
    region: str
    accelerator: str
    price_minor_per_device_hour: int
    charge_minor: int
    rtt_ms: int
    transfer_ms: int
    energy_wh: int
    carbon_g: int
    cost_milli_minor: int
    has_capacity: bool
    feasible: bool
    reason: str = ""


def quote(job: JobRequest, problem: Problem) -> tuple[QuoteLine, ...]:
    """The pools of `problem` that could run `job` (accelerator and region match),
    ranked: feasible with capacity first, then feasible but full, then the rest; within
    each, by the policy's objective cost, then pool id. `problem.jobs` is not read."""
    lines: list[tuple[tuple[int, int, str], QuoteLine]] = []
    for pool in problem.pools:
        if not compatible(job, pool):
            continue
        charge = job_charge_minor(job, pool)
        transfer = transfer_ms(job, pool, problem)
        reasons = []
        if job.max_price_minor is not None and charge > job.max_price_minor:
            reasons.append(
                f"charge {charge / 100:,.2f} yuan > budget {job.max_price_minor / 100:,.2f} yuan"
            )
        if not on_time(job.seconds, transfer, deadline_of(job)):
            reasons.append(
                f"transfer + run {(job.seconds * 1000 + transfer) / 1000:,.1f} s > "
                f"deadline {job.deadline_s} s"
            )
        has_capacity = pool.free >= job.devices
        if not has_capacity:
            reasons.append(f"{pool.free} devices free now, {job.devices} needed")
        feasible = admissible(job, pool, transfer)
        cost = cost_milli_minor(job, pool, problem)
        line = QuoteLine(
            rank=0,
            pool_id=pool.pool_id,
            center_id=pool.center_id,
            region=pool.region,
            accelerator=pool.accelerator,
            price_minor_per_device_hour=pool.price_minor_per_device_hour,
            charge_minor=charge,
            rtt_ms=rtt_ms(problem, job.data_region, pool.region) if job.data_region else 0,
            transfer_ms=transfer,
            energy_wh=energy_wh(job, pool),
            carbon_g=carbon_g(job, pool),
            cost_milli_minor=cost,
            has_capacity=has_capacity,
            feasible=feasible,
            reason="; ".join(reasons),
        )
        tier = 0 if feasible and has_capacity else 1 if feasible else 2
        lines.append(((tier, cost, pool.pool_id), line))
    lines.sort(key=lambda t: t[0])
    return tuple(replace(line, rank=i + 1) for i, (_, line) in enumerate(lines))
