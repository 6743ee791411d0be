"""The allocation of pending jobs to pools: a pure library (values in, values out).

`CpSatMatcher` is the round's matcher (greedy floor, min-cost-flow bound, CP-SAT);
`GreedyMatcher` the baseline; `quote` ranks pools for one job; `problem_json` reads and
writes the replayable problem file.
"""

from typing import TYPE_CHECKING, Any

from matcher.errors import InvalidProblem, MatcherError
from matcher.greedy import GreedyMatcher
from matcher.model import (
    ANY,
    Assignment,
    JobRequest,
    Matcher,
    Policy,
    PoolSlot,
    Problem,
    Solution,
    Unplaced,
    carbon_g,
    compatible,
    cost_milli_minor,
    effective_priority,
    energy_wh,
    feasible,
    job_charge_minor,
    rtt_ms,
    transfer_ms,
    value,
)
from matcher.problem_json import dump_problem, load_problem, load_problem_file, solution_to_json
from matcher.quote import QuoteLine, quote

if TYPE_CHECKING:
    from matcher.cpsat import CpSatMatcher

__all__ = [
    "ANY",
    "SOLVERS",
    "Assignment",
    "CpSatMatcher",
    "GreedyMatcher",
    "InvalidProblem",
    "JobRequest",
    "Matcher",
    "MatcherError",
    "Policy",
    "PoolSlot",
    "Problem",
    "QuoteLine",
    "Solution",
    "Unplaced",
    "carbon_g",
    "compatible",
    "cost_milli_minor",
    "dump_problem",
    "effective_priority",
    "energy_wh",
    "feasible",
    "job_charge_minor",
    "load_problem",
    "load_problem_file",
    "make_matcher",
    "quote",
    "rtt_ms",
    "solution_to_json",
    "transfer_ms",
    "value",
]

SOLVERS = ("auto", "greedy", "flow", "cpsat")


def __getattr__(name: str) -> Any:
    # OR-Tools takes about a second to import: only what solves with it loads it, so that
    # `icx` commands that never match start without it.
    if name == "CpSatMatcher":
        from matcher.cpsat import CpSatMatcher

        return CpSatMatcher
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")


def make_matcher(solver: str = "auto", *, time_limit_s: float = 2.0) -> Matcher:
    """The matcher named `solver`: "auto" (SCIP, else CP-SAT, where the model is small
    enough, the flow heuristic otherwise), "greedy", "flow" (no MIP or CP-SAT) or
    "cpsat" (always CP-SAT)."""
    if solver == "greedy":
        return GreedyMatcher()
    if solver not in SOLVERS:
        raise InvalidProblem(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    from matcher.cpsat import CpSatMatcher

    use = {"auto": None, "flow": False, "cpsat": True}[solver]
    return CpSatMatcher(time_limit_s=time_limit_s, use_cpsat=use)
