"""Explanations name the runner-up and what it lost on; quotes rank the candidates."""

from __future__ import annotations

from matcher import CpSatMatcher, JobRequest, Policy, PoolSlot, Problem, quote


def _pool(pool_id: str, region: str, free: int, price: int) -> PoolSlot:
    return PoolSlot(
        pool_id=pool_id,
        center_id=pool_id,
        region=region,
        accelerator="npu",
        free=free,
        memory_gb=64,
        tflops=300,
        power_w=400,
        pue_milli=1250,
        grid_g_per_kwh=500,
        price_minor_per_device_hour=price,
    )


POOLS = (_pool("cheap", "A", 8, 500), _pool("dear", "B", 16, 800))


def _job(job_id: str, priority: int, **kw: object) -> JobRequest:
    fields: dict[str, object] = {"devices": 8, "seconds": 3600, **kw}
    return JobRequest(job_id=job_id, accelerator="npu", priority=priority, **fields)  # type: ignore[arg-type]


def test_runner_up_lost_on_cost_or_capacity() -> None:
    # Both fit; the longer job saves more on the cheap pool.
    problem = Problem(pools=POOLS, jobs=(_job("short", 0), _job("long", 0, seconds=7200)))
    solution = CpSatMatcher(time_limit_s=2.0, num_workers=1).solve(problem)
    why = {a.job_id: a.explanation for a in solution.assignments}
    assert why["long"] == (
        "cheap (A): charge 80.00 yuan, carbon 4.0 kg, data transfer 0.0 s; runner-up dear (B) "
        "lost on cost by 48.00 yuan (charge +48.00)"
    )
    assert why["short"] == (
        "dear (B): charge 64.00 yuan, carbon 2.0 kg, data transfer 0.0 s; runner-up cheap (A) "
        "was cheaper by 24.00 yuan but its free devices went to other jobs (0 left, 8 needed)"
    )


def test_unplaced_reasons_name_the_binding_constraint() -> None:
    jobs = (
        _job("budget", 0, max_price_minor=3000),
        _job("residency", 0, regions=("C",)),
        _job("deadline", 0, deadline_s=3000),
        JobRequest(job_id="gang", accelerator="npu", devices=64, seconds=60),
    )
    solution = CpSatMatcher(num_workers=1).solve(Problem(pools=POOLS, jobs=jobs))
    assert {u.job_id: u.reason for u in solution.unplaced} == {
        "budget": "cheapest feasible pool costs 40.00 yuan > budget 30.00 yuan",
        "residency": "no pool of npu in the allowed regions C",
        "deadline": "fastest feasible pool needs 3,600.0 s (transfer + run) > deadline 3000 s",
        "gang": "no pool with 64 free devices of npu in any region (most free: 16)",
    }


def test_starving_job_overtakes_through_aging() -> None:
    pools = (_pool("only", "A", 8, 500),)
    old = _job("old", 0, waited_s=6 * 3600)  # effective priority 1 + 0 + 6 = 7
    new = _job("new", 5)  # 1 + 5 = 6
    solution = CpSatMatcher(num_workers=1).solve(Problem(pools=pools, jobs=(new, old)))
    assert [a.job_id for a in solution.assignments] == ["old"]


def test_quote_ranks_feasible_with_capacity_first() -> None:
    pools = (*POOLS, _pool("full", "A", 4, 100), _pool("far", "C", 64, 600))
    job = _job("q", 0, data_region="A", data_mb=100_000, max_price_minor=6000)
    problem = Problem(
        pools=pools, jobs=(), policy=Policy(w_latency=1), latency_ms={"A": {"C": 30.0}}
    )
    lines = quote(job, problem)
    assert [(q.rank, q.pool_id, q.feasible, q.has_capacity) for q in lines] == [
        (1, "cheap", True, True),
        (2, "far", True, True),
        (3, "full", True, False),
        (4, "dear", False, True),
    ]
    far = lines[1]
    assert (far.rtt_ms, far.transfer_ms, far.charge_minor) == (30, 30 + 8000, 4800)
    assert lines[2].reason == "4 devices free now, 8 needed"
    assert lines[3].reason == "charge 64.00 yuan > budget 60.00 yuan"
