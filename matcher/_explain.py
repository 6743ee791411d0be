"""From jobs-per-candidate to a `Solution`: the assignment of each job, with its terms,
the runner-up and why it lost; for each unplaced job the binding reason in words."""

from __future__ import annotations

import dataclasses

import numpy as np

from matcher._candidates import BIG, Instance, Int64s
from matcher._heuristics import evaluate, pool_used, region_used
from matcher.model import (
    ANY,
    Assignment,
    JobRequest,
    PoolSlot,
    Problem,
    Solution,
    Unplaced,
    carbon_g,
    energy_wh,
    image_reason,
    job_charge_minor,
    transfer_ms,
)


def yuan(fen: float) -> str:
    """Fen as yuan with two decimals and thousands separators."""
    return f"{fen / 100:,.2f}"


def terms_milli_minor(job: JobRequest, pool: PoolSlot, problem: Problem) -> dict[str, int]:
    """The objective cost of `job` on `pool`, term by term (they sum to `cost_milli_minor`)."""
    policy = problem.policy
    incentive = 0
    if pool.region in policy.incentive_regions:
        incentive = policy.incentive_minor_per_device_hour * job.devices * job.seconds * 10 // 36
    return {
        "charge": policy.w_cost * job_charge_minor(job, pool) * 1000,
        "carbon": (
            policy.w_carbon * carbon_g(job, pool) * policy.carbon_price_minor_per_tonne + 500
        )
        // 1000,
        "latency": policy.w_latency * job.devices * transfer_ms(job, pool, problem),
        "incentive": -incentive,
    }


def _what(job: JobRequest) -> str:
    parts = [job.accelerator if job.accelerator != ANY else "any accelerator"]
    if job.min_memory_gb:
        parts.append(f">= {job.min_memory_gb} GB")
    if job.min_tflops:
        parts.append(f">= {job.min_tflops} TFLOPS")
    return " ".join(parts)


def _where(job: JobRequest) -> str:
    if job.regions is None:
        return "any region"
    return "the allowed regions " + ", ".join(job.regions)


def _lost_on(chosen: dict[str, int], other: dict[str, int]) -> str:
    diffs = [
        f"{name} {'+' if other[name] >= chosen[name] else '-'}"
        f"{yuan(abs(other[name] - chosen[name]) / 1000)}"
        for name in ("charge", "carbon", "latency", "incentive")
        if other[name] != chosen[name]
    ]
    return ", ".join(diffs) if diffs else "equal terms; pool id breaks the tie"


