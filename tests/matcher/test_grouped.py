"""The pool-group path for large rounds (`matcher._grouped`): it places exactly what the
per-candidate greedy places, its answers pass the independent checker, its bound holds
and it is never worse than greedy. Pools are drawn from a few profiles, as in a
federation of similar centers, so that groups hold several pools and prices tie."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from matcher import CpSatMatcher, GreedyMatcher, PoolSlot, Problem
from matcher._candidates import build
from matcher._flow import lp_bound
from tests.matcher.test_properties import FAST, check_feasible, problems


@st.composite
def federations(draw: st.DrawFn) -> Problem:
    base = draw(problems(max_pools=3, max_jobs=16))
    profiles = base.pools
    pools = tuple(
        PoolSlot(
            **{
                **{f: getattr(p, f) for f in PoolSlot.__slots__},  # type: ignore[attr-defined]
                "pool_id": f"f{i:02d}",
                "center_id": f"f{i:02d}",
                "free": draw(st.integers(0, 12)),
                "price_minor_per_device_hour": draw(st.sampled_from([0, 700, 701, 720, 1500])),
            }
        )
        for i, p in enumerate(draw(st.lists(st.sampled_from(profiles), min_size=1, max_size=9)))
    )
    return Problem(
        pools=pools,
        jobs=base.jobs,
        policy=base.policy,
        latency_ms=base.latency_ms,
        bandwidth_mbps=base.bandwidth_mbps,
        default_bandwidth_mbps=base.default_bandwidth_mbps,
    )


def _placed(problem: Problem, matcher: CpSatMatcher | GreedyMatcher) -> tuple[int, int]:
    s = matcher.solve(problem)
    return round(s.objective * 3600), -s.cost_milli_minor


@FAST
@given(federations())
def test_grouped_greedy_places_what_the_greedy_matcher_places(problem: Problem) -> None:
    from matcher import _grouped
    from matcher._heuristics import evaluate

    gr = _grouped.Grouped(problem)
    placed = _grouped.greedy(gr)
    inst, (n,) = _grouped.instance(gr, [placed])
    solution = GreedyMatcher().solve(problem)
    assert evaluate(inst, n) == (round(solution.objective * 3600), solution.cost_milli_minor)


@FAST
@given(federations() | problems())
def test_grouped_path_is_feasible_bounded_and_never_worse_than_greedy(problem: Problem) -> None:
    solution = CpSatMatcher(grouped=True).solve(problem)
    check_feasible(problem, solution)
    assert solution.solver == "grouped"
    assert solution.bound is not None
    assert solution.objective <= solution.bound + 1e-9
    # The aggregated bound relaxes the exact LP, so it is never below it.
    assert Fraction(lp_bound(build(problem)), 3600) <= Fraction(solution.bound) + Fraction(1, 10**6)
    assert _placed(problem, CpSatMatcher(grouped=True)) >= _placed(problem, GreedyMatcher())
