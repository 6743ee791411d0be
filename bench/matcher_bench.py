"""Matcher benchmark: the optimising matcher beside the greedy baselines and the bound, on
the same generated instances, in one run (ratios, because these machines are noisy).

    .venv/bin/python -m bench.matcher_bench [--sizes 1000x17,10000x1000,...]
        [--demand 1.5[,3]] [--rounds 10000x1000,100000x2000] [--seed 1]

Instances. Pools: the 17 reference centers (`scenario.load_centers()`: 19 pools, as the
two "mixed" centers have two each, at their latency nodes), or a synthetic federation
of N centers, each a copy of a random reference center (its pools' accelerators, its
latency node, PUE, grid factor) with its prices scaled by U(0.8, 1.2); free devices are
set so that demand is 1.5x the free capacity. Jobs: (GPUs, run time) drawn with
replacement from the Philly trace (scenario/data/philly_jobs.csv: 91% 1 GPU, 8-GPU jobs
44% of GPU-hours, median run 437 s, mean 3.4 h), with gangs of 16 GPUs or more scaled x8
(to 128..1,024 devices) for national-scale training jobs, run times clamped to 60 s..30
days; 40% ask for "any" accelerator, 25% are held to two hubs (data residency), 20%
carry a budget, 10% a deadline; data sits mostly in the eastern metros.

Columns. value = placed priority-weighted device-hours; `/bound` is value over the
min-cost-flow LP bound (1.000 = optimal), or over the matcher's certified aggregated
bound (marked *) where the full candidate list is too large for the exact LP; `vs prio`
and `vs dens` compare with priority-order greedy (the baseline, `GreedyMatcher`'s rule)
and value-per-device greedy; "matcher s (cpu)" is wall time and this process's CPU time
(CP-SAT's two workers both count), because the machine is shared.

Rounds. `--rounds` solves a round, changes 5% of the jobs (replaced by new ones) and 5%
of the pools' free devices (x U(0.5, 1.5)), and solves the next round with the warm
matcher that solved the first and with a fresh one.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from dataclasses import dataclass, replace

import numpy as np

import scenario
from matcher import CpSatMatcher, GreedyMatcher, JobRequest, Policy, PoolSlot, Problem, _grouped
from matcher._candidates import build
from matcher._flow import aggregated_bound, lp_bound
from matcher._heuristics import evaluate
from tests.matcher.scenario import pools as reference_pools

DEMAND_OVER_FREE = 1.5
EXACT_LP_PAIRS = 5_000_000
MAX_SECONDS = 30 * 24 * 3600


def philly() -> list[tuple[int, int]]:
    """(GPUs, run time in s) of every job of the trace."""
    return [(t.gpus, t.duration_s) for t in scenario.load_trace()]


def federation(n_centers: int, rng: random.Random) -> list[PoolSlot]:
    by_center: dict[str, list[PoolSlot]] = {}
    for p in reference_pools():
        by_center.setdefault(p.center_id, []).append(p)
    if n_centers == len(by_center):
        return [p for ps in by_center.values() for p in ps]
    reference = list(by_center.values())
    out = []
    for i in range(n_centers):
        center_id = f"S{i:05d}"
        pools = rng.choice(reference)
        factor = rng.uniform(0.8, 1.2)
        out += [
            replace(
                ref,
                pool_id=f"{center_id}/{ref.accelerator}",
                center_id=center_id,
                price_minor_per_device_hour=round(ref.price_minor_per_device_hour * factor),
            )
            for ref in pools
        ]
    return out


def instance(
    n_jobs: int,
    n_centers: int,
    seed: int,
    policy: Policy | None = None,
    *,
    demand: float = DEMAND_OVER_FREE,
    pools: tuple[PoolSlot, ...] | None = None,
) -> Problem:
    """`n_jobs` jobs over a federation of `n_centers` centers whose free devices are
    scaled so that the jobs ask for `demand` x the free devices; or over `pools` as
    they are."""
    rng = random.Random(seed)
    trace = philly()
    given = pools is not None
    pools = list(pools) if pools is not None else federation(n_centers, rng)
    hubs = list(scenario.HUB_NODES.values())
    nodes = sorted({p.region for p in pools})
    east = ["BJ", "SH", "SZ"]
    median_price = sorted(p.price_minor_per_device_hour for p in pools)[len(pools) // 2]
    weights = [p.free for p in pools]
    jobs = []
    for i in range(n_jobs):
        gpus, duration = rng.choice(trace)
        devices = gpus * 8 if gpus >= 16 else gpus
        seconds = min(max(duration, 60), MAX_SECONDS)
        accel = "any" if rng.random() < 0.4 else rng.choices(pools, weights)[0].accelerator
        regions = None
        if rng.random() < 0.25:
            regions = tuple(sorted(set(rng.choice(hubs) + rng.choice(hubs))))
        budget = None
        if rng.random() < 0.2:
            budget = int(median_price * devices * seconds / 3600 * rng.uniform(0.7, 2.0)) + 1
        deadline = int(seconds * rng.uniform(1.0, 1.5)) + 600 if rng.random() < 0.1 else None
        jobs.append(
            JobRequest(
                job_id=f"j{i:06d}",
                accelerator=accel,
                devices=devices,
                seconds=seconds,
                regions=regions,
                max_price_minor=budget,
                priority=rng.choice([0, 0, 0, 0, 0, 1, 2, 3, 5, 8, 10]),
                data_region=rng.choice(east) if rng.random() < 0.6 else rng.choice(nodes),
                data_mb=min(int(rng.lognormvariate(np.log(20_000), 1.5)), 5_000_000),
                deadline_s=deadline,
                waited_s=rng.randrange(0, 4 * 3600),
            )
        )
    total = sum(j.devices for j in jobs)
    capacity = sum(p.free for p in pools)
    scale = total / demand / capacity
    if not given:
        pools = [replace(p, free=max(8, round(p.free * scale))) for p in pools]
    return Problem(
        pools=tuple(pools),
        jobs=tuple(jobs),
        policy=policy or Policy(),
        latency_ms=scenario.latency_ms(),
    )


@dataclass
class Row:
    size: str
    pairs: int
    bound: int
    exact_bound: bool
    prio: tuple[int, int]
    prio_s: float
    dens: tuple[int, int]
    dens_s: float
    ours: tuple[int, int]
    ours_s: float
    ours_cpu: float
    solver: str
    gap: float


def run(n_jobs: int, n_centers: int, seed: int, time_limit_s: float, demand: float) -> Row:
    """The matcher and both baselines on one instance. The baselines run as pool-group
    passes (they place exactly what the per-candidate passes place; tests/matcher
    checks it), timed with their share of the setup. The reference bound is the exact
    LP where the full candidate list has at most `EXACT_LP_PAIRS` pairs, else the
    matcher's certified (aggregated) bound."""
    problem = instance(n_jobs, n_centers, seed, demand=demand)
    t = time.perf_counter()
    gr = _grouped.Grouped(problem)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    prio_placed = _grouped.greedy(gr)
    prio_s = setup_s + time.perf_counter() - t
    t = time.perf_counter()
    dens_placed = _grouped.fill(gr)
    dens_s = setup_s + time.perf_counter() - t
    sparse, (prio_n, dens_n) = _grouped.instance(gr, [prio_placed, dens_placed])
    pairs = int(sparse.diag.n_feasible.sum())
    bound = aggregated_bound(sparse)
    exact = pairs <= EXACT_LP_PAIRS
    if exact:
        bound = lp_bound(build(problem))
    matcher = CpSatMatcher(time_limit_s=time_limit_s, num_workers=2)
    t, cpu = time.perf_counter(), time.process_time()
    solution = matcher.solve(problem)
    ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - cpu
    ours = (round(solution.objective * 3600), solution.cost_milli_minor)
    return Row(
        size=f"{n_jobs:,} x {len(problem.pools):,}",
        pairs=pairs,
        bound=bound,
        exact_bound=exact,
        prio=evaluate(sparse, prio_n),
        prio_s=prio_s,
        dens=evaluate(sparse, dens_n),
        dens_s=dens_s,
        ours=ours,
        ours_s=ours_s,
        ours_cpu=ours_cpu,
        solver=solution.solver,
        gap=solution.gap or 0.0,
    )


