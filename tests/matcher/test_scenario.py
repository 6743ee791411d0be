"""Policy effects on the reference scenario (17 centers, hub_latency_ms.csv)."""

from __future__ import annotations

import dataclasses
import random

from matcher import CpSatMatcher, JobRequest, Policy, PoolSlot, Problem, Solution
from tests.matcher import scenario
from tests.matcher.test_properties import check_feasible

NORTH = ("BJ", "ZJK", "HLGE")  # the North grid: Beijing, Zhangjiakou, Inner Mongolia
SICHUAN_HYDRO = ("TF", "CQ")  # CN06 Chengdu, CN12 Chongqing
CARBON_HEAVY = Policy(w_cost=1, w_carbon=1000)


def _solve(problem: Problem) -> Solution:
    solution = CpSatMatcher(time_limit_s=2.0, num_workers=1).solve(problem)
    check_feasible(problem, solution)
    return solution


def _regions(problem: Problem, solution: Solution) -> dict[str, str]:
    region = {p.pool_id: p.region for p in problem.pools}
    return {a.job_id: region[a.pool_id] for a in solution.assignments}


def test_every_center_maps_to_a_latency_node_of_its_hub() -> None:
    nodes = set(scenario.latency_ms())
    centers = scenario.load_centers()
    assert sorted(scenario.CENTER_NODE) == sorted(c.center_id for c in centers)
    for c in centers:
        node = scenario.CENTER_NODE[c.center_id]
        assert node in nodes, c.center_id
        if c.region in scenario.HUB_NODES:
            assert node in scenario.HUB_NODES[c.region], c.center_id
    hubs = {c.region for c in centers} & set(scenario.HUB_NODES)
    assert hubs == set(scenario.HUB_NODES)
    assert {r for rs in scenario.HUB_NODES.values() for r in rs} == nodes


def test_centers_in_no_hub_are_labelled_by_city_never_by_a_node() -> None:
    # The latency node WUH is Wuhu (YRD); a Wuhan center must not read as sitting there.
    outside = {
        c.center_id: c.region for c in scenario.load_centers() if c.region not in scenario.HUB_NODES
    }
    assert outside == {"CN02": "Wuhan", "CN03": "Wuhan", "CN05": "Xi'an"}
    assert not set(outside.values()) & set(scenario.latency_ms())
    assert {scenario.CENTER_NODE[c] for c in outside} == {"WUH", "QY"}  # nearest nodes


def test_mixed_centers_are_two_pools_at_one_node() -> None:
    pools = scenario.pools()
    assert len(pools) == 19
    split: dict[str, list[tuple[str, int, str]]] = {}
    for p in pools:
        split.setdefault(p.center_id, []).append((p.accelerator, p.free, p.region))
    assert {c: v for c, v in split.items() if len(v) > 1} == {
        "CN03": [("nvidia-a800", 2344, "WUH"), ("ascend-910b", 2344, "WUH")],
        "CN13": [("nvidia-h800", 10469, "HLGE"), ("ascend-910b", 10469, "HLGE")],
    }


def _northern_jobs(n: int, *, regions: tuple[str, ...] | None) -> tuple[JobRequest, ...]:
    return tuple(
        JobRequest(
            job_id=f"j{i:03d}",
            accelerator="any",
            devices=8,
            seconds=4 * 3600,
            regions=regions,
            data_region="BJ",
            data_mb=50_000,
        )
        for i in range(n)
    )


def test_carbon_weight_moves_work_from_the_north_to_sichuan_hydro() -> None:
    # Sichuan priced a little above Beijing (8.00 vs 7.50 yuan per device-hour), so that
    # cost alone keeps some work north; 10% of each center's devices free.
    pools = tuple(
        dataclasses.replace(p, price_minor_per_device_hour=800) if p.region in SICHUAN_HYDRO else p
        for p in scenario.pools(free_fraction=0.1)
    )
    jobs = _northern_jobs(60, regions=NORTH + SICHUAN_HYDRO)
    latency = scenario.latency_ms()
    by_cost = _regions(p := Problem(pools=pools, jobs=jobs, latency_ms=latency), _solve(p))
    by_carbon = _regions(
        q := Problem(pools=pools, jobs=jobs, policy=CARBON_HEAVY, latency_ms=latency), _solve(q)
    )
    assert len(by_cost) == len(by_carbon) == 60  # placing work comes first either way
    assert sum(r in NORTH for r in by_cost.values()) == 156 // 8  # Beijing (CN07) is full
    # 390 + 204 devices free in Sichuan hold all 60 jobs of 8 devices.
    assert set(by_carbon.values()) <= set(SICHUAN_HYDRO)


