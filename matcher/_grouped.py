"""Large rounds without the full candidate list: pools grouped by everything the
objective cost reads except the price, greedy passes that find each job's cheapest pool
with room by moving pointers, and a sparse `Instance` for the bound and explanations.

Why it is exact. Pools of one *group* share accelerator, memory, TFLOPS, region and
accepted images (and, when carbon has a weight, power, PUE and grid factor), so for a job
they share
compatibility, residency, transfer time, deadline and every cost term but the charge,
and the charge ceil(price x devices x seconds / 3600) never falls as the price rises.
Within a group, ordered by (price, pool index), the job's cheapest pool with room is
the first with room; its budget holds if it holds anywhere in the group. During a greedy
pass free devices only fall, so for each (group, gang size) the first pool with room
only moves forward: a pointer per (group, gang size) finds it in amortised constant
time, and equal charges are resolved by pool index as `GreedyMatcher` does. The passes
therefore place exactly what the per-candidate passes place, without building the
(class x pool) pairs; 100,000 jobs x 2,000 pools have 85 M of them.

The sparse instance keeps, per class, the cheapest feasible pool of each group (for
explanations) and every pool a pass used; its per-class diagnostics and the aggregated
bound's per-(class, group) capacities come from prefix sums over each group's pools in
price order, so the bound is the same valid bound `_flow.aggregated_bound` computes on
the full instance.
"""

from __future__ import annotations

import numpy as np

from matcher import _flow
from matcher._candidates import (
    BIG,
    Aggregate,
    ClassDiagnostics,
    Instance,
    Int64s,
    classes_of,
)
from matcher.model import (
    Problem,
    bandwidth_mbps,
    budget_of,
    compatible,
    deadline_of,
    effective_priority,
    moving_ms,
    on_time,
    rtt_ms,
)

Placement = dict[tuple[int, int], int]  # (class, pool) -> jobs

_TIE_STEPS = 1024  # cost tie-break resolution per unit of value density, as in _flow


def group_key(problem: Problem) -> list[tuple[object, ...]]:
    """Each pool's group key, in pool-id order."""
    carbon = problem.policy.w_carbon > 0
    out: list[tuple[object, ...]] = []
    for p in sorted(problem.pools, key=lambda p: p.pool_id):
        key: tuple[object, ...] = (p.accelerator, p.region, p.memory_gb, p.tflops, p.images)
        if carbon:
            key += (p.power_w, p.pue_milli, p.grid_g_per_kwh)
        out.append(key)
    return out


def n_groups(problem: Problem) -> int:
    return len(set(group_key(problem)))