def changed(problem: Problem, seed: int, share: float = 0.05) -> Problem:
    """The next round: `share` of the jobs replaced by new ones and `share` of the pools'
    free devices scaled by U(0.5, 1.5)."""
    rng = random.Random(seed)
    fresh = instance(len(problem.jobs), 0, seed + 1, pools=problem.pools)
    jobs = list(problem.jobs)
    for k, i in enumerate(rng.sample(range(len(jobs)), int(len(jobs) * share))):
        jobs[i] = replace(fresh.jobs[i], job_id=f"n{k:06d}")
    pools = list(problem.pools)
    for i in rng.sample(range(len(pools)), max(1, int(len(pools) * share))):
        pools[i] = replace(pools[i], free=max(0, round(pools[i].free * rng.uniform(0.5, 1.5))))
    return replace(problem, jobs=tuple(jobs), pools=tuple(pools))


def rounds(n_jobs: int, n_centers: int, seed: int, time_limit_s: float) -> str:
    """Two successive rounds with 5% of jobs and offers changed: the second solved by a
    warm matcher (it solved the first) and by a fresh one."""
    first = instance(n_jobs, n_centers, seed)
    second = changed(first, seed)
    warm = CpSatMatcher(time_limit_s=time_limit_s, num_workers=2, warm_start=True)
    warm.solve(first)
    t = time.perf_counter()
    w = warm.solve(second)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    c = CpSatMatcher(time_limit_s=time_limit_s, num_workers=2).solve(second)
    cold_s = time.perf_counter() - t
    return (
        f"| {n_jobs:,} x {len(first.pools):,} | {cold_s:.2f} | {(c.gap or 0) * 100:.2f}% "
        f"| {warm_s:.2f} | {(w.gap or 0) * 100:.2f}% | {cold_s / warm_s:.2f}x |"
    )