def test_jobs_held_to_the_north_stay_there_under_a_carbon_weight() -> None:
    jobs = _northern_jobs(10, regions=NORTH)
    problem = scenario.problem(jobs, policy=CARBON_HEAVY)
    assert set(_regions(problem, _solve(problem)).values()) <= set(NORTH)


def test_no_job_leaves_its_allowed_regions() -> None:
    rng = random.Random(4)
    hubs = list(scenario.HUB_NODES.values())
    jobs = tuple(
        JobRequest(
            job_id=f"j{i:03d}",
            accelerator=rng.choice(["any", "ascend-910b", "nvidia-h800"]),
            devices=rng.choice([1, 2, 8, 64]),
            seconds=rng.randint(600, 50_000),
            regions=rng.choice(hubs) + rng.choice(hubs),
            data_region=rng.choice(["BJ", "SH", "SZ"]),
            data_mb=rng.randint(0, 200_000),
        )
        for i in range(200)
    )
    problem = scenario.problem(jobs, policy=CARBON_HEAVY, free_fraction=0.05)
    solution = _solve(problem)
    where = _regions(problem, solution)
    allowed = {j.job_id: j.regions for j in jobs}
    assert where and all(r in (allowed[j] or ()) for j, r in where.items())


def test_quotas_hold() -> None:
    jobs = _northern_jobs(40, regions=None)
    quota = {"TF": 64, "CQ": 0, "QY": 16}
    problem = scenario.problem(jobs, policy=dataclasses.replace(CARBON_HEAVY, quota_devices=quota))
    solution = _solve(problem)
    placed = _regions(problem, solution)
    assert sum(r == "TF" for r in placed.values()) * 8 == 64  # the greenest, up to its quota
    assert "CQ" not in placed.values()
    assert sum(r == "QY" for r in placed.values()) * 8 <= 16
    assert len(placed) == 40


def test_east_to_west_incentive_moves_cost_weighted_work_west() -> None:
    west = ("HLGE", "GA", "QY", "ZW")
    jobs = tuple(
        JobRequest(job_id=f"j{i}", accelerator="ascend-910b", devices=8, seconds=3600)
        for i in range(5)
    )
    plain = _regions(p := scenario.problem(jobs), _solve(p))
    assert not set(plain.values()) & set(west)
    policy = Policy(incentive_minor_per_device_hour=200, incentive_regions=west)
    nudged = _regions(q := scenario.problem(jobs, policy=policy), _solve(q))
    assert set(nudged.values()) == {"HLGE"}  # 9.00 - 2.00 < 7.50 yuan per device-hour


def _pair(a: str, b: str) -> tuple[PoolSlot, ...]:
    """Two reference centers with the same power and PUE, so that only the grid factor
    differs, as in the paper's comparison of average grid factors."""
    chosen = [p for p in scenario.pools() if p.center_id in (a, b)]
    return tuple(
        dataclasses.replace(p, power_w=400, pue_milli=1200, accelerator="npu") for p in chosen
    )


def _carbon_choice(pools: tuple[PoolSlot, ...], data_region: str) -> tuple[str, dict[str, int]]:
    job = JobRequest(
        job_id="j",
        accelerator="npu",
        devices=8,
        seconds=24 * 3600,
        data_region=data_region,
        data_mb=10_000,
    )
    problem = Problem(
        pools=pools, jobs=(job,), policy=CARBON_HEAVY, latency_ms=scenario.latency_ms()
    )
    solution = _solve(problem)
    carbon = {p.center_id: p.grid_g_per_kwh for p in pools}
    return solution.assignments[0].pool_id.split("/")[0], carbon


def test_literature_shanghai_to_sichuan_cuts_carbon() -> None:
    # Zhang, Li, Wang (2025), Applied Energy 392: moving Shanghai work to Sichuan cuts
    # carbon. CN08 (Shanghai, East grid 0.5617) vs CN06 (Chengdu, Sichuan 0.1404).
    chosen, grid = _carbon_choice(_pair("CN08", "CN06"), "SH")
    assert grid["CN06"] < grid["CN08"]
    assert chosen == "CN06"


def test_literature_beijing_to_inner_mongolia_does_not_cut_carbon() -> None:
    # ... while moving Beijing work to Inner Mongolia does not under average grid
    # factors: CN07 (Beijing, North grid 0.6776) vs CN13 (Hohhot, IM 0.6849).
    chosen, grid = _carbon_choice(_pair("CN07", "CN13"), "BJ")
    assert grid["CN07"] < grid["CN13"]
    assert chosen == "CN07"
