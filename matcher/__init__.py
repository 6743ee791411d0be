"""The allocation of pending jobs to pools: a pure library (values in, values out)."""

from matcher.errors import InvalidProblem, MatcherError
from matcher.greedy import GreedyMatcher
from matcher.model import (
    ANY,
    Assignment,
    JobRequest,
    Matcher,
    PoolSlot,
    Policy,
    Problem,
    Solution,
    Unplaced,
    carbon_g,
    charge_fen,
    energy_wh,
    feasible,
)

__all__ = [
    "ANY",
    "Assignment",
    "GreedyMatcher",
    "InvalidProblem",
    "JobRequest",
    "Matcher",
    "MatcherError",
    "PoolSlot",
    "Policy",
    "Problem",
    "Solution",
    "Unplaced",
    "carbon_g",
    "charge_fen",
    "energy_wh",
    "feasible",
]
