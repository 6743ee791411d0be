"""Job classes and their feasible (class, pool) candidates, built with numpy.

Jobs that agree on every field the model reads (accelerator, devices, seconds, regions,
budget, effective priority, data, deadline, minimum memory and TFLOPS, image) form one
*class*;
the model decides how many jobs of a class go to each pool, which is exact because such
jobs are interchangeable. Each class keeps its feasible pools, in pool-id order, in one
CSR array (`ptr`, `pool`, `cost`); pools are indexed in pool-id order, so the first of
equally cheap candidates is the one with the least pool id. The figures are those of the
scalar helpers in `matcher.model`, vectorised: the tests check that they agree.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matcher.model import (
    JobRequest,
    PoolSlot,
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

Int64s = npt.NDArray[np.int64]
Int32s = npt.NDArray[np.int32]

BIG = np.int64(2**62)


def exact_dot(n: Int64s, weights: Int64s) -> int:
    """sum(n[i] x weights[i]) in Python integers, over the nonzero n[i]: a round's totals
    (placed value, cost) sum many jobs, and int64 would wrap where Python is exact."""
    nz = np.flatnonzero(n)
    return sum(map(operator.mul, n[nz].tolist(), weights[nz].tolist()))


_CHUNK_CELLS = 2_000_000  # (class x pool) cells per vectorised block: bounds memory


@dataclass(slots=True)
class ClassDiagnostics:
    """Per class, how many pools survive each hard constraint in turn (for reasons)."""

    n_compatible: Int64s
    max_free_compatible: Int64s  # most free devices on any compatible pool
    n_fit: Int64s  # ... and have enough free devices
    n_budget: Int64s  # ... and whose charge is within budget
    n_feasible: Int64s  # ... and meet the deadline
    min_charge_fit: Int64s  # cheapest charge among the pools that fit (BIG if none)
    min_finish_ms: Int64s  # fastest transfer + run among those within budget (BIG if none)


@dataclass(slots=True)
class Aggregate:
    """Candidates summed per pool group (same accelerator and region), for a cheap
    bound: `jobs[i]` jobs of class `cls[i]` fit, one pool at a time, in group `group[i]`
    (sum over its feasible pools of free // devices, capped at the class's count)."""

    group_of_pool: Int64s
    cls: Int64s
    group: Int64s
    jobs: Int64s


@dataclass(slots=True)
class Instance:
    problem: Problem
    pools: tuple[PoolSlot, ...]  # sorted by pool id
    free: Int64s
    pool_region: Int32s  # index into `regions`
    regions: tuple[str, ...]
    quota: Int64s  # per region; BIG where none
    classes: tuple[JobRequest, ...]  # one representative job per class
    class_jobs: tuple[tuple[int, ...], ...]  # indices into problem.jobs, best first
    devices: Int64s  # per class
    value: Int64s  # per job of the class
    count: Int64s
    ptr: Int64s  # CSR over classes
    pool: Int32s
    cost: Int64s  # objective cost (milli-minor units) of one job of the class on the pool
    diag: ClassDiagnostics
    aggregate: Aggregate

    @property
    def density(self) -> Int64s:
        """Value per device: effective priority x seconds."""
        return self.value // self.devices

    def class_of_candidate(self) -> Int64s:
        return np.repeat(np.arange(len(self.classes), dtype=np.int64), np.diff(self.ptr))

    def pruned(
        self, top_k: int, keep: npt.NDArray[np.bool_] | None = None
    ) -> tuple[Instance, Int64s]:
        """The same instance with each class's candidates cut to its `top_k` cheapest,
        plus those marked in `keep` (an incumbent's arcs, so its hint stays valid); and
        the index of each kept candidate in this instance."""
        cls = self.class_of_candidate()
        by_cost = np.lexsort((self.pool, self.cost, cls))
        rank = np.empty(len(self.pool), dtype=np.int64)
        rank[by_cost] = np.arange(len(self.pool), dtype=np.int64) - self.ptr[cls[by_cost]]
        mask = rank < top_k
        if keep is not None:
            mask |= keep
        counts = np.bincount(cls[mask], minlength=len(self.classes))
        ptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        pruned = Instance(
            problem=self.problem,
            pools=self.pools,
            free=self.free,
            pool_region=self.pool_region,
            regions=self.regions,
            quota=self.quota,
            classes=self.classes,
            class_jobs=self.class_jobs,
            devices=self.devices,
            value=self.value,
            count=self.count,
            ptr=ptr,
            pool=self.pool[mask],
            cost=self.cost[mask],
            diag=self.diag,
            aggregate=self.aggregate,
        )
        return pruned, np.nonzero(mask)[0].astype(np.int64)


def _signature(job: JobRequest, eff: int) -> tuple[object, ...]:
    regions = None if job.regions is None else tuple(sorted(set(job.regions)))
    return (
        job.accelerator,
        job.devices,
        job.seconds,
        regions,
        job.max_price_minor,
        eff,
        job.data_region,
        job.data_mb,
        job.deadline_s,
        job.min_memory_gb,
        job.min_tflops,
        job.image,
    )


def classes_of(
    problem: Problem,
) -> tuple[list[JobRequest], list[tuple[int, ...]], list[list[int]]]:
    """(one representative per class, each class's job indices best first, the class
    groups). Classes are numbered group by group (groups: same compatible pools and
    network), so that candidates built group by group come out in class order."""
    policy = problem.policy
    # Each class's jobs best first: longest waiting, then id.
    by_sig: dict[tuple[object, ...], list[int]] = {}
    for i, job in enumerate(problem.jobs):
        by_sig.setdefault(_signature(job, effective_priority(job, policy)), []).append(i)
    grouped: dict[tuple[object, ...], list[list[int]]] = {}
    for sig_members in by_sig.values():
        j = problem.jobs[sig_members[0]]
        regions_key = None if j.regions is None else tuple(sorted(set(j.regions)))
        key = (j.accelerator, regions_key, j.min_memory_gb, j.min_tflops, j.data_region, j.image)
        grouped.setdefault(key, []).append(sig_members)
    class_jobs: list[tuple[int, ...]] = []
    reps: list[JobRequest] = []
    groups: list[list[int]] = []
    for group_members in grouped.values():
        groups.append([])
        for sig_members in group_members:
            sig_members.sort(key=lambda i: (-problem.jobs[i].waited_s, problem.jobs[i].job_id))
            groups[-1].append(len(reps))
            class_jobs.append(tuple(sig_members))
            reps.append(problem.jobs[sig_members[0]])
    return reps, class_jobs, groups


def build(problem: Problem) -> Instance:
    """Classes, candidates and diagnostics for `problem`."""
    policy = problem.policy
    pools = tuple(sorted(problem.pools, key=lambda p: p.pool_id))
    regions = tuple(sorted({p.region for p in pools} | set(policy.quota_devices)))
    region_index = {r: i for i, r in enumerate(regions)}
    free = np.array([p.free for p in pools], dtype=np.int64)
    pool_region = np.array([region_index[p.region] for p in pools], dtype=np.int32)
    quota = np.full(len(regions), BIG, dtype=np.int64)
    for r, q in policy.quota_devices.items():
        quota[region_index[r]] = q
    price = np.array([p.price_minor_per_device_hour for p in pools], dtype=np.int64)
    power = np.array([p.power_w for p in pools], dtype=np.int64)
    pue = np.array([p.pue_milli for p in pools], dtype=np.int64)
    grid = np.array([p.grid_g_per_kwh for p in pools], dtype=np.int64)
    incentive = np.array(
        [p.region in policy.incentive_regions for p in pools], dtype=np.bool_
    ) * np.int64(policy.incentive_minor_per_device_hour)

    reps, class_jobs, groups = classes_of(problem)
    n_classes = len(reps)
    count = np.array([len(m) for m in class_jobs], dtype=np.int64)
    devices = np.array([j.devices for j in reps], dtype=np.int64)
    seconds = np.array([j.seconds for j in reps], dtype=np.int64)
    eff = np.array([effective_priority(j, policy) for j in reps], dtype=np.int64)
    budget = np.array([budget_of(j) for j in reps], dtype=np.int64)
    deadline = np.array([deadline_of(j) for j in reps], dtype=np.int64)
    data_mb = np.array([j.data_mb for j in reps], dtype=np.int64)

    diag = ClassDiagnostics(
        n_compatible=np.zeros(n_classes, dtype=np.int64),
        max_free_compatible=np.zeros(n_classes, dtype=np.int64),
        n_fit=np.zeros(n_classes, dtype=np.int64),
        n_budget=np.zeros(n_classes, dtype=np.int64),
        n_feasible=np.zeros(n_classes, dtype=np.int64),
        min_charge_fit=np.full(n_classes, BIG, dtype=np.int64),
        min_finish_ms=np.full(n_classes, BIG, dtype=np.int64),
    )
    # Pool groups (same accelerator and region) for the aggregated bound.
    group_key = sorted({(p.accelerator, p.region) for p in pools})
    group_of_pool = np.array(
        [group_key.index((p.accelerator, p.region)) for p in pools], dtype=np.int64
    )

    out_cls: list[Int64s] = []
    out_pool: list[Int32s] = []
    out_cost: list[Int64s] = []
    agg_cls: list[Int64s] = []
    agg_group: list[Int64s] = []
    agg_jobs: list[Int64s] = []
    for group in groups:
        rep = reps[group[0]]
        pool_ix = np.array([k for k, p in enumerate(pools) if compatible(rep, p)], dtype=np.int64)
        members = np.array(group, dtype=np.int64)
        diag.n_compatible[members] = len(pool_ix)
        if len(pool_ix) == 0:
            continue
        diag.max_free_compatible[members] = free[pool_ix].max()
        rtt = np.array(
            [rtt_ms(problem, rep.data_region, pools[k].region) for k in pool_ix], dtype=np.int64
        )
        mbps = np.array(
            [bandwidth_mbps(problem, rep.data_region, pools[k].region) for k in pool_ix],
            dtype=np.int64,
        )
        moves = np.array(
            [bool(rep.data_region) and rep.data_region != pools[k].region for k in pool_ix],
            dtype=np.bool_,
        )
        # Columns regrouped by pool group, for the per-group sums of the bound.
        by_group = np.argsort(group_of_pool[pool_ix], kind="stable")
        col_groups, first = np.unique(group_of_pool[pool_ix][by_group], return_index=True)
        starts: Int64s = first.astype(np.int64)
        step = max(1, _CHUNK_CELLS // len(pool_ix))
        for start in range(0, len(members), step):
            cls = members[start : start + step]
            d = devices[cls][:, None]
            s = seconds[cls][:, None]
            fits = d <= free[pool_ix][None, :]
            charge = -(-(price[pool_ix][None, :] * d * s) // 3600)
            in_budget = fits & (charge <= budget[cls][:, None])
            transfer = np.where(
                moves[None, :], moving_ms(data_mb[cls][:, None], mbps[None, :], rtt[None, :]), 0
            )
            finish = s * 1000 + transfer
            ok = in_budget & on_time(s, transfer, deadline[cls][:, None])
            milli_wh = d * power[pool_ix][None, :] * s * pue[pool_ix][None, :] // 3600
            wh = (milli_wh + 500) // 1000
            carbon = (wh * grid[pool_ix][None, :] + 500) // 1000
            cost = (
                policy.w_cost * charge * 1000
                + (policy.w_carbon * carbon * policy.carbon_price_minor_per_tonne + 500) // 1000
                + policy.w_latency * d * transfer
                - incentive[pool_ix][None, :] * d * s * 10 // 36
            )
            diag.n_fit[cls] = fits.sum(axis=1)
            diag.n_budget[cls] = in_budget.sum(axis=1)
            n_ok = ok.sum(axis=1)
            diag.n_feasible[cls] = n_ok
            diag.min_charge_fit[cls] = np.where(fits, charge, BIG).min(axis=1)
            diag.min_finish_ms[cls] = np.where(in_budget, finish, BIG).min(axis=1)
            rows, cols = np.nonzero(ok)
            out_cls.append(cls[rows])
            out_pool.append(pool_ix[cols].astype(np.int32))
            out_cost.append(cost[rows, cols])
            jobs_fit = np.where(ok, free[pool_ix][None, :] // d, 0)[:, by_group]
            per_group = np.minimum(np.add.reduceat(jobs_fit, starts, axis=1), count[cls][:, None])
            class_row, group_col = np.nonzero(per_group)
            agg_cls.append(cls[class_row])
            agg_group.append(col_groups[group_col])
            agg_jobs.append(per_group[class_row, group_col])

    if out_cls:
        cand_pool = np.concatenate(out_pool)
        cand_cost = np.concatenate(out_cost).astype(np.int64)
        aggregate = Aggregate(
            group_of_pool=group_of_pool,
            cls=np.concatenate(agg_cls),
            group=np.concatenate(agg_group),
            jobs=np.concatenate(agg_jobs),
        )
    else:
        cand_pool = np.zeros(0, dtype=np.int32)
        cand_cost = np.zeros(0, dtype=np.int64)
        none = np.zeros(0, dtype=np.int64)
        aggregate = Aggregate(group_of_pool=group_of_pool, cls=none, group=none, jobs=none)
    ptr = np.concatenate(([0], np.cumsum(diag.n_feasible))).astype(np.int64)
    return Instance(
        problem=problem,
        pools=pools,
        free=free,
        pool_region=pool_region,
        regions=regions,
        quota=quota,
        classes=tuple(reps),
        class_jobs=tuple(class_jobs),
        devices=devices,
        value=eff * devices * seconds,
        count=count,
        ptr=ptr,
        pool=cand_pool,
        cost=cand_cost,
        diag=diag,
        aggregate=aggregate,
    )
