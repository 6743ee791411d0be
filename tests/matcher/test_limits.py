# ruff: noqa: E501  (tables of exact messages read best one case a line)
"""The matcher at the bounds: out-of-range figures are refused naming the field, charges
and totals stay exact where int64 would wrap, and a round places a job exactly when the
quote calls some pool feasible with capacity (one feasibility rule for both)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import types as limits
from core.money import charge_minor
from matcher import (
    CpSatMatcher,
    GreedyMatcher,
    InvalidProblem,
    JobRequest,
    Matcher,
    Policy,
    PoolSlot,
    Problem,
    quote,
)
from matcher.model import MAX_BANDWIDTH_MBPS, MAX_RTT_MS, worst_cost_milli_minor

MAX_PRICE = limits.MAX_PRICE_MINOR_PER_DEVICE_HOUR
MATCHERS: dict[str, Matcher] = {
    "cpsat": CpSatMatcher(time_limit_s=2.0, num_workers=1),
    "grouped": CpSatMatcher(time_limit_s=2.0, num_workers=1, grouped=True),
    "greedy": GreedyMatcher(),
}


def _pool(pool_id: str = "B/p", **kw: object) -> PoolSlot:
    fields: dict[str, object] = {
        "center_id": pool_id.split("/")[0],
        "region": "W",
        "accelerator": "ascend-910",
        "free": 8,
        "memory_gb": 32,
        "tflops": 256,
        "power_w": 300,
        "pue_milli": 1200,
        "grid_g_per_kwh": 500,
        "price_minor_per_device_hour": 500,
        **kw,
    }
    return PoolSlot(pool_id=pool_id, **fields)  # type: ignore[arg-type]


def _job(job_id: str = "j", **kw: object) -> JobRequest:
    fields: dict[str, object] = {"accelerator": "ascend-910", "devices": 1, "seconds": 60, **kw}
    return JobRequest(job_id=job_id, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("price", [2**53, 2**62, 2**63 - 1])
def test_a_price_beyond_the_bound_is_refused(price: int) -> None:
    message = f"pool 'B/p': price_minor_per_device_hour must be 0..{MAX_PRICE}, got {price}"
    with pytest.raises(InvalidProblem, match=f"^{re.escape(message)}$"):
        _pool(price_minor_per_device_hour=price)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("data_mb", 2**60, f"job 'j': data_mb must be 0..100000000, got {2**60}"),
        ("devices", 4097, "job 'j': devices must be 1..4096, got 4097"),
        ("seconds", 2**40, f"job 'j': seconds must be 1..2592000, got {2**40}"),
        ("max_price_minor", 2**63 - 1, f"job 'j': max_price_minor must be 0..{10**15}, got {2**63 - 1}"),
        ("deadline_s", 2**62, f"job 'j': deadline_s must be 0..253402300799, got {2**62}"),
    ],
)  # fmt: skip
def test_job_figures_beyond_the_bounds_are_refused(field: str, value: int, message: str) -> None:
    with pytest.raises(InvalidProblem, match=f"^{re.escape(message)}$"):
        _job("j", **{field: value})


def test_network_figures_must_be_finite_and_bounded() -> None:
    for ms in (float("inf"), float("nan"), MAX_RTT_MS + 1):
        with pytest.raises(
            InvalidProblem, match=re.escape(f"latency_ms[E][W] must be 0..{MAX_RTT_MS}, got {ms}")
        ):
            Problem(pools=(), jobs=(), latency_ms={"E": {"W": ms}})
    message = f"problem: bandwidth_mbps[E][W] must be 1..{MAX_BANDWIDTH_MBPS}, got {2**63 - 1}"
    with pytest.raises(InvalidProblem, match=f"^{re.escape(message)}$"):
        Problem(pools=(), jobs=(), bandwidth_mbps={"E": {"W": 2**63 - 1}})


def test_policy_weights_whose_worst_case_passes_2_61_are_refused() -> None:
    worst = worst_cost_milli_minor(Policy())
    assert worst == charge_minor(4096 * 2_592_000, MAX_PRICE) * 1000 == 29_491_200_000_000_000
    message = (
        "policy: a job's objective cost could reach 2.95e+19 milli-minor units at the bounds, "
        "above 2**61; lower w_cost, w_carbon, w_latency or carbon_price_minor_per_tonne"
    )
    with pytest.raises(InvalidProblem, match=f"^{re.escape(message)}$"):
        Policy(w_cost=1000)
    # The reference policies and the benchmark's carbon-weighted one fit.
    for policy in (
        Policy(),
        Policy(w_cost=1, w_carbon=10, carbon_price_minor_per_tonne=10_000),
        Policy(w_cost=1, w_carbon=1000),
        Policy(w_latency=100, incentive_minor_per_device_hour=MAX_PRICE),
    ):
        assert worst_cost_milli_minor(policy) <= 1 << 61


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_huge_data_and_a_one_hour_deadline_is_unplaced_as_quoted(name: str) -> None:
    job = _job(data_region="E", data_mb=limits.MAX_DATA_MB, deadline_s=3600)
    problem = Problem(pools=(_pool(),), jobs=(job,), default_bandwidth_mbps=1)
    [line] = quote(job, problem)
    assert (line.feasible, line.transfer_ms) == (False, 800_000_000_000)
    assert line.reason == "transfer + run 800,000,060.0 s > deadline 3600 s"
    solution = MATCHERS[name].solve(problem)
    assert solution.assignments == ()
    assert [u.job_id for u in solution.unplaced] == ["j"]


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_the_dearest_gang_is_charged_exactly(name: str) -> None:
    g, s = limits.MAX_GANG, limits.MAX_ESTIMATED_S
    charge = charge_minor(g * s, MAX_PRICE)
    assert charge == 29_491_200_000_000
    pool = _pool(free=g, price_minor_per_device_hour=MAX_PRICE)
    cheap = _job("cheap", devices=2, seconds=3600, max_price_minor=1000)
    exact = _job("exact", devices=g, seconds=s, max_price_minor=charge)
    short = _job("short", devices=g, seconds=s, max_price_minor=charge - 1)
    for job, placed in ((cheap, False), (short, False), (exact, True)):
        problem = Problem(pools=(pool,), jobs=(job,))
        solution = MATCHERS[name].solve(problem)
        assert [a.charge_minor for a in solution.assignments] == ([charge] if placed else [])
        assert [q.feasible for q in quote(job, problem)] == [placed]


def test_round_totals_are_exact_past_int64() -> None:
    # 400 gangs of 4096 devices for 30 days at the highest price: the round's cost is
    # 400 x 2.95e13 fen x 1000 = 1.18e19 milli-minor units, past 2**63 - 1.
    g, s = limits.MAX_GANG, limits.MAX_ESTIMATED_S
    jobs = tuple(_job(f"j{i:03}", devices=g, seconds=s) for i in range(400))
    pools = tuple(
        _pool(f"c{i}/p", free=200 * g, price_minor_per_device_hour=MAX_PRICE) for i in range(2)
    )
    for name in ("cpsat", "grouped"):
        solution = MATCHERS[name].solve(Problem(pools=pools, jobs=jobs))
        assert len(solution.assignments) == 400
        cost = 400 * charge_minor(g * s, MAX_PRICE) * 1000
        assert cost > 2**63
        assert solution.cost_milli_minor == cost
        assert solution.objective == 400 * g * s / 3600


def _edgy(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers in lo..hi, often at either end."""
    return st.integers(lo, hi) | st.sampled_from((lo, hi))


