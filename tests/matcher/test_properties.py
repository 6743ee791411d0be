"""Invariants of every matcher on random small problems, checked by a feasibility
checker written here from the issue's rules, not from the matcher's code."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher import (
    CpSatMatcher,
    GreedyMatcher,
    JobRequest,
    Policy,
    PoolSlot,
    Problem,
    Solution,
    cost_milli_minor,
    feasible,
    transfer_ms,
)
from matcher._candidates import build
from matcher._heuristics import evaluate, greedy

REGIONS = ("A", "B", "C")
ACCELERATORS = ("x", "y")
# Centers without containers (most), and container centers accepting one or two images.
POOL_IMAGES = ((), (), (), ("i/a:1",), ("i/a:1", "i/b:1"))
JOB_IMAGES = ("", "", "", "i/a:1", "i/b:1")


@st.composite
def problems(draw: st.DrawFn, max_pools: int = 5, max_jobs: int = 10) -> Problem:
    pools = tuple(
        PoolSlot(
            pool_id=f"p{i}",
            center_id=f"c{i}",
            region=draw(st.sampled_from(REGIONS)),
            accelerator=draw(st.sampled_from(ACCELERATORS)),
            free=draw(st.integers(0, 12)),
            memory_gb=draw(st.sampled_from([32, 64])),
            tflops=draw(st.sampled_from([100, 300])),
            power_w=draw(st.integers(100, 700)),
            pue_milli=draw(st.integers(1000, 1500)),
            grid_g_per_kwh=draw(st.integers(0, 800)),
            price_minor_per_device_hour=draw(st.integers(0, 2000)),
            images=draw(st.sampled_from(POOL_IMAGES)),
        )
        for i in range(draw(st.integers(1, max_pools)))
    )
    jobs = tuple(
        JobRequest(
            job_id=f"j{i}",
            accelerator=draw(st.sampled_from((*ACCELERATORS, "any"))),
            devices=draw(st.sampled_from([1, 1, 2, 3, 4, 8])),
            seconds=draw(st.integers(1, 20_000)),
            regions=draw(st.none() | st.lists(st.sampled_from(REGIONS), min_size=1).map(tuple)),
            max_price_minor=draw(st.none() | st.integers(0, 30_000)),
            priority=draw(st.integers(0, 5)),
            data_region=draw(st.sampled_from(("", *REGIONS))),
            data_mb=draw(st.integers(0, 500_000)),
            deadline_s=draw(st.none() | st.integers(0, 25_000)),
            waited_s=draw(st.integers(0, 10_000)),
            min_memory_gb=draw(st.sampled_from([0, 0, 64])),
            min_tflops=draw(st.sampled_from([0, 0, 300])),
            image=draw(st.sampled_from(JOB_IMAGES)),
        )
        for i in range(draw(st.integers(0, max_jobs)))
    )
    policy = Policy(
        w_cost=draw(st.integers(0, 3)),
        w_carbon=draw(st.integers(0, 50)),
        w_latency=draw(st.integers(0, 2)),
        aging_s=draw(st.sampled_from([600, 3600])),
        quota_devices=draw(st.dictionaries(st.sampled_from(REGIONS), st.integers(0, 10))),
        incentive_minor_per_device_hour=draw(st.integers(0, 300)),
        incentive_regions=draw(st.lists(st.sampled_from(REGIONS), max_size=2).map(tuple)),
    )
    latency = {"A": {"B": draw(st.floats(0, 40)), "C": draw(st.floats(0, 40))}, "B": {"C": 7.4}}
    return Problem(
        pools=pools,
        jobs=jobs,
        policy=policy,
        latency_ms=latency,
        bandwidth_mbps={"A": {"C": 1_000}},
        default_bandwidth_mbps=draw(st.sampled_from([100, 10_000])),
    )


def _rtt(problem: Problem, a: str, b: str) -> int:
    if a == b:
        return 0
    for x, y in ((a, b), (b, a)):
        if y in problem.latency_ms.get(x, {}):
            return int(Fraction(problem.latency_ms[x][y]) + Fraction(1, 2))
    return 0


def _transfer_ms(problem: Problem, job: JobRequest, pool: PoolSlot) -> int:
    if job.data_region in ("", pool.region):
        return 0
    mbps = problem.default_bandwidth_mbps
    for x, y in ((job.data_region, pool.region), (pool.region, job.data_region)):
        if y in problem.bandwidth_mbps.get(x, {}):
            mbps = problem.bandwidth_mbps[x][y]
    seconds = Fraction(job.data_mb * 8, mbps)
    return _rtt(problem, job.data_region, pool.region) + -(-seconds * 1000 // 1)


def check_feasible(problem: Problem, solution: Solution) -> None:
    """Every hard constraint of the issue, from first principles."""
    pools = {p.pool_id: p for p in problem.pools}
    jobs = {j.job_id: j for j in problem.jobs}
    placed = [a.job_id for a in solution.assignments]
    left = [u.job_id for u in solution.unplaced]
    assert sorted(placed + left) == sorted(jobs), "every job placed or unplaced, once"
    used = dict.fromkeys(pools, 0)
    per_region: dict[str, int] = {}
    for a in solution.assignments:
        job, pool = jobs[a.job_id], pools[a.pool_id]
        used[pool.pool_id] += job.devices  # the whole gang on one pool
        per_region[pool.region] = per_region.get(pool.region, 0) + job.devices
        assert job.accelerator in ("any", pool.accelerator)
        assert pool.memory_gb >= job.min_memory_gb and pool.tflops >= job.min_tflops
        assert job.regions is None or pool.region in job.regions
        # An image only where its center accepts it; no image only where none is.
        assert job.image in pool.images if job.image else not pool.images
        charge = Fraction(pool.price_minor_per_device_hour * job.devices * job.seconds, 3600)
        assert a.charge_minor == -(-charge // 1)
        if job.max_price_minor is not None:
            assert charge <= job.max_price_minor
        if job.deadline_s is not None:
            assert job.seconds * 1000 + _transfer_ms(problem, job, pool) <= job.deadline_s * 1000
    for pool_id, devices in used.items():
        assert devices <= pools[pool_id].free, f"pool {pool_id} over-assigned"
    for region, quota in problem.policy.quota_devices.items():
        assert per_region.get(region, 0) <= quota, f"quota of {region} exceeded"


def _lexi(problem: Problem, solution: Solution) -> tuple[Fraction, int]:
    return Fraction(round(solution.objective * 3600)), -solution.cost_milli_minor


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(problems())
def test_every_matcher_returns_a_feasible_solution(problem: Problem) -> None:
    for matcher in (GreedyMatcher(), CpSatMatcher(time_limit_s=1.0, num_workers=1)):
        check_feasible(problem, matcher.solve(problem))


@FAST
@given(problems())
def test_objective_within_bound_and_never_worse_than_greedy(problem: Problem) -> None:
    greedy_solution = GreedyMatcher().solve(problem)
    solution = CpSatMatcher(time_limit_s=1.0, num_workers=1).solve(problem)
    assert solution.bound is not None
    assert solution.objective <= solution.bound + 1e-9
    assert _lexi(problem, solution) >= _lexi(problem, greedy_solution)
    # The reported figures are those of the assignments.
    jobs = {j.job_id: j for j in problem.jobs}
    pools = {p.pool_id: p for p in problem.pools}
    assert solution.cost_milli_minor == sum(
        cost_milli_minor(jobs[a.job_id], pools[a.pool_id], problem) for a in solution.assignments
    )
    for a in solution.assignments:
        assert a.transfer_ms == _transfer_ms(problem, jobs[a.job_id], pools[a.pool_id])


@FAST
@given(problems(max_pools=6, max_jobs=14))
def test_array_greedy_places_what_the_greedy_matcher_places(problem: Problem) -> None:
    inst = build(problem)
    n = greedy(problem, inst)
    solution = GreedyMatcher().solve(problem)
    value, cost = evaluate(inst, n)
    assert value == round(solution.objective * 3600)
    assert cost == solution.cost_milli_minor


@FAST
@given(problems())
def test_candidates_agree_with_the_scalar_rules(problem: Problem) -> None:
    inst = build(problem)
    for c, job in enumerate(inst.classes):
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        listed = {
            inst.pools[int(p)].pool_id: int(k)
            for p, k in zip(inst.pool[lo:hi], inst.cost[lo:hi], strict=True)
        }
        expected = {
            p.pool_id: cost_milli_minor(job, p, problem)
            for p in problem.pools
            if feasible(job, p, p.free, transfer_ms(job, p, problem))
        }
        assert listed == expected
    assert np.all(np.diff(inst.ptr) >= 0)