class _Explainer:
    def __init__(self, inst: Instance, n: Int64s) -> None:
        self.inst = inst
        self.problem = inst.problem
        self.free_left = inst.free - pool_used(inst, n)
        self.quota_left = inst.quota - region_used(inst, n)
        self.cache: dict[int, tuple[str, str | None]] = {}

    def _blocked(self, pool: int, devices: int) -> str:
        inst = self.inst
        p = inst.pools[pool]
        if self.free_left[pool] < devices:
            return (
                f"its free devices went to other jobs ({int(self.free_left[pool])} "
                f"left, {devices} needed)"
            )
        region = int(inst.pool_region[pool])
        if self.quota_left[region] < devices:
            return f"the quota of region {p.region} is used up"
        return "the search stopped at its time limit before moving it"

    def placed(self, c: int, arc: int) -> tuple[str, str | None]:
        """(explanation, runner-up pool id) for a job of class c placed on `arc`."""
        if arc in self.cache:
            return self.cache[arc]
        inst, problem = self.inst, self.problem
        job = inst.classes[c]
        pool = inst.pools[int(inst.pool[arc])]
        chosen = terms_milli_minor(job, pool, problem)
        head = (
            f"{pool.pool_id} ({pool.region}): charge {yuan(job_charge_minor(job, pool))} yuan, "
            f"carbon {carbon_g(job, pool) / 1000:,.1f} kg, "
            f"data transfer {transfer_ms(job, pool, problem) / 1000:,.1f} s"
        )
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        runner: int | None = None
        if hi - lo > 1:
            costs = inst.cost[lo:hi].copy()
            costs[arc - lo] = BIG
            runner = lo + int(np.argmin(costs))
        result: tuple[str, str | None]
        if runner is None:
            result = (head + "; the only feasible pool", None)
        else:
            other_pool = int(inst.pool[runner])
            other = inst.pools[other_pool]
            delta = int(inst.cost[runner] - inst.cost[arc])
            if delta < 0:
                why = (
                    f"runner-up {other.pool_id} ({other.region}) was cheaper by "
                    f"{yuan(-delta / 1000)} yuan but {self._blocked(other_pool, job.devices)}"
                )
            else:
                why = (
                    f"runner-up {other.pool_id} ({other.region}) lost on cost by "
                    f"{yuan(delta / 1000)} yuan "
                    f"({_lost_on(chosen, terms_milli_minor(job, other, problem))})"
                )
            result = (f"{head}; {why}", other.pool_id)
        self.cache[arc] = result
        return result

    def unplaced(self, c: int) -> str:
        inst = self.inst
        job = inst.classes[c]
        diag = inst.diag
        if diag.n_compatible[c] == 0:
            place = f"of {_what(job)} in {_where(job)}"
            return image_reason(job, inst.pools, place) or f"no pool {place}"
        if diag.n_fit[c] == 0:
            return (
                f"no pool with {job.devices} free devices of {_what(job)} in {_where(job)} "
                f"(most free: {int(diag.max_free_compatible[c])})"
            )
        if diag.n_budget[c] == 0:
            return (
                f"cheapest feasible pool costs {yuan(int(diag.min_charge_fit[c]))} yuan > "
                f"budget {yuan(job.max_price_minor or 0)} yuan"
            )
        if diag.n_feasible[c] == 0:
            fastest = int(diag.min_finish_ms[c])
            return (
                f"fastest feasible pool needs {fastest / 1000:,.1f} s (transfer + run) > "
                f"deadline {job.deadline_s} s"
            )
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        pools = inst.pool[lo:hi]
        room = self.free_left[pools] >= job.devices
        if not room.any():
            most = int(self.free_left[pools].max())
            return (
                f"all {int(diag.n_feasible[c])} feasible pools are taken by higher-value "
                "work this round "
                f"(most free now: {most}, {job.devices} needed)"
            )
        regions = sorted({inst.pools[int(p)].region for p in pools[room]})
        return "region quota used up in " + ", ".join(regions)


def to_solution(
    inst: Instance,
    n: Int64s,
    *,
    solver: str,
    seconds: float,
    bound_value: int | None,
    cost_bound_milli_minor: int | None = None,
    optimal: bool = False,
) -> Solution:
    """Expand jobs-per-candidate into per-job assignments with explanations."""
    problem = inst.problem
    explainer = _Explainer(inst, n)
    assignments: list[Assignment] = []
    unplaced: list[Unplaced] = []
    for c, members in enumerate(inst.class_jobs):
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        k = 0
        for arc in range(lo, hi):
            if n[arc] == 0:
                continue
            # Jobs of one class are interchangeable: their figures are the class's.
            rep = inst.classes[c]
            pool = inst.pools[int(inst.pool[arc])]
            text, runner = explainer.placed(c, arc)
            template = Assignment(
                job_id=rep.job_id,
                pool_id=pool.pool_id,
                charge_minor=job_charge_minor(rep, pool),
                energy_wh=energy_wh(rep, pool),
                carbon_g=carbon_g(rep, pool),
                explanation=text,
                transfer_ms=transfer_ms(rep, pool, problem),
                cost_milli_minor=int(inst.cost[arc]),
                runner_up=runner,
            )
            for _ in range(int(n[arc])):
                job_id = problem.jobs[members[k]].job_id
                if job_id == template.job_id:
                    assignments.append(template)
                else:
                    assignments.append(dataclasses.replace(template, job_id=job_id))
                k += 1
        if k < len(members):
            reason = explainer.unplaced(c)
            unplaced.extend(
                Unplaced(job_id=problem.jobs[i].job_id, reason=reason) for i in members[k:]
            )
    value, cost = evaluate(inst, n)
    order = {j.job_id: i for i, j in enumerate(problem.jobs)}
    assignments.sort(key=lambda a: order[a.job_id])
    unplaced.sort(key=lambda u: order[u.job_id])
    bound = None if bound_value is None else bound_value / 3600
    return Solution(
        assignments=tuple(assignments),
        unplaced=tuple(unplaced),
        objective=value / 3600,
        bound=bound,
        solver=solver,
        seconds=seconds,
        cost_milli_minor=cost,
        cost_bound_milli_minor=cost_bound_milli_minor,
        optimal=optimal,
    )
