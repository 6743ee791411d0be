"""Container images in matching: a job naming an image runs only where its center accepts
that image, a job naming none only where the center runs no containers, in every solver
(greedy, the flow heuristic, CP-SAT, SCIP where present, the pool-group path); a job no
center accepts waits with that reason; quotes and the problem file carry images."""

from __future__ import annotations

import re

import pytest

from matcher import (
    CpSatMatcher,
    GreedyMatcher,
    InvalidProblem,
    JobRequest,
    Matcher,
    PoolSlot,
    Problem,
    dump_problem,
    load_problem,
    quote,
)
from tests.matcher.test_properties import check_feasible

A, B = "icx/a:1", "registry.example:5000/team/b@sha256:" + "0" * 64


def _pool(pool_id: str, price: int, images: tuple[str, ...] = (), free: int = 8) -> PoolSlot:
    return PoolSlot(
        pool_id=pool_id,
        center_id=pool_id,
        region="R",
        accelerator="npu",
        free=free,
        memory_gb=64,
        tflops=300,
        power_w=400,
        pue_milli=1250,
        grid_g_per_kwh=500,
        price_minor_per_device_hour=price,
        images=images,
    )


# The cheapest pool runs no containers; the container centers cost more.
POOLS = (_pool("plain", 100), _pool("only-a", 200, (A,)), _pool("a-and-b", 300, (A, B)))

SOLVERS: dict[str, Matcher] = {
    "greedy": GreedyMatcher(),
    "flow": CpSatMatcher(use_cpsat=False, num_workers=1),
    "cpsat": CpSatMatcher(use_cpsat=True, num_workers=1),
    "auto": CpSatMatcher(num_workers=1),  # SCIP where present
    "grouped": CpSatMatcher(grouped=True, num_workers=1),
}


def _job(job_id: str, image: str = "", devices: int = 2) -> JobRequest:
    return JobRequest(job_id=job_id, accelerator="npu", devices=devices, seconds=3600, image=image)


@pytest.mark.parametrize("solver", SOLVERS, ids=list(SOLVERS))
def test_each_job_goes_where_its_image_is_accepted(solver: str) -> None:
    jobs = (_job("bare"), _job("wants-a", A), _job("wants-b", B), _job("wants-z", "icx/z:1"))
    problem = Problem(pools=POOLS, jobs=jobs)
    solution = SOLVERS[solver].solve(problem)
    check_feasible(problem, solution)
    assert {a.job_id: a.pool_id for a in solution.assignments} == {
        "bare": "plain",  # never a container center, though it has room
        "wants-a": "only-a",  # the cheaper of the two that accept it
        "wants-b": "a-and-b",
    }
    assert {u.job_id: u.reason for u in solution.unplaced} == {
        "wants-z": ("no center with a pool of npu in any region accepts the image icx/z:1")
    }


@pytest.mark.parametrize("solver", SOLVERS, ids=list(SOLVERS))
def test_a_job_without_an_image_waits_where_only_container_centers_are(solver: str) -> None:
    problem = Problem(pools=POOLS[1:], jobs=(_job("bare"), _job("wants-a", A)))
    solution = SOLVERS[solver].solve(problem)
    check_feasible(problem, solution)
    assert [a.job_id for a in solution.assignments] == ["wants-a"]
    assert [(u.job_id, u.reason) for u in solution.unplaced] == [
        (
            "bare",
            "the centers with a pool of npu in any region run only container jobs, "
            "and it names no image",
        )
    ]


@pytest.mark.parametrize("solver", SOLVERS, ids=list(SOLVERS))
def test_jobs_of_one_image_compete_for_the_pools_that_accept_it(solver: str) -> None:
    # Three jobs of 6 devices want A: one fits each container pool; the third waits,
    # though the plain pool has room.
    jobs = tuple(_job(f"a{i}", A, devices=6) for i in range(3))
    problem = Problem(pools=POOLS, jobs=jobs)
    solution = SOLVERS[solver].solve(problem)
    check_feasible(problem, solution)
    assert sorted(a.pool_id for a in solution.assignments) == ["a-and-b", "only-a"]
    assert len(solution.unplaced) == 1
    assert "feasible pools are taken" in solution.unplaced[0].reason


def test_the_unplaced_reason_says_what_else_is_missing_when_the_image_is_not_why() -> None:
    solution = CpSatMatcher(num_workers=1).solve(
        Problem(pools=POOLS, jobs=(JobRequest(job_id="j", accelerator="gpu", devices=1,
                                              seconds=60, image=A),))
    )  # fmt: skip
    assert [u.reason for u in solution.unplaced] == ["no pool of gpu in any region"]


def test_a_quote_lists_only_the_pools_that_accept_the_image() -> None:
    problem = Problem(pools=POOLS, jobs=())
    assert [q.pool_id for q in quote(_job("q", A), problem)] == ["only-a", "a-and-b"]
    assert [q.pool_id for q in quote(_job("q"), problem)] == ["plain"]
    assert quote(_job("q", "icx/z:1"), problem) == ()


def test_the_problem_file_carries_images_and_refuses_a_bad_one() -> None:
    problem = Problem(pools=POOLS, jobs=(_job("wants-a", A), _job("bare")))
    doc = dump_problem(problem)
    assert [p.get("images") for p in doc["pools"]] == [None, [A], [A, B]]
    assert [j.get("image") for j in doc["jobs"]] == [A, None]
    assert load_problem(doc) == problem
    doc["pools"][1]["images"] = ["Not/An:Image"]
    with pytest.raises(
        InvalidProblem,
        match=re.escape("pool 'only-a': images[0] must be an image reference such as"),
    ):
        load_problem(doc)
    doc["pools"][1]["images"] = "icx/a:1"
    with pytest.raises(InvalidProblem, match=re.escape("pools[1].images: expected a list")):
        load_problem(doc)
    with pytest.raises(InvalidProblem, match="image must name a tag or a digest"):
        _job("x", "icx/a")
