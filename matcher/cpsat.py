"""The optimising matcher: greedy floor, min-cost-flow bound and primal, then CP-SAT.

The model
=========

Notation. J jobs, grouped into classes c of interchangeable jobs (same accelerator,
devices, seconds, regions, budget, effective priority, data, deadline, minimum memory and
TFLOPS, container image); count_c jobs in class c. P pools p with free_p free devices, in
region r(p). d_c devices per job (a gang: all in one pool). For each class its candidates A_c: the
pools that pass every per-job hard constraint

    accelerator model (or "any") and minimum memory / TFLOPS per device,
    r(p) in the job's allowed regions (data residency),
    the job's image among the images p's center accepts (no image: p's center runs
      no containers),
    d_c <= free_p,
    charge_cp = ceil(price_p x d_c x seconds_c / 3600) <= budget_c (fen),
    seconds_c x 1000 + transfer_cp <= deadline_c x 1000 (ms),

with transfer_cp = RTT(data region, r(p)) + ceil(data_mb x 8000 / bandwidth) ms, zero
when the data is already in r(p).

Variables. x_cp in 0..min(count_c, free_p // d_c, quota_r(p) // d_c) for p in A_c: how
many jobs of class c run on pool p this round.

Constraints.

    sum_p x_cp <= count_c                              every class c
    sum_c d_c x_cp <= free_p                           every pool p   (capacity)
    sum_{p in r} sum_c d_c x_cp <= quota_r             every region r with a quota

Objective, lexicographic.

    1. maximise V = sum_cp v_c x_cp, v_c = e_c x d_c x seconds_c, where the effective
       priority e_c = 1 + priority + waited_s // aging_s (so waiting raises it and no job
       starves); a job never waits to save money when it fits its constraints;
    2. then, with V held at its best value found, minimise
       C = sum_cp k_cp x_cp, k_cp = `matcher.model.cost_milli_minor` (milli-minor units):
       w_cost x charge x 1000 + w_carbon x carbon_g x carbon price per tonne / 1000
       + w_latency x d_c x transfer_ms - incentive (pools in incentive regions).

Solving. (a) The baseline greedy on the same candidates: the floor; the answer is never
worse, lexicographically, than greedy. (b) The LP relaxation of stage 1 is a min-cost
flow (see `matcher._flow`); its optimum is the round's upper bound on V, valid whatever
is pruned later, and a tie-broken flow rounded down, then filled and moved to cheaper
pools, is a near-optimal primal. (c) Where the model is small enough (at most
`max_cpsat_arcs` candidates after keeping each class's `top_k` cheapest pools plus the
incumbent's), CP-SAT solves stage 1 then stage 2, hinted with the incumbent, within the
time limit. Without pruning, CP-SAT's own bounds are valid too and an OPTIMAL status is a
proof. (d) A last fill places anything that still fits, so every answer is maximal.
"""

from __future__ import annotations

import time

import numpy as np
from ortools.sat.python import cp_model

from matcher import _flow, _grouped, _mip
from matcher._candidates import Instance, Int64s, build, exact_dot
from matcher._explain import to_solution
from matcher._heuristics import better, empty, evaluate, fill, greedy, improve_cost
from matcher.errors import InvalidSettings
from matcher.model import Problem, Solution