def table(rows: list[Row]) -> str:
    head = (
        "| jobs x pools | job-pool pairs | matcher value/bound | certified gap | matcher s (cpu) "
        "| solver | vs prio-greedy | vs dens-greedy | prio-greedy/bound | dens-greedy/bound |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.size} | {r.pairs:,} | {r.ours[0] / r.bound:.4f}{'' if r.exact_bound else '*'} "
        f"| {r.gap * 100:.3f}% "
        f"| {r.ours_s:.2f} ({r.ours_cpu:.2f}) | {r.solver} "
        f"| {r.ours[0] / max(1, r.prio[0]) - 1:+.1%} "
        f"| {r.ours[0] / max(1, r.dens[0]) - 1:+.1%} | {r.prio[0] / r.bound:.4f} "
        f"| {r.dens[0] / r.bound:.4f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def carbon(n_jobs: int, n_centers: int, seed: int, time_limit_s: float) -> str:
    """Under a carbon-weighted policy: placed work and carbon per placed device-hour,
    priority-order greedy vs the matcher, on the same instance."""
    problem = instance(n_jobs, n_centers, seed, Policy(w_cost=1, w_carbon=1000))
    jobs = {j.job_id: j for j in problem.jobs}
    out = []
    for name, matcher in (
        ("prio-greedy", GreedyMatcher()),
        ("matcher", CpSatMatcher(time_limit_s=time_limit_s)),
    ):
        s = matcher.solve(problem)
        device_h = sum(jobs[a.job_id].devices * jobs[a.job_id].seconds for a in s.assignments)
        grams = sum(a.carbon_g for a in s.assignments)
        out.append(
            f"| {n_jobs:,} x {len(problem.pools):,} | {name} | {s.objective:,.0f} "
            f"| {device_h / 3600:,.0f} | {grams / (device_h / 3600):,.1f} |"
        )
    return (
        "| jobs x pools | solver | placed weighted device-h | placed device-h "
        "| g CO2 per device-h |\n|---|---|---:|---:|---:|\n" + "\n".join(out) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000x17,1000x200,10000x200,10000x1000,100000x2000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=0.0, help="0: by size")
    parser.add_argument(
        "--demand", default="1.5", help="demand over free devices; a list runs each in turn"
    )
    parser.add_argument("--rounds", default="10000x1000,100000x2000", help="warm-start sizes")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {_cores()} cores")
    for demand in (float(x) for x in args.demand.split(",")):
        rows = []
        for size in args.sizes.split(","):
            jobs, centers = (int(x) for x in size.split("x"))
            limit = args.time_limit or (2.0 if jobs <= 1000 else 3.0 if jobs <= 10_000 else 30.0)
            rows.append(run(jobs, centers, args.seed, limit, demand))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        print(f"\ndemand {demand}x free devices (* bound: the certified one, not the exact LP)")
        print(table(rows))
    if args.rounds:
        print("successive rounds, 5% of jobs and offers changed:")
        print(
            "| jobs x pools | cold s | cold gap | warm s | warm gap | speed-up |\n"
            "|---|---:|---:|---:|---:|---:|"
        )
        for size in args.rounds.split(","):
            jobs, centers = (int(x) for x in size.split("x"))
            limit = 3.0 if jobs <= 10_000 else 30.0
            print(rounds(jobs, centers, args.seed, limit), flush=True)
    print("\ncarbon-weighted policy (w_cost 1, w_carbon 1000, 100 yuan/t):")
    print(carbon(1000, 17, args.seed, 2.0))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
