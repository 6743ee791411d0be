"""Matching rounds: the pools every capacity source offers, the head of the queue, the
matcher's answer, and the claims it becomes; quotes and the problem a round would solve.

A round is logged when its outcome changes (a job placed, or a different set waiting), not
every time it runs; its figures are always in the metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matcher
from broker.capacity import PEER_BROKERS, CapacitySource, ClaimRoute, PoolCapacity
from broker.jobs import JobBook
from broker.metrics import Metrics
from core.clock import Clock
from core.states import JobState
from core.types import Job, JobId, JobSpec, PoolRef, accepts_image
from core.views import QuoteLine
from matcher import ANY, JobRequest, Matcher, PoolSlot, Problem, Solution, quote

log = logging.getLogger("icx.broker")

# A round considers jobs asking for up to this many times the free devices ...
ROUND_OVERSUBSCRIPTION = 4
# ... and at least this many jobs.
ROUND_MIN_JOBS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Round:
    """A solved matching round, kept so that it can be dumped and replayed."""

    number: int
    at_ms: int
    problem: Problem
    solution: Solution


class Rounds:
    def __init__(
        self,
        jobs: JobBook,
        sources: Sequence[CapacitySource],
        routes: dict[str, ClaimRoute],
        matcher: Matcher,
        metrics: Metrics,
        clock: Clock,
        *,
        template: Problem,
        max_jobs_per_round: int,
    ) -> None:
        self.jobs = jobs
        self.sources = sources
        self.routes = routes
        self.matcher = matcher
        self.metrics = metrics
        self.clock = clock
        self.template = template
        self.max_jobs_per_round = max_jobs_per_round
        self.count = 0
        self.last: Round | None = None
        self._last_outcome: tuple[object, ...] = ()
        # Told of each solved round (the national view keeps the latest).
        self.on_round: Callable[[Round], None] | None = None

    def pools(self, at_ms: int, *, include_full: bool = False) -> dict[str, PoolCapacity]:
        """Every source's pools, by the name the matcher uses."""
        return {
            p.ref.key: p
            for source in self.sources
            for p in source.capacity(at_ms, include_full=include_full)
        }

    async def run(self) -> int:
        """One round: the matcher's assignments become claims. Returns claims sent."""
        started = time.perf_counter()
        at = self.clock.now_ms()
        pools = self.pools(at)
        if not pools:  # nothing free anywhere: no need to look at the queue
            return 0
        queued = _matchable(self.jobs.in_state(JobState.QUEUED))
        if not queued:
            return 0
        queued.sort(key=lambda j: (-j.spec.priority, j.submitted_at_ms))
        slots = [_slot(p) for p in pools.values()]
        queued = _round_jobs(queued, slots, self.max_jobs_per_round)
        problem = dataclasses.replace(
            self.template,
            pools=tuple(slots),
            jobs=tuple(_job_request(j, at) for j in queued),
        )
        solution = await asyncio.to_thread(self.matcher.solve, problem)
        self.count += 1
        self.last = Round(number=self.count, at_ms=at, problem=problem, solution=solution)
        self._record(problem, solution)
        if self.on_round is not None:
            self.on_round(self.last)
        claims = []
        for a in solution.assignments:
            ref = pools[a.pool_id].ref
            route = self.routes.get(ref.broker) or self.routes[PEER_BROKERS]
            claims.append(route.claim(JobId(a.job_id), ref, a.explanation))
        # Together, so that the round's transitions share one commit.
        sent = sum(await asyncio.gather(*claims))
        for u in solution.unplaced:
            job = self.jobs.find(u.job_id)
            if job is not None and job.state == JobState.QUEUED:
                self.jobs.explain(job, u.reason)
        self.metrics.round_seconds.observe(time.perf_counter() - started)
        return sent

    def _record(self, problem: Problem, solution: Solution) -> None:
        m = self.metrics
        m.rounds.inc()
        m.round_objective.set(solution.objective)
        m.round_bound.set(solution.objective if solution.bound is None else solution.bound)
        m.round_gap.set(solution.gap or 0.0)
        m.round_solve_seconds.set(solution.seconds)
        m.round_jobs.set(len(problem.jobs))
        m.round_unplaced.set(len(solution.unplaced))
        m.placed.inc(len(solution.assignments))
        outcome = (
            len(problem.pools),
            frozenset(u.job_id for u in solution.unplaced),
        )
        if not solution.assignments and outcome == self._last_outcome:
            return  # the same jobs wait for the same pools: said already
        self._last_outcome = outcome
        gap = solution.gap
        log.info(
            "round %d: %d jobs on %d pools -> %d placed, %d unplaced; objective %.2f bound %s"
            " gap %s (%s, %.3f s)",
            self.count,
            len(problem.jobs),
            len(problem.pools),
            len(solution.assignments),
            len(solution.unplaced),
            solution.objective,
            "-" if solution.bound is None else f"{solution.bound:.2f}",
            "-" if gap is None else f"{gap:.2%}",
            solution.solver,
            solution.seconds,
        )

    def quote(self, spec: JobSpec) -> list[QuoteLine]:
        """The pools that could run `spec` now, ranked by the round's policy."""
        at = self.clock.now_ms()
        request = _job_request_from_spec("quote", spec, at, submitted_at_ms=at)
        pools = self.pools(at, include_full=True)
        problem = dataclasses.replace(
            self.template, pools=tuple(_slot(p) for p in pools.values()), jobs=()
        )
        return [_quote_line(q, pools[q.pool_id].ref) for q in quote(request, problem)]

    def current_problem(self) -> Problem:
        """The problem a round would solve now."""
        at = self.clock.now_ms()
        queued = _matchable(self.jobs.in_state(JobState.QUEUED))
        queued.sort(key=lambda j: (-j.spec.priority, j.submitted_at_ms))
        return dataclasses.replace(
            self.template,
            pools=tuple(_slot(p) for p in self.pools(at).values()),
            jobs=tuple(_job_request(j, at) for j in queued[: self.max_jobs_per_round]),
        )