class CpSatMatcher:
    """The round's matcher. `solve` is pure: the same problem gives a solution of the
    same quality or better; it stops at `time_limit_s` with the best solution found.

    `use_cpsat`: None decides by size (`max_cpsat_arcs`) and prefers SCIP on the exact
    model (`matcher._mip`; `use_mip=False` keeps CP-SAT); True always runs CP-SAT (on
    the pruned model); False stops after the flow heuristic.

    `grouped`: None takes the pool-group path (`matcher._grouped`: no full candidate
    list, greedy passes by pointers, aggregated bound) when jobs x pools exceeds
    `grouped_cells` and the pools fall into at most a quarter as many cost groups;
    True or False forces it on or off.

    `warm_start`: the instance remembers its last solution; on the pool-group path, a
    round sharing at least half its jobs with the last one starts from the last
    assignments that still hold (then fills) instead of the value-per-device and
    LP-guided passes, and skips the cost pass. The greedy floor and the bound are computed afresh
    every round, so the guarantees are those of a cold round.
    """

    name = "cpsat"

    def __init__(
        self,
        *,
        time_limit_s: float = 2.0,
        num_workers: int = 2,
        top_k: int = 32,
        max_cpsat_arcs: int = 60_000,
        exact_flow_arcs: int = 1_000_000,
        grouped_cells: int = 1_000_000,
        grouped: bool | None = None,
        warm_start: bool = False,
        use_mip: bool | None = None,
        use_cpsat: bool | None = None,
        seed: int = 0,
    ) -> None:
        if time_limit_s <= 0:
            raise InvalidSettings(f"time_limit_s must be > 0, got {time_limit_s}")
        if num_workers < 1:
            raise InvalidSettings(f"num_workers must be >= 1, got {num_workers}")
        self.time_limit_s = time_limit_s
        self.num_workers = num_workers
        self.top_k = top_k
        self.max_cpsat_arcs = max_cpsat_arcs
        self.exact_flow_arcs = exact_flow_arcs
        self.grouped_cells = grouped_cells
        self.grouped = grouped
        self.warm_start = warm_start
        self.use_mip = use_mip
        self._last: tuple[set[str], dict[str, str]] | None = None
        self.use_cpsat = use_cpsat
        self.seed = seed

    def solve(self, problem: Problem) -> Solution:
        started = time.perf_counter()
        if self._wants_grouped(problem):
            return self._solve_grouped(problem, started)
        inst = build(problem)
        floor = greedy(problem, inst)
        if _uncontended(inst, floor):
            # Every job placed, each on a cheapest candidate of its own: nothing can place
            # more or cost less, so this is optimal for both objectives, proven without a
            # solver. (Most rounds of a federation with room to spare are like this.)
            value, cost = evaluate(inst, floor)
            return self._remember(
                to_solution(
                    inst,
                    floor,
                    solver="greedy-exact",
                    seconds=time.perf_counter() - started,
                    bound_value=value,
                    cost_bound_milli_minor=cost,
                    optimal=True,
                )
            )
        candidates = [floor, fill(inst, floor), fill(inst, empty(inst))]
        bound = _flow.aggregated_bound(inst)
        if len(inst.pool) <= self.exact_flow_arcs:
            bound = min(bound, _flow.lp_bound(inst))
            flowed = _flow.primal(inst)
            if flowed is not None:
                candidates.append(fill(inst, flowed))
        best = max(candidates, key=lambda n: _key(evaluate(inst, n)))
        best = improve_cost(inst, best)
        best_eval = evaluate(inst, best)
        solver = "flow"
        cost_bound: int | None = None
        optimal = False
        outcome = None
        if self._wants_mip(inst):
            # SCIP may overrun its limit a little, and the answer still needs explaining.
            deadline = started + self.time_limit_s * 0.9 - 0.05
            outcome, exact = _mip.solve(inst, best, bound, deadline, 1), "mip"
        elif self._wants_cpsat(inst):
            outcome, exact = self._cpsat(inst, best, bound, started), "cpsat"
        if outcome is not None:
            n, value_bound, cost_bound, optimal = outcome
            bound = min(bound, value_bound)
            n = improve_cost(inst, fill(inst, n))
            if not better(best_eval, evaluate(inst, n)):
                best, best_eval = n, evaluate(inst, n)
                solver = exact
            else:  # the heuristic answer stands; the solver's cost bound is not its own
                cost_bound, optimal = None, False
        return self._remember(
            to_solution(
                inst,
                best,
                solver=solver,
                seconds=time.perf_counter() - started,
                bound_value=bound,
                cost_bound_milli_minor=cost_bound,
                optimal=optimal,
            )
        )

    def _wants_grouped(self, problem: Problem) -> bool:
        """Large rounds whose pools fall into few cost groups skip the full candidate
        list (see `matcher._grouped`). `grouped` True or False forces the choice."""
        if self.grouped is not None:
            return self.grouped
        if len(problem.jobs) * len(problem.pools) <= self.grouped_cells:
            return False
        return _grouped.n_groups(problem) * 4 <= len(problem.pools)

    def _solve_grouped(self, problem: Problem, started: float) -> Solution:
        """Priority-order greedy (the floor), the floor filled up, the value-per-device
        greedy and the aggregated LP's placement, by pointer passes over pool groups;
        the aggregated flow bound."""
        gr = _grouped.Grouped(problem)
        floor = _grouped.greedy(gr)
        previous = self._previous(problem)
        placements = [floor, _grouped.fill(gr, floor)]
        if previous is None:
            placements += [_grouped.fill(gr), _grouped.guided(gr)]
        else:
            # Warm: the last round's assignments that still hold, filled up, replace
            # the value-per-device pass and the LP-guided pass.
            placements.append(_grouped.fill(gr, _grouped.carried(gr, previous)))
        inst, ns = _grouped.instance(gr, placements)
        bound = _flow.aggregated_bound(inst)
        best = max(ns, key=lambda n: _key(evaluate(inst, n)))
        if previous is None:
            best = improve_cost(inst, best)
        return self._remember(
            to_solution(
                inst,
                best,
                solver="grouped" if previous is None else "grouped-warm",
                seconds=time.perf_counter() - started,
                bound_value=bound,
            )
        )

    def _previous(self, problem: Problem) -> dict[str, str] | None:
        """The last round's assignments, if warm starts are on and at least half of this
        round's jobs were in the last round."""
        if not self.warm_start or self._last is None:
            return None
        last_jobs, assigned = self._last
        shared = sum(1 for j in problem.jobs if j.job_id in last_jobs)
        return assigned if 2 * shared >= len(problem.jobs) else None

    def _remember(self, solution: Solution) -> Solution:
        if self.warm_start:
            jobs = {a.job_id for a in solution.assignments} | {u.job_id for u in solution.unplaced}
            self._last = (jobs, {a.job_id: a.pool_id for a in solution.assignments})
        return solution

    def _wants_mip(self, inst: Instance) -> bool:
        """SCIP on the exact model: "auto" rounds whose full candidate list has at most
        `max_cpsat_arcs` pairs (CP-SAT is used where SCIP is missing or `use_mip` is
        False)."""
        if self.use_cpsat is not None or self.use_mip is False or len(inst.pool) == 0:
            return False
        return len(inst.pool) <= self.max_cpsat_arcs and _mip.available()

    def _wants_cpsat(self, inst: Instance) -> bool:
        if self.use_cpsat is not None:
            return self.use_cpsat and len(inst.pool) > 0
        if len(inst.pool) == 0:
            return False
        arcs = int(np.minimum(np.diff(inst.ptr), self.top_k).sum())
        return arcs <= self.max_cpsat_arcs

    def _cpsat(
        self, inst: Instance, incumbent: Int64s, bound: int, started: float
    ) -> tuple[Int64s, int, int | None, bool] | None:
        """Two-stage CP-SAT. Returns (jobs per candidate of `inst`, value bound, cost
        bound or None, proven optimal) or None if it found nothing."""
        model_inst, index = inst.pruned(self.top_k, keep=incumbent > 0)
        exact = len(index) == len(inst.pool)
        hint = incumbent[index]
        cls = np.repeat(np.arange(len(inst.classes), dtype=np.int64), np.diff(model_inst.ptr))
        d = inst.devices[cls]
        region = inst.pool_region[model_inst.pool]
        ub = np.minimum(
            np.minimum(inst.count[cls], inst.free[model_inst.pool] // d), inst.quota[region] // d
        )
        model = cp_model.CpModel()
        x = [model.new_int_var(0, int(u), "") for u in ub]
        arcs_of_class: dict[int, list[int]] = {}
        for a, c in enumerate(cls):
            arcs_of_class.setdefault(int(c), []).append(a)
        for klass, arcs in arcs_of_class.items():
            if int(ub[arcs].sum()) > inst.count[klass]:
                model.add(sum(x[a] for a in arcs) <= int(inst.count[klass]))
        arcs_of_pool: dict[int, list[int]] = {}
        for a, p in enumerate(model_inst.pool):
            arcs_of_pool.setdefault(int(p), []).append(a)
        for p, arcs in arcs_of_pool.items():
            if int((ub[arcs] * d[arcs]).sum()) > inst.free[p]:
                model.add(
                    cp_model.LinearExpr.weighted_sum(
                        [x[a] for a in arcs], [int(d[a]) for a in arcs]
                    )
                    <= int(inst.free[p])
                )
        for r in range(len(inst.regions)):
            arcs = [int(a) for a in np.nonzero(region == r)[0]]
            if arcs and int((ub[arcs] * d[arcs]).sum()) > inst.quota[r]:
                model.add(
                    cp_model.LinearExpr.weighted_sum(
                        [x[a] for a in arcs], [int(d[a]) for a in arcs]
                    )
                    <= int(inst.quota[r])
                )
        v = [int(val) for val in inst.value[cls]]
        k = [int(val) for val in model_inst.cost]
        value_expr = cp_model.LinearExpr.weighted_sum(x, v)
        for a, var in enumerate(x):
            model.add_hint(var, int(hint[a]))

        solver = cp_model.CpSolver()
        solver.parameters.num_workers = self.num_workers
        solver.parameters.random_seed = self.seed
        current = hint.copy()
        value_bound = bound
        stage1_proven = evaluate(model_inst, hint)[0] >= bound
        if not stage1_proven:
            left = self.time_limit_s - (time.perf_counter() - started)
            if left <= 0.05:
                return None
            model.maximize(value_expr)
            solver.parameters.max_time_in_seconds = left * 0.5
            status = solver.solve(model)
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                return None
            current = self._read(solver, x)
            if exact:
                value_bound = min(value_bound, int(solver.best_objective_bound + 1e-6))
                stage1_proven = status == cp_model.OPTIMAL
            model.clear_hints()  # type: ignore[no-untyped-call]
            for a, var in enumerate(x):
                model.add_hint(var, int(current[a]))
        placed = exact_dot(current, inst.value[cls])
        left = self.time_limit_s - (time.perf_counter() - started)
        cost_bound: int | None = None
        optimal = False
        if left > 0.05:
            model.add(value_expr >= placed)
            model.minimize(cp_model.LinearExpr.weighted_sum(x, k))
            solver.parameters.max_time_in_seconds = left * 0.9
            status = solver.solve(model)
            if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                current = self._read(solver, x)
                if exact and stage1_proven:
                    cost_bound = int(np.ceil(solver.best_objective_bound - 1e-6))
                    optimal = status == cp_model.OPTIMAL
        full = np.zeros(len(inst.pool), dtype=np.int64)
        full[index] = current
        return full, value_bound, cost_bound, optimal

    @staticmethod
    def _read(solver: cp_model.CpSolver, x: list[cp_model.IntVar]) -> Int64s:
        values = solver.response_proto.solution
        return np.array([values[var.index] for var in x], dtype=np.int64)


def _key(evaluated: tuple[int, int]) -> tuple[int, int]:
    """Sort key for the lexicographic objective: more value, then less cost."""
    return evaluated[0], -evaluated[1]


def _uncontended(inst: Instance, n: Int64s) -> bool:
    """Whether `n` places every job, each on a candidate of least objective cost for its
    class: then no solution places more work or costs less."""
    if int(n.sum()) != int(inst.count.sum()):
        return False
    for c in range(len(inst.classes)):
        lo, hi = int(inst.ptr[c]), int(inst.ptr[c + 1])
        if hi == lo:
            return False
        least = int(inst.cost[lo:hi].min())
        used = n[lo:hi] > 0
        if bool(used.any()) and int(inst.cost[lo:hi][used].max()) != least:
            return False
    return True