@st.composite
def single_job_problems(draw: st.DrawFn) -> Problem:
    pools = tuple(
        _pool(
            f"c{i}/p",
            region=draw(st.sampled_from(("E", "W"))),
            free=draw(_edgy(0, limits.MAX_GANG)),
            power_w=draw(_edgy(1, limits.MAX_POWER_W)),
            pue_milli=draw(_edgy(1000, limits.MAX_PUE_MILLI)),
            grid_g_per_kwh=draw(_edgy(0, limits.MAX_GRID_G_CO2_PER_KWH)),
            price_minor_per_device_hour=draw(_edgy(0, MAX_PRICE)),
        )
        for i in range(draw(st.integers(1, 4)))
    )
    seconds = draw(_edgy(1, limits.MAX_ESTIMATED_S))
    job = _job(
        devices=draw(_edgy(1, limits.MAX_GANG)),
        seconds=seconds,
        max_price_minor=draw(st.none() | _edgy(0, limits.MAX_BUDGET_MINOR)),
        data_region=draw(st.sampled_from(("", "E", "W"))),
        data_mb=draw(_edgy(0, limits.MAX_DATA_MB)),
        deadline_s=draw(st.none() | _edgy(0, 3 * seconds) | _edgy(0, 253_402_300_799)),
    )
    return Problem(
        pools=pools,
        jobs=(job,),
        policy=Policy(
            w_carbon=draw(st.sampled_from((0, 10))), w_latency=draw(st.sampled_from((0, 1)))
        ),
        latency_ms={"E": {"W": draw(st.sampled_from((0.0, 35.5, float(MAX_RTT_MS))))}},
        default_bandwidth_mbps=draw(_edgy(1, MAX_BANDWIDTH_MBPS)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(single_job_problems(), st.sampled_from(sorted(MATCHERS)))
def test_round_places_a_job_exactly_where_the_quote_allows(problem: Problem, name: str) -> None:
    [job] = problem.jobs
    lines = {line.pool_id: line for line in quote(job, problem)}
    runnable = {p for p, line in lines.items() if line.feasible and line.has_capacity}
    solution = MATCHERS[name].solve(problem)
    placed = [a.pool_id for a in solution.assignments]
    assert bool(placed) == bool(runnable)
    for pool_id in placed:
        assert pool_id in runnable
        [assignment] = solution.assignments
        assert assignment.charge_minor == lines[pool_id].charge_minor >= 0
