"""The two-stage model of `matcher.cpsat` as a MIP, solved by SCIP through OR-Tools'
linear solver wrapper: on small rounds (the 17 reference centers) SCIP's LP-based
branch and bound closes the first objective to within 0.01% in under a second, where
CP-SAT with two workers stays at the greedy's value for the whole round.

Same variables and constraints as CP-SAT's model (x_cp jobs of class c on pool p,
class counts, pool capacities, region quotas); stage 1 maximises the placed value,
stage 2 holds it and minimises the cost. SCIP works in floating point, so its answer is
rounded and checked against every constraint in integers before it is used; its bounds
are turned into integers on the safe side.
"""

from __future__ import annotations

import math
import time

import numpy as np
from ortools.linear_solver import pywraplp

from matcher._candidates import Instance, Int64s, exact_dot
from matcher._heuristics import pool_used, region_used


def available() -> bool:
    return pywraplp.Solver.CreateSolver("SCIP") is not None


def _feasible(inst: Instance, n: Int64s) -> bool:
    if (n < 0).any():
        return False
    cls = inst.class_of_candidate()
    placed = np.bincount(cls, weights=n, minlength=len(inst.classes))
    if (placed > inst.count).any():
        return False
    if (pool_used(inst, n) > inst.free).any():
        return False
    return bool((region_used(inst, n) <= inst.quota).all())


def solve(
    inst: Instance, hint: Int64s, value_cap: int, deadline: float, num_threads: int
) -> tuple[Int64s, int, int | None, bool] | None:
    """(jobs per candidate, value bound, cost bound or None, both stages proven) within
    `deadline` (a `time.perf_counter()` instant), or None if SCIP found nothing usable.
    `hint` is the incumbent: returned unless SCIP's answer is better; `value_cap` a
    known upper bound on the value (sets stage 1's tolerance)."""
    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None or len(inst.pool) == 0:
        return None
    solver.SetNumThreads(num_threads)
    cls = inst.class_of_candidate()
    d = inst.devices[cls]
    region = inst.pool_region[inst.pool]
    ub = np.minimum(np.minimum(inst.count[cls], inst.free[inst.pool] // d), inst.quota[region] // d)
    x = [solver.IntVar(0.0, float(u), "") for u in ub]
    for c in range(len(inst.classes)):
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        if hi > lo and int(ub[lo:hi].sum()) > inst.count[c]:
            row = solver.Constraint(0.0, float(inst.count[c]))
            for a in range(lo, hi):
                row.SetCoefficient(x[a], 1.0)
    for p in range(len(inst.pools)):
        arcs = np.nonzero(inst.pool == p)[0]
        if len(arcs) and int((ub[arcs] * d[arcs]).sum()) > inst.free[p]:
            row = solver.Constraint(0.0, float(inst.free[p]))
            for arc in arcs.tolist():
                row.SetCoefficient(x[arc], float(d[arc]))
    for r in range(len(inst.regions)):
        arcs = np.nonzero(region == r)[0]
        if len(arcs) and int((ub[arcs] * d[arcs]).sum()) > inst.quota[r]:
            row = solver.Constraint(0.0, float(inst.quota[r]))
            for arc in arcs.tolist():
                row.SetCoefficient(x[arc], float(d[arc]))
    value = inst.value[cls]
    objective = solver.Objective()
    for a, var in enumerate(x):
        objective.SetCoefficient(var, float(value[a]))
    objective.SetMaximization()

    # The wrapper's default relative gap is 1e-4. Stage 1 stops within 1e-5 of its bound,
    # or exactly where that is less than one unit of value, so that stage 2 keeps time
    # to lower the cost; stage 2 closes the cost exactly.
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, min(1e-5, 0.5 / max(1.0, float(value_cap))))

    def run(share: float) -> tuple[int, Int64s | None]:
        left = deadline - time.perf_counter()
        if left <= 0.05:
            return pywraplp.Solver.NOT_SOLVED, None
        solver.SetTimeLimit(max(1, int(left * share * 1000)))
        status = solver.Solve(params)
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return status, None
        n = np.array([round(var.solution_value()) for var in x], dtype=np.int64)
        return status, n if _feasible(inst, n) else None

    solver.SetHint(x, [float(h) for h in hint])
    status, n = run(0.8)
    if n is None:
        return None
    # SCIP's bound is a float within its tolerances: to the integer at or above it,
    # allowing SCIP's relative epsilon (1e-9).
    best_bound = objective.BestBound()
    value_bound = math.floor(best_bound + 1e-9 * abs(best_bound) + 1e-6)
    placed = exact_dot(n, value)
    if placed < exact_dot(hint, value):
        n, placed = hint, exact_dot(hint, value)
    stage1_proven = status == pywraplp.Solver.OPTIMAL and value_bound <= placed
    cost = inst.cost
    value_row = solver.Constraint(float(placed), solver.infinity())
    for a, var in enumerate(x):
        value_row.SetCoefficient(var, float(value[a]))
        objective.SetCoefficient(var, float(cost[a]))
    objective.SetMinimization()
    solver.SetHint(x, [float(k) for k in n])
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
    status, m = run(0.9)
    cost_bound: int | None = None
    optimal = False
    if m is not None and exact_dot(m, value) >= placed:
        if exact_dot(m, cost) < exact_dot(n, cost):
            n = m
        if stage1_proven:
            low = objective.BestBound()
            cost_bound = math.ceil(low - 1e-9 * abs(low) - 1e-6)
            optimal = status == pywraplp.Solver.OPTIMAL and cost_bound >= exact_dot(n, cost)
    return n, value_bound, cost_bound, optimal
