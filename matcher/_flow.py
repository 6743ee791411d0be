"""The first objective's LP relaxation as a min-cost flow: its exact optimum is the
round's upper bound, and a flow that also breaks ties by cost, rounded down, is a
near-optimal primal.

Network (one unit of flow = one device):

    source -> class c      capacity count_c x d_c, cost -density_c (value per device)
    class c -> pool p      per candidate: capacity min(count_c, free_p // d_c) x d_c
    pool p -> region r(p)  capacity free_p
    region r -> sink       capacity quota_r (or unlimited)
    source -> sink         the devices nobody places, cost 0

Any integer placement is such a flow with the same value, so the min-cost flow's value
bounds every placement (it is the LP relaxation of the first objective, with the gang
tightening free_p // d_c). Flows are integral, but a class's devices may split across
pools or stop short of whole jobs: rounding each arc down to whole jobs keeps every
constraint.
"""

from __future__ import annotations

import numpy as np
from ortools.graph.python import min_cost_flow

from matcher._candidates import Instance, Int64s, exact_dot

_TIE_STEPS = 1024  # cost tie-break resolution per unit of value density


def network(
    n_cls: int,
    supply: Int64s,
    density_cost: Int64s,
    arc_cls: Int64s,
    arc_head: Int64s,
    arc_cap: Int64s,
    arc_cost: Int64s,
    mid_region: Int64s,
    mid_cap: Int64s,
    quota: Int64s,
) -> tuple[Int64s, Int64s] | None:
    """source -> class -> middle node (pool or pool group) -> region -> sink, plus
    source -> sink. Returns (flow into each class, flow on each class arc) or None."""
    n_mid, n_reg = len(mid_cap), len(quota)
    source, sink = n_cls + n_mid + n_reg, n_cls + n_mid + n_reg + 1
    total = int(supply.sum())
    if total == 0 or len(arc_cls) == 0:
        return None
    tails = np.concatenate(
        [
            np.full(n_cls, source),
            arc_cls,
            n_cls + np.arange(n_mid),
            n_cls + n_mid + np.arange(n_reg),
            [source],
        ]
    ).astype(np.int32)
    heads = np.concatenate(
        [
            np.arange(n_cls),
            n_cls + arc_head,
            n_cls + n_mid + mid_region,
            np.full(n_reg, sink),
            [sink],
        ]
    ).astype(np.int32)
    caps = np.concatenate([supply, arc_cap, mid_cap, np.minimum(quota, total), [total]]).astype(
        np.int64
    )
    costs = np.concatenate(
        [density_cost, arc_cost, np.zeros(n_mid + n_reg + 1, dtype=np.int64)]
    ).astype(np.int64)
    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    flow.set_node_supply(source, total)
    flow.set_node_supply(sink, -total)
    if flow.solve() != flow.OPTIMAL:
        return None
    flows = np.asarray(flow.flows(np.arange(n_cls + len(arc_cls), dtype=np.int32)))
    return flows[:n_cls].astype(np.int64), flows[n_cls:].astype(np.int64)


def ties(per_device: Int64s, steps: int) -> Int64s:
    """Each cost scaled into 0..steps-1 between the least and the greatest:
    (c - lo) x (steps - 1) // (hi - lo), exact. In int64 where the product fits; in
    Python integers where costs span more than 2**63 / steps (prices near the bound)."""
    lo, hi = int(per_device.min()), int(per_device.max())
    span = hi - lo
    if span == 0:
        return np.zeros(len(per_device), dtype=np.int64)
    if span * (steps - 1) < 1 << 63:
        out: Int64s = (per_device - lo) * (steps - 1) // span
        return out
    return np.array([(c - lo) * (steps - 1) // span for c in per_device.tolist()], dtype=np.int64)


def _solve(inst: Instance, value_scale: int, arc_cost: Int64s) -> tuple[Int64s, Int64s] | None:
    """The per-pool network."""
    cls = np.repeat(np.arange(len(inst.classes), dtype=np.int64), np.diff(inst.ptr))
    d = inst.devices
    return network(
        len(inst.classes),
        inst.count * d,
        -inst.density * value_scale,
        cls,
        inst.pool.astype(np.int64),
        np.minimum(inst.count[cls], inst.free[inst.pool] // d[cls]) * d[cls],
        arc_cost,
        inst.pool_region.astype(np.int64),
        inst.free,
        inst.quota,
    )


def _trivial(inst: Instance) -> int:
    has = np.diff(inst.ptr) > 0
    return exact_dot(inst.count * has, inst.value)


def lp_bound(inst: Instance) -> int:
    """An upper bound on the placed value: the LP optimum (an integral flow's value, so
    already an integer); the sum of all values of jobs with a candidate where the flow
    cannot be solved."""
    solved = _solve(inst, 1, np.zeros(len(inst.pool), dtype=np.int64))
    if solved is None:
        return _trivial(inst)
    to_class, _ = solved
    return exact_dot(to_class, inst.density)


def aggregated_bound(inst: Instance) -> int:
    """A cheaper, weaker upper bound: the same network with the pools of one group
    (accelerator, region) merged into one node of their summed free devices. A class's
    arc into a group carries at most the jobs that fit its feasible pools one pool at a
    time, so every placement is still a flow: the bound stays valid."""
    agg = inst.aggregate
    n_groups = int(agg.group_of_pool.max()) + 1 if len(agg.group_of_pool) else 0
    group_free = np.bincount(agg.group_of_pool, weights=inst.free, minlength=n_groups)
    group_region = np.zeros(n_groups, dtype=np.int64)
    group_region[agg.group_of_pool] = inst.pool_region
    d = inst.devices
    solved = network(
        len(inst.classes),
        inst.count * d,
        -inst.density,
        agg.cls,
        agg.group,
        agg.jobs * d[agg.cls],
        np.zeros(len(agg.cls), dtype=np.int64),
        group_region,
        group_free.astype(np.int64),
        inst.quota,
    )
    if solved is None:
        return _trivial(inst)
    to_class, _ = solved
    return exact_dot(to_class, inst.density)


def primal(inst: Instance) -> Int64s | None:
    """Jobs per candidate from the flow that maximises value and, among equal value,
    prefers cheaper pools (per-device cost scaled into `_TIE_STEPS` steps); rounded down
    to whole jobs. None if the flow cannot be solved."""
    if len(inst.pool) == 0:
        return None
    cls = np.repeat(np.arange(len(inst.classes), dtype=np.int64), np.diff(inst.ptr))
    per_device = inst.cost // inst.devices[cls]
    if int(per_device.max()) > int(per_device.min()):
        solved = _solve(inst, _TIE_STEPS, ties(per_device, _TIE_STEPS))
    else:
        solved = None
    if solved is None:
        solved = _solve(inst, 1, np.zeros(len(inst.pool), dtype=np.int64))
    if solved is None:
        return None
    _, on_arc = solved
    return on_arc // inst.devices[cls]