def _matchable(queued: list[Job]) -> list[Job]:
    """The queued jobs this broker matches: not those a peer forwarded here and that went
    back to the queue (handed back: their home broker matches them again)."""
    return [j for j in queued if not j.home]


def _slot(p: PoolCapacity) -> PoolSlot:
    return PoolSlot(
        pool_id=p.ref.key,
        center_id=p.ref.center_id,
        region=p.region,
        accelerator=p.pool.accelerator,
        free=p.free,
        memory_gb=p.pool.memory_gb,
        tflops=p.pool.fp16_tflops,
        power_w=p.pool.power_w,
        pue_milli=p.pue_milli,
        grid_g_per_kwh=p.grid_g_co2_per_kwh,
        price_minor_per_device_hour=p.pool.price_minor_per_device_hour,
        images=p.images,
    )


def _round_jobs(queued: list[Job], pools: list[PoolSlot], max_jobs: int) -> list[Job]:
    """The head of the queue that a round considers: jobs that could use the free
    devices, asking for several times as many as there are (so that the matcher can
    choose), at least a floor of jobs, never more than the cap. A backed-up queue is not
    re-solved whole for a few free devices. Only jobs that some free pool of their
    accelerator and image could hold count toward the budget, so jobs that cannot run now
    (a gang too big, a model with nothing free, an image no center takes) never crowd out
    those behind them."""
    # Most free devices per accepted images (few distinct lists), then per accelerator.
    largest: dict[tuple[str, ...], dict[str, int]] = {}
    for pool in pools:
        by_model = largest.setdefault(pool.images, {})
        by_model[pool.accelerator] = max(by_model.get(pool.accelerator, 0), pool.free)
        by_model[ANY] = max(by_model.get(ANY, 0), pool.free)
    budget = ROUND_OVERSUBSCRIPTION * sum(p.free for p in pools)
    chosen: list[Job] = []
    asked = placeable = explained = 0
    for job in queued:
        if len(chosen) >= max_jobs:
            break
        fits = max(
            (
                by_model.get(job.spec.accelerator, 0)
                for images, by_model in largest.items()
                if accepts_image(images, job.spec.image)
            ),
            default=0,
        )
        if job.spec.devices <= fits:
            if asked >= budget and placeable >= ROUND_MIN_JOBS:
                break
            asked += job.spec.devices
            placeable += 1
            chosen.append(job)
        elif explained < ROUND_MIN_JOBS:  # a few, so that the matcher says why they wait
            explained += 1
            chosen.append(job)
    return chosen


def _job_request(job: Job, at_ms: int) -> JobRequest:
    return _job_request_from_spec(
        job.job_id, job.spec, at_ms, submitted_at_ms=job.submitted_at_ms, tenant=job.tenant
    )


def _job_request_from_spec(
    job_id: str, spec: JobSpec, at_ms: int, *, submitted_at_ms: int, tenant: str = ""
) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        tenant=tenant,
        accelerator=spec.accelerator,
        devices=spec.devices,
        seconds=spec.estimated_s,
        regions=spec.allowed_regions or None,
        max_price_minor=spec.max_price_minor,
        priority=spec.priority,
        data_region=spec.data_region,
        data_mb=spec.data_mb,
        deadline_s=None if spec.deadline_ms is None else max(0, (spec.deadline_ms - at_ms) // 1000),
        waited_s=max(0, (at_ms - submitted_at_ms) // 1000),
        image=spec.image,
    )


def _quote_line(line: matcher.QuoteLine, ref: PoolRef) -> QuoteLine:
    """The matcher's line for a pool, named by the pool's own reference."""
    return QuoteLine(
        rank=line.rank,
        center_id=ref.center_id,
        pool_id=ref.pool_id,
        region=line.region,
        accelerator=line.accelerator,
        price_minor_per_device_hour=line.price_minor_per_device_hour,
        charge_minor=line.charge_minor,
        rtt_ms=line.rtt_ms,
        transfer_ms=line.transfer_ms,
        energy_wh=line.energy_wh,
        carbon_g=line.carbon_g,
        has_capacity=line.has_capacity,
        feasible=line.feasible,
        reason=line.reason,
    )