class Grouped:
    """Classes, pool groups and the per-(class, group) figures of one problem."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        policy = problem.policy
        pools = tuple(sorted(problem.pools, key=lambda p: p.pool_id))
        self.pools = pools
        n_pools = len(pools)
        keys = group_key(problem)
        uniq = sorted(set(keys), key=repr)
        index = {k: i for i, k in enumerate(uniq)}
        self.group_of_pool = np.array([index[k] for k in keys], dtype=np.int64)
        n_g = len(uniq)
        self.n_groups = n_g
        rep_pool = [0] * n_g
        for i in range(n_pools - 1, -1, -1):
            rep_pool[int(self.group_of_pool[i])] = i
        regions = tuple(sorted({p.region for p in pools} | set(policy.quota_devices)))
        self.regions = regions
        region_index = {r: i for i, r in enumerate(regions)}
        self.pool_region = np.array([region_index[p.region] for p in pools], dtype=np.int32)
        self.group_region = self.pool_region[rep_pool].astype(np.int64)
        self.quota = np.full(len(regions), BIG, dtype=np.int64)
        for r, q in policy.quota_devices.items():
            self.quota[region_index[r]] = q
        self.free = np.array([p.free for p in pools], dtype=np.int64)
        self.price = np.array([p.price_minor_per_device_hour for p in pools], dtype=np.int64)

        reps, class_jobs, cgroups = classes_of(problem)
        self.reps, self.class_jobs = reps, class_jobs
        n_c = len(reps)
        self.devices = np.array([j.devices for j in reps], dtype=np.int64)
        self.seconds = np.array([j.seconds for j in reps], dtype=np.int64)
        self.count = np.array([len(m) for m in class_jobs], dtype=np.int64)
        eff = np.array([effective_priority(j, policy) for j in reps], dtype=np.int64)
        self.value = eff * self.devices * self.seconds
        self.budget = np.array([budget_of(j) for j in reps], dtype=np.int64)
        deadline = np.array([deadline_of(j) for j in reps], dtype=np.int64)
        data_mb = np.array([j.data_mb for j in reps], dtype=np.int64)

        # Per (class, group): compatibility, transfer, and every cost term but the charge.
        compat = np.zeros((n_c, n_g), dtype=np.bool_)
        transfer = np.zeros((n_c, n_g), dtype=np.int64)
        for members in cgroups:
            rep = reps[members[0]]
            rows = np.array(members, dtype=np.int64)
            for g in range(n_g):
                pool = pools[rep_pool[g]]
                if not compatible(rep, pool):
                    continue
                compat[rows, g] = True
                if rep.data_region and rep.data_region != pool.region:
                    mbps = bandwidth_mbps(problem, rep.data_region, pool.region)
                    rtt = rtt_ms(problem, rep.data_region, pool.region)
                    transfer[rows, g] = moving_ms(data_mb[rows], mbps, rtt)
        self.compat = compat
        self.finish_ms = self.seconds[:, None] * 1000 + transfer
        self.ok = compat & on_time(self.seconds[:, None], transfer, deadline[:, None])
        rp = list(rep_pool)
        power = np.array([pools[i].power_w for i in rp], dtype=np.int64)
        pue = np.array([pools[i].pue_milli for i in rp], dtype=np.int64)
        grid = np.array([pools[i].grid_g_per_kwh for i in rp], dtype=np.int64)
        incentive = np.array(
            [pools[i].region in policy.incentive_regions for i in rp], dtype=np.int64
        ) * np.int64(policy.incentive_minor_per_device_hour)
        d = self.devices[:, None]
        s = self.seconds[:, None]
        base = policy.w_latency * d * transfer - incentive[None, :] * d * s * 10 // 36
        if policy.w_carbon:
            milli_wh = d * power[None, :] * s * pue[None, :] // 3600
            carbon = (((milli_wh + 500) // 1000) * grid[None, :] + 500) // 1000
            base = base + (
                policy.w_carbon * carbon * policy.carbon_price_minor_per_tonne + 500
            ) // (1000)
        self.base = base

        # Per (group, gang size): the group's pools with that many free, by (price, index).
        self.dvals, self.d_index = np.unique(self.devices, return_inverse=True)
        n_d = len(self.dvals)
        order = np.lexsort((np.arange(n_pools), self.price, self.group_of_pool))
        bounds = np.searchsorted(self.group_of_pool[order], np.arange(n_g + 1))
        self.off = np.zeros((n_g, n_d), dtype=np.int64)
        self.len = np.zeros((n_g, n_d), dtype=np.int64)
        flat: list[Int64s] = []
        at = 0
        for g in range(n_g):
            in_group = order[bounds[g] : bounds[g + 1]]
            for k, dv in enumerate(self.dvals):
                lst = in_group[self.free[in_group] >= dv].astype(np.int64)
                self.off[g, k] = at
                self.len[g, k] = len(lst)
                flat.append(lst)
                at += len(lst)
        self.flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        self.group_size = np.diff(bounds).astype(np.int64)
        self.group_max_free = np.zeros(n_g, dtype=np.int64)
        np.maximum.at(self.group_max_free, self.group_of_pool, self.free)
        self._feasible_groups: list[Int64s | None] = [None] * n_c
        self._rows: list[tuple[int, int, int, int, list[tuple[int, int]]]] | None = None
        self.base_cache: _Base | None = None

    def charge(self, c: int, pools: Int64s) -> Int64s:
        out: Int64s = -(-(self.price[pools] * self.devices[c] * self.seconds[c]) // 3600)
        return out

    def cost(self, c: Int64s, pools: Int64s) -> Int64s:
        """Objective cost (milli-minor units) of one job of class c[i] on pools[i]."""
        charge = -(-(self.price[pools] * self.devices[c] * self.seconds[c]) // 3600)
        out: Int64s = (
            self.problem.policy.w_cost * charge * 1000 + self.base[c, self.group_of_pool[pools]]
        )
        return out

    def pass_rows(self) -> list[tuple[int, int, int, int, list[tuple[int, int]]]]:
        """Per class, what a greedy pass reads, as Python values (built once):
        (devices, seconds, budget, gang-size index, [(slot, base cost)] per feasible
        group), slot = group x gang sizes + gang-size index."""
        if self._rows is None:
            rows, cols = np.nonzero(self.ok)
            slots = (cols * len(self.dvals) + self.d_index[rows]).tolist()
            bases = self.base[rows, cols].tolist()
            ends = np.searchsorted(rows, np.arange(1, len(self.reps) + 1)).tolist()
            pairs = list(zip(slots, bases, strict=True))
            out = []
            start = 0
            for d, s, budget, di, end in zip(
                self.devices.tolist(),
                self.seconds.tolist(),
                self.budget.tolist(),
                self.d_index.tolist(),
                ends,
                strict=True,
            ):
                out.append((d, s, budget, di, pairs[start:end]))
                start = end
            self._rows = out
        return self._rows

    def groups_of(self, c: int) -> Int64s:
        found = self._feasible_groups[c]
        if found is None:
            found = np.nonzero(self.ok[c])[0].astype(np.int64)
            self._feasible_groups[c] = found
        return found


class _Pass:
    """One greedy pass: free devices, quota left and the pointers, as Python lists (a
    job looks at a few dozen groups; numpy's per-call overhead would dominate)."""

    def __init__(self, gr: Grouped, start: Placement | None = None) -> None:
        self.gr = gr
        self.room: list[int] = gr.free.tolist()
        self.quota: list[int] = gr.quota.tolist()
        self.ptr: list[int] = [0] * gr.off.size  # per (group, gang size), flattened
        self.placed: Placement = {}
        self._flat: list[int] = gr.flat.tolist()
        self._price: list[int] = gr.price.tolist()
        self._off: list[int] = gr.off.ravel().tolist()
        self._len: list[int] = gr.len.ravel().tolist()
        self._region: list[int] = gr.pool_region.tolist()
        self._group_region: list[int] = gr.group_region.tolist()
        self._n_d = gr.off.shape[1]
        self._w_cost = gr.problem.policy.w_cost * 1000
        for (c, p), jobs in (start or {}).items():
            self._take(c, p, jobs)

    def _take(self, c: int, p: int, jobs: int) -> None:
        devices = self.gr.pass_rows()[c][0] * jobs
        self.room[p] -= devices
        self.quota[self._region[p]] -= devices
        self.placed[(c, p)] = self.placed.get((c, p), 0) + jobs

    def _class(self, c: int) -> tuple[int, int, int, int, list[tuple[int, int]]]:
        """(devices, seconds, budget, gang-size index, [(slot, base cost)] per group)."""
        return self.gr.pass_rows()[c]

    def cheapest(self, c: int, only_slot: int = -1) -> int:
        """The pool of least (cost, index) with room for one job of class c, or -1; with
        `only_slot`, within that (group, gang size) only."""
        d, s, budget, _, groups = self._class(c)
        if only_slot >= 0:
            groups = [(slot, base) for slot, base in groups if slot == only_slot]
        room, flat, price, ptr = self.room, self._flat, self._price, self.ptr
        ds = d * s
        best, best_cost = -1, 0
        for slot, base in groups:
            k, end, off = ptr[slot], self._len[slot], self._off[slot]
            while k < end and room[flat[off + k]] < d:
                k += 1
            ptr[slot] = k
            if k == end:
                continue
            p = flat[off + k]
            if self.quota[self._region[p]] < d:
                continue
            charge = -(-price[p] * ds // 3600)
            if charge > budget:
                continue
            cost = self._w_cost * charge + base
            if best >= 0 and cost > best_cost:
                continue
            # Later pools of the group that tie on cost (the same charge, or any charge when
            # cost does not weigh charge): least index wins, as in the greedy matcher.
            k += 1
            while k < end:
                q = flat[off + k]
                charge_q = -(-price[q] * ds // 3600)
                if self._w_cost * charge_q + base != cost:
                    break
                if q < p and room[q] >= d and charge_q <= budget:
                    p = q
                k += 1
            if best < 0 or cost < best_cost or p < best:
                best, best_cost = p, cost
        return best

    def place(self, c: int, want: int, group: int = -1) -> int:
        """Place up to `want` jobs of class c, each on its cheapest pool with room (in
        `group` only, if given)."""
        done = 0
        d, _, _, di, _ = self.gr.pass_rows()[c]
        slot = group * self._n_d + di if group >= 0 else -1
        while done < want:
            p = self.cheapest(c, slot)
            if p < 0:
                break
            jobs = min(want - done, self.room[p] // d, self.quota[self._region[p]] // d)
            self._take(c, p, jobs)
            done += jobs
        return done


def greedy(gr: Grouped) -> Placement:
    """The baseline's rule: each job, highest priority first (then longest waiting, then
    id), to its cheapest pool with room (least pool id on ties)."""
    jobs = gr.problem.jobs
    class_of_job = np.empty(len(jobs), dtype=np.int64)
    for c, members in enumerate(gr.class_jobs):
        class_of_job[list(members)] = c
    order = sorted(
        range(len(jobs)), key=lambda i: (-jobs[i].priority, -jobs[i].waited_s, jobs[i].job_id)
    )
    run = _Pass(gr)
    for i in order:
        run.place(int(class_of_job[i]), 1)
    return run.placed


def fill(gr: Grouped, start: Placement | None = None) -> Placement:
    """Place what still fits: classes by value per device (then value), each job on its
    cheapest pool with room. From nothing this is the value-per-device greedy."""
    run = _Pass(gr, start)
    left = gr.count.copy()
    for (c, _), jobs in (start or {}).items():
        left[c] -= jobs
    for c in np.lexsort((-gr.value, -(gr.value // gr.devices))):
        c = int(c)
        if left[c] > 0:
            run.place(c, int(left[c]))
    return run.placed


def guided(gr: Grouped) -> Placement:
    """Follow the aggregated LP: solve the (class -> group) flow that maximises value
    and, among equal value, prefers groups whose cheapest feasible pool is cheaper;
    place each class's whole jobs of flow in its groups (classes by value per device),
    then fill. Guides capacity to the classes that have the fewest other places."""
    _, first_cls, first_pool, agg = _base(gr)
    if len(agg.cls) == 0:
        return {}
    d = gr.devices
    per_device = gr.cost(first_cls, first_pool) // d[first_cls]
    scale = _TIE_STEPS if int(per_device.max()) > int(per_device.min()) else 1
    ties = _flow.ties(per_device, scale)
    n_g = gr.n_groups
    group_free = np.bincount(gr.group_of_pool, weights=gr.free, minlength=n_g).astype(np.int64)
    solved = _flow.network(
        len(gr.reps),
        gr.count * d,
        -(gr.value // d) * scale,
        agg.cls,
        agg.group,
        agg.jobs * d[agg.cls],
        ties.astype(np.int64),
        gr.group_region,
        group_free,
        gr.quota,
    )
    if solved is None:
        return {}
    _, on_arc = solved
    jobs = on_arc // d[agg.cls]
    run = _Pass(gr)
    density = gr.value // d
    order = np.lexsort((agg.group, -gr.value[agg.cls], -density[agg.cls]))
    for a in order[jobs[order] > 0]:
        run.place(int(agg.cls[a]), int(jobs[a]), int(agg.group[a]))
    return fill(gr, run.placed)


def carried(gr: Grouped, previous: dict[str, str]) -> Placement:
    """The previous round's assignments (job id -> pool id) that still hold: the job
    and pool are still there, the pool is still feasible for the job and has room.
    Classes by value per device, so that room goes to the densest first."""
    pool_index = {p.pool_id: i for i, p in enumerate(gr.pools)}
    jobs = gr.problem.jobs
    run = _Pass(gr)
    for c in np.lexsort((-gr.value, -(gr.value // gr.devices))):
        c = int(c)
        d, s, budget, _, _ = run._class(c)
        feasible_groups = set(gr.groups_of(c).tolist())
        for i in gr.class_jobs[c]:
            p = pool_index.get(previous.get(jobs[i].job_id, ""), -1)
            if p < 0 or int(gr.group_of_pool[p]) not in feasible_groups:
                continue
            if run.room[p] < d or run.quota[run._region[p]] < d:
                continue
            if -(-run._price[p] * d * s // 3600) > budget:
                continue
            run._take(c, p, 1)
    return run.placed


_Base = tuple[ClassDiagnostics, Int64s, Int64s, Aggregate]


def _base(gr: Grouped) -> _Base:
    """Diagnostics, each class's cheapest feasible pool per group (class, pool) and the
    aggregate of the bound; computed once per `Grouped`."""
    if gr.base_cache is not None:
        return gr.base_cache
    n_c, n_g = len(gr.reps), gr.n_groups
    d, s = gr.devices, gr.seconds
    pmax = np.where(gr.budget >= BIG, BIG, gr.budget * 3600 // (d * s))
    diag = ClassDiagnostics(
        n_compatible=(gr.compat * gr.group_size[None, :]).sum(axis=1).astype(np.int64),
        max_free_compatible=np.where(gr.compat, gr.group_max_free[None, :], 0).max(
            axis=1, initial=0
        ),
        n_fit=np.zeros(n_c, dtype=np.int64),
        n_budget=np.zeros(n_c, dtype=np.int64),
        n_feasible=np.zeros(n_c, dtype=np.int64),
        min_charge_fit=np.full(n_c, BIG, dtype=np.int64),
        min_finish_ms=np.full(n_c, BIG, dtype=np.int64),
    )
    cand_cls: list[Int64s] = []
    cand_pool: list[Int64s] = []
    agg_cls: list[Int64s] = []
    agg_group: list[Int64s] = []
    agg_jobs: list[Int64s] = []
    for k, dv in enumerate(gr.dvals):
        of_d = np.nonzero(gr.d_index == k)[0]
        for g in range(n_g):
            cls = of_d[gr.compat[of_d, g]]
            ln = int(gr.len[g, k])
            if len(cls) == 0 or ln == 0:
                continue
            lst = gr.flat[gr.off[g, k] : gr.off[g, k] + ln]
            diag.n_fit[cls] += ln
            first_charge = -(-(gr.price[lst[0]] * d[cls] * s[cls]) // 3600)
            diag.min_charge_fit[cls] = np.minimum(diag.min_charge_fit[cls], first_charge)
            n_budget = np.searchsorted(gr.price[lst], pmax[cls], side="right")
            diag.n_budget[cls] += n_budget
            has = n_budget > 0
            diag.min_finish_ms[cls[has]] = np.minimum(
                diag.min_finish_ms[cls[has]], gr.finish_ms[cls[has], g]
            )
            good = has & gr.ok[cls, g]
            cls, n_budget = cls[good], n_budget[good]
            diag.n_feasible[cls] += n_budget
            cand_cls.append(cls)
            cand_pool.append(np.full(len(cls), lst[0], dtype=np.int64))
            jobs_prefix = np.cumsum(gr.free[lst] // dv)
            agg_cls.append(cls)
            agg_group.append(np.full(len(cls), g, dtype=np.int64))
            agg_jobs.append(np.minimum(jobs_prefix[n_budget - 1], gr.count[cls]))
    none = np.zeros(0, dtype=np.int64)
    gr.base_cache = (
        diag,
        np.concatenate([*cand_cls, none]),
        np.concatenate([*cand_pool, none]),
        Aggregate(
            group_of_pool=gr.group_of_pool,
            cls=np.concatenate([*agg_cls, none]),
            group=np.concatenate([*agg_group, none]),
            jobs=np.concatenate([*agg_jobs, none]),
        ),
    )
    return gr.base_cache


def instance(gr: Grouped, placements: list[Placement]) -> tuple[Instance, list[Int64s]]:
    """The sparse instance (per class: the cheapest feasible pool of each group and every
    pool in `placements`) and each placement as jobs per candidate."""
    diag, first_cls, first_pool, aggregate = _base(gr)
    n_c = len(gr.reps)
    cand_cls, cand_pool = [first_cls], [first_pool]
    for placed in placements:
        if placed:
            keys = np.array(list(placed), dtype=np.int64)
            cand_cls.append(keys[:, 0])
            cand_pool.append(keys[:, 1])
    n_pools = len(gr.pools)
    none = np.zeros(0, dtype=np.int64)
    code = np.unique(
        np.concatenate([*cand_cls, none]) * n_pools + np.concatenate([*cand_pool, none])
    )
    cls_of, pool_of = code // n_pools, code % n_pools
    ptr = np.concatenate(([0], np.cumsum(np.bincount(cls_of, minlength=n_c)))).astype(np.int64)
    inst = Instance(
        problem=gr.problem,
        pools=gr.pools,
        free=gr.free,
        pool_region=gr.pool_region,
        regions=gr.regions,
        quota=gr.quota,
        classes=tuple(gr.reps),
        class_jobs=tuple(gr.class_jobs),
        devices=gr.devices,
        value=gr.value,
        count=gr.count,
        ptr=ptr,
        pool=pool_of.astype(np.int32),
        cost=gr.cost(cls_of, pool_of) if len(code) else none,
        diag=diag,
        aggregate=aggregate,
    )
    out = []
    for placed in placements:
        n = np.zeros(len(code), dtype=np.int64)
        if placed:
            keys = np.array(list(placed), dtype=np.int64)
            at = np.searchsorted(code, keys[:, 0] * n_pools + keys[:, 1])
            n[at] = np.array(list(placed.values()), dtype=np.int64)
        out.append(n)
    return inst, out
