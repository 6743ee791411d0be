"""The coordinator's national figures, assembled from what the broker holds: centers and
their offers (and peers' summaries), jobs, the record of each claim (runs), the ledger's
usage records (energy, carbon, spend), the latest rounds, and queue samples.

Runs come from `ClaimBook.records` (stored with each claim and its end, so they survive
a restart); a run is counted from the start the broker saw (its claim time if it never
saw one) to its end, or to "as of" while it goes on. Metered figures come from the
ledger's records in force (a correction replaces the record it corrects), each spread
evenly over its interval in integers whose parts add up to the record's own figure, so
a window that holds a record whole holds its figures exactly.

Cost: runs and records are indexed as they are noted (`broker.national_index`): a call
reads, with numpy, the ended runs that end in its period (kept sorted by end) and the
usage rows that meet it, walks the runs still going one by one, the queued jobs once
(grouped by what they ask for) and every center once; a time series' metered figures
per step are kept and updated as records arrive. The answers equal those of walking
every claim record and every usage record (tests/test_national.py checks a loaded index
against one grown run by run).
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt

from broker.capacity import PoolCapacity
from broker.centers import Centers
from broker.claims import ClaimBook, ClaimRecord
from broker.jobs import ACTIVE, JobBook
from broker.national_index import (
    FINISHED,
    I64,
    EndedRuns,
    RunIndex,
    UsageIndex,
    add_by,
    share,
    shares,
)
from broker.peers import Peers, Place
from broker.rounds import Round
from core.errors import NotFound
from core.national import (
    CenterDetail,
    CenterFigures,
    Figures,
    Flow,
    HubFigures,
    Overview,
    PoolFigures,
    ReasonCount,
    RoundSummary,
    RunningJob,
    TimeSeries,
    TimeStep,
    period_or_default,
    step_or_default,
)
from core.states import JobState
from core.types import Job
from ledger import UsageRecord
from matcher import ANY

# Rounds kept for ListRounds, and queue samples kept (one a second at most: a day).
ROUNDS_KEPT = 500
QUEUE_SAMPLES_KEPT = 86_400
QUEUE_SAMPLE_EVERY_MS = 1_000
# An answer is reused for this long (its "as of" says when it was computed): a dashboard
# that many people watch costs one computation a second, whatever the national scale.
REUSE_MS = 1_000
# Fewer sites than this are read from their own rows only (a center's page).
ONE_BY_ONE = 8

T = TypeVar("T")

# A number standing alone ("4", "1,234.50", the 0.30 of "-0.30"): not digits in a name like
# "cambricon-mlu370", "ascend-910b" or "p2" (a letter, digit, "." or "-" joined to it).
_NUMBER = re.compile(r"(?<![\w.])(?<!\w-)\d+(?:[.,]\d+)*(?![\w-])")


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """A center as the national view shows it: its own, or a peer's as summarised."""

    center_id: str
    name: str
    region: str
    latitude: float
    longitude: float
    broker: str
    live: bool
    pools: tuple[PoolFigures, ...]
    accelerators: frozenset[str]
    pue_milli: int
    grid_g_co2_per_kwh: int


@dataclass(slots=True)
class _Acc:
    """Figures being added up."""

    centers: int = 0
    centers_live: int = 0
    devices_total: int = 0
    devices_busy: int = 0
    queue_length: int = 0
    jobs_running: int = 0
    jobs_done: int = 0
    device_ms: int = 0
    energy_wh: int = 0
    carbon_g: int = 0
    spend_minor: int = 0

    def add(self, o: _Acc) -> None:
        self.centers += o.centers
        self.centers_live += o.centers_live
        self.devices_total += o.devices_total
        self.devices_busy += o.devices_busy
        self.queue_length += o.queue_length
        self.jobs_running += o.jobs_running
        self.jobs_done += o.jobs_done
        self.device_ms += o.device_ms
        self.energy_wh += o.energy_wh
        self.carbon_g += o.carbon_g
        self.spend_minor += o.spend_minor

    def figures(self, period_ms: int) -> Figures:
        capacity = self.devices_total * period_ms
        return Figures(
            centers=self.centers,
            centers_live=self.centers_live,
            devices_total=self.devices_total,
            devices_busy=self.devices_busy,
            queue_length=self.queue_length,
            jobs_running=self.jobs_running,
            jobs_done=self.jobs_done,
            device_seconds=self.device_ms // 1000,
            utilisation=min(1.0, self.device_ms / capacity) if capacity else 0.0,
            energy_wh=self.energy_wh,
            carbon_g=self.carbon_g,
            spend_minor=self.spend_minor,
        )


def overlap_ms(start_ms: int, end_ms: int, since_ms: int, until_ms: int) -> int:
    return max(0, min(end_ms, until_ms) - max(start_ms, since_ms))


def reason_kind(reason: str) -> str:
    """A matcher's reason with its numbers read as "N", so that like reasons group."""
    return _NUMBER.sub("N", reason)


def summarise_round(r: Round) -> RoundSummary:
    kinds: dict[str, list[str]] = {}
    for u in r.solution.unplaced:
        kinds.setdefault(reason_kind(u.reason), []).append(u.reason)
    waiting = sorted(
        (ReasonCount(reason=k, example=v[0], jobs=len(v)) for k, v in kinds.items()),
        key=lambda c: (-c.jobs, c.reason),
    )
    s = r.solution
    return RoundSummary(
        number=r.number,
        at_ms=r.at_ms,
        objective=s.objective,
        bound=s.bound,
        gap=s.gap,
        solver=s.solver,
        solve_seconds=s.seconds,
        pools=len(r.problem.pools),
        jobs_considered=len(r.problem.jobs),
        jobs_placed=len(s.assignments),
        jobs_waiting=len(s.unplaced),
        waiting=tuple(waiting),
    )


@dataclass(slots=True)
class _Queue:
    """The queued jobs grouped by what decides where they may go."""

    groups: dict[tuple[str, tuple[str, ...]], int] = field(default_factory=dict)

    def could_run(self, region: str, accelerators: frozenset[str]) -> int:
        return sum(
            n
            for (accel, regions), n in self.groups.items()
            if (accel == ANY or accel in accelerators) and (not regions or region in regions)
        )


class NationalView:
    """Figures for the coordinator. `sites` lists every center (own and peers'),
    `home_region` names the hub a job was submitted in."""

    def __init__(
        self,
        jobs: JobBook,
        claims: ClaimBook,
        sites: Callable[[int], list[Site]],
        home_region: Callable[[Job], str],
        now_ms: Callable[[], int],
    ) -> None:
        self.jobs = jobs
        self.claims = claims
        self.sites = sites
        self.home_region = home_region
        self.now_ms = now_ms
        self.runs = RunIndex(jobs.find)
        self.usage = UsageIndex(self.runs.centers)
        claims.on_note = self.runs.note
        for record in claims.records.values():
            self.runs.note(record)
        self.rounds: deque[RoundSummary] = deque(maxlen=ROUNDS_KEPT)
        self._sample_at: list[int] = []
        self._sample_queued: list[int] = []
        self._answers: dict[tuple[object, ...], tuple[int, object]] = {}

    def _reused(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """`compute()`, or its answer to the same question within the last REUSE_MS."""
        now = self.now_ms()
        held = self._answers.get(key)
        if held is not None and 0 <= now - held[0] < REUSE_MS:
            return cast(T, held[1])
        if len(self._answers) > 64:
            self._answers.clear()
        answer = compute()
        self._answers[key] = (now, answer)
        return answer

    # ----------------------------------------------------------------- feeding

    def note_round(self, r: Round) -> None:
        self.rounds.append(summarise_round(r))

    def note_usage(self, records: Iterable[UsageRecord]) -> None:
        for record in records:
            self.usage.note(record)

    def sample_queue(self) -> None:
        """Note the queue's length now (at most once a second)."""
        at = self.now_ms()
        if self._sample_at and at - self._sample_at[-1] < QUEUE_SAMPLE_EVERY_MS:
            return
        self._sample_at.append(at)
        self._sample_queued.append(self.jobs.count([JobState.QUEUED]))
        if len(self._sample_at) > 2 * QUEUE_SAMPLES_KEPT:
            del self._sample_at[:QUEUE_SAMPLES_KEPT]
            del self._sample_queued[:QUEUE_SAMPLES_KEPT]

    # ------------------------------------------------------------------- reads

    def overview(self, period_ms: int) -> Overview:
        return self._reused(("overview", period_ms), lambda: self._overview(period_ms))

    def _overview(self, period_ms: int) -> Overview:
        period_ms = period_or_default(period_ms)
        now = self.now_ms()
        sites = self.sites(now)
        queue = self._queue()
        per_center = self._per_center(sites, now - period_ms, now, queue)
        centers = tuple(_center_figures(s, per_center[s.center_id], period_ms) for s in sites)
        hubs: dict[str, _Acc] = {}
        totals = _Acc()
        hub_accels: dict[str, set[str]] = {}
        for s in sites:
            hubs.setdefault(s.region, _Acc()).add(_without_queue(per_center[s.center_id]))
            hub_accels.setdefault(s.region, set()).update(s.accelerators)
            totals.add(_without_queue(per_center[s.center_id]))
        for region, acc in hubs.items():
            acc.queue_length = queue.could_run(region, frozenset(hub_accels[region]))
        totals.queue_length = self.jobs.count([JobState.QUEUED])
        return Overview(
            as_of_ms=now,
            period_ms=period_ms,
            centers=centers,
            hubs=tuple(
                HubFigures(region=r, figures=a.figures(period_ms)) for r, a in sorted(hubs.items())
            ),
            totals=totals.figures(period_ms),
            flows=self._flows(sites, now - period_ms, now),
        )

    def center(self, center_id: str, period_ms: int) -> CenterDetail:
        return self._reused(
            ("center", center_id, period_ms), lambda: self._center(center_id, period_ms)
        )

    def _center(self, center_id: str, period_ms: int) -> CenterDetail:
        period_ms = period_or_default(period_ms)
        now = self.now_ms()
        site = next((s for s in self.sites(now) if s.center_id == center_id), None)
        if site is None:
            raise NotFound(f"no center {center_id!r}")
        acc = self._per_center([site], now - period_ms, now)[center_id]
        running = []
        for r in self._open_runs(now):
            job = self.jobs.find(r.job_id)
            if r.pool.center_id != center_id or job is None:
                continue
            if job.claim_id != r.claim_id or job.state not in ACTIVE:
                continue
            running.append(
                RunningJob(
                    job_id=job.job_id,
                    tenant=job.tenant,
                    pool_id=r.pool.pool_id,
                    accelerator=r.accelerator,
                    devices=r.devices,
                    started_at_ms=_start(r),
                    home_region=self.home_region(job),
                    name=job.spec.name,
                )
            )
        running.sort(key=lambda j: (j.started_at_ms, j.job_id))
        return CenterDetail(
            as_of_ms=now,
            period_ms=period_ms,
            center=_center_figures(site, acc, period_ms),
            running=tuple(running),
        )

    def time_series(self, window_ms: int, step_ms: int) -> TimeSeries:
        return self._reused(
            ("time_series", window_ms, step_ms), lambda: self._time_series(window_ms, step_ms)
        )

    def _time_series(self, window_ms: int, step_ms: int) -> TimeSeries:
        window_ms = period_or_default(window_ms, "window_ms")
        step_ms = step_or_default(window_ms, step_ms)
        now = self.now_ms()
        n = -(-window_ms // step_ms)
        until = -(-now // step_ms) * step_ms  # steps aligned to multiples of the step
        since = until - n * step_ms
        device_ms, started, finished = self._run_steps(since, n, step_ms, now)
        energy, carbon, spend = self._usage_steps(since, n, step_ms)
        devices = sum(p.devices_total for s in self.sites(now) for p in s.pools)
        steps = []
        for k in range(n):
            s0 = since + k * step_ms
            elapsed = max(0, min(s0 + step_ms, now) - s0)
            steps.append(
                TimeStep(
                    start_ms=s0,
                    device_seconds=device_ms[k] // 1000,
                    utilisation=min(1.0, device_ms[k] / (devices * elapsed))
                    if devices and elapsed
                    else 0.0,
                    queue_length=self._queue_at(s0, s0 + step_ms),
                    jobs_started=started[k],
                    jobs_finished=finished[k],
                    energy_wh=energy[k],
                    carbon_g=carbon[k],
                    spend_minor=spend[k],
                )
            )
        return TimeSeries(as_of_ms=now, step_ms=step_ms, devices_total=devices, steps=tuple(steps))

    def latest_rounds(self, limit: int) -> list[RoundSummary]:
        return list(self.rounds)[::-1][:limit]

    # ----------------------------------------------------------------- helpers

    def _open_runs(self, until_ms: int) -> Iterator[ClaimRecord]:
        """Claims not ended whose run began before `until` (claimed and active count
        from their claim: their start was not seen by this broker)."""
        for r in list(self.runs.open.values()):
            if r.started_at_ms is None and not self._holds(r):
                continue  # not running (claimed, or its job gone to another claim)
            if _start(r) < until_ms:
                yield r

    def _holds(self, r: ClaimRecord) -> bool:
        """The claim's job runs under it now (its start not yet seen by this broker:
        claimed, or running since before a restart)."""
        job = self.jobs.find(r.job_id)
        return (
            r.ended_at_ms is None
            and job is not None
            and job.claim_id == r.claim_id
            and job.state == JobState.RUNNING
        )

    def _ended_in(self, since_ms: int, until_ms: int) -> EndedRuns:
        """The ended runs that meet [since, until): not ended before `since`, started
        before `until`."""
        e = self.runs.ended()
        lo = int(np.searchsorted(e.end, since_ms, side="left"))
        tail = EndedRuns(
            start=e.start[lo:],
            end=e.end[lo:],
            devices=e.devices[lo:],
            center=e.center[lo:],
            home=e.home[lo:],
            finished=e.finished[lo:],
        )
        return _select(tail, tail.start < until_ms)

    def _queue(self) -> _Queue:
        q = _Queue()
        for job in self.jobs.page([JobState.QUEUED]):
            key = (job.spec.accelerator, tuple(job.spec.allowed_regions))
            q.groups[key] = q.groups.get(key, 0) + 1
        return q

    def _queue_at(self, since_ms: int, until_ms: int) -> int | None:
        i = bisect.bisect_left(self._sample_at, until_ms) - 1
        if i < 0 or self._sample_at[i] < since_ms:
            return None
        return self._sample_queued[i]

    def _per_center(
        self, sites: list[Site], since_ms: int, now: int, queue: _Queue | None = None
    ) -> dict[str, _Acc]:
        queue = self._queue() if queue is None else queue
        out: dict[str, _Acc] = {}
        for s in sites:
            acc = out[s.center_id] = _Acc(centers=1, centers_live=int(s.live))
            acc.devices_total = sum(p.devices_total for p in s.pools)
            acc.devices_busy = sum(p.devices_busy for p in s.pools)
            acc.queue_length = queue.could_run(s.region, s.accelerators)
        codes = self.runs.centers.of
        e = self._ended_in(since_ms, now)
        n = len(self.runs.centers.names)
        only = None
        if len(sites) < ONE_BY_ONE:  # a center's page: its own rows only
            only = np.array([codes[c] for c in out if c in codes], dtype=np.int64)
            e = _select(e, np.isin(e.center, only))
        busy = _overlap(e, since_ms, now) * e.devices
        device_ms = add_by(e.center, busy, n).tolist()
        done = np.bincount(e.center[e.finished == FINISHED], minlength=n).tolist()
        for center_id, acc in out.items():
            code = codes.get(center_id)
            if code is not None:
                acc.device_ms += device_ms[code]
                acc.jobs_done += done[code]
        for r in self._open_runs(now):
            acc_or_none = out.get(r.pool.center_id)
            if acc_or_none is not None:
                acc_or_none.device_ms += r.devices * overlap_ms(_start(r), now, since_ms, now)
                acc_or_none.jobs_running += 1
        energy, carbon, spend = self._usage_by_producer(since_ms, now + 1, only)
        for center_id, acc in out.items():
            code = codes.get(center_id)
            if code is not None and code < len(energy):
                acc.energy_wh += energy[code]
                acc.carbon_g += carbon[code]
                acc.spend_minor += spend[code]
        return out

    def _flows(self, sites: list[Site], since_ms: int, now: int) -> tuple[Flow, ...]:
        region_of = {s.center_id: s.region for s in sites}
        flows: dict[tuple[str, str], list[int]] = {}
        # Ended runs, per (home, center), then named by regions.
        e = self._ended_in(since_ms, now)
        regions = sorted(set(region_of.values()))
        region_code = {r: i for i, r in enumerate(regions)}
        to_of = np.array(
            [region_code.get(region_of.get(str(c), ""), -1) for c in self.runs.centers.names],
            dtype=np.int64,
        )
        to = to_of[e.center] if len(to_of) else e.center
        known = (e.home >= 0) & (to >= 0)
        pair = e.home[known] * len(regions) + to[known]
        size = len(self.runs.homes.names) * len(regions)
        jobs = np.bincount(pair, minlength=size).tolist()
        busy = add_by(pair, (_overlap(e, since_ms, now) * e.devices)[known], size).tolist()
        for p, n in enumerate(jobs):
            if n:
                home, region = divmod(p, len(regions))
                key = (self.home_region(self.runs.home_jobs[home]), regions[region])
                flow = flows.setdefault(key, [0, 0])
                flow[0] += n
                flow[1] += busy[p]
        for r in self._open_runs(now):
            job = self.jobs.find(r.job_id)
            ran_in = region_of.get(r.pool.center_id)
            if job is None or ran_in is None:
                continue
            flow = flows.setdefault((self.home_region(job), ran_in), [0, 0])
            flow[0] += 1
            flow[1] += r.devices * overlap_ms(_start(r), now, since_ms, now)
        return tuple(
            Flow(from_region=a, to_region=b, jobs=n, device_seconds=ms // 1000)
            for (a, b), (n, ms) in sorted(flows.items())
        )

    def _run_steps(
        self, since: int, n: int, step_ms: int, now: int
    ) -> tuple[list[int], list[int], list[int]]:
        """Busy device-ms, runs started and runs finished in each of `n` steps from
        `since`: runs that meet [since, now)."""
        until = since + n * step_ms
        e = self._ended_in(since, now)
        s_in = (since <= e.start) & (e.start < until)
        started = np.bincount((e.start[s_in] - since) // step_ms, minlength=n)
        f_in = (e.finished == FINISHED) & (since <= e.end) & (e.end < until)
        finished = np.bincount((e.end[f_in] - since) // step_ms, minlength=n)
        a, b = np.maximum(e.start, since), np.minimum(e.end, until)
        meet = a < b
        a, b, d = a[meet], b[meet], e.devices[meet]
        first, last = (a - since) // step_ms, (b - 1 - since) // step_ms
        one = first == last
        # Within one step; else the partial first and last steps, and the whole ones
        # between as differences.
        many = ~one
        parts = np.concatenate(
            [
                d[one] * (b - a)[one],
                d[many] * (since + (first + 1) * step_ms - a)[many],
                d[many] * (b - (since + last * step_ms))[many],
            ]
        )
        steps = np.concatenate([first[one], first[many], last[many]])
        device_ms = add_by(steps, parts, n).tolist()
        whole = add_by(
            np.concatenate([first[many] + 1, last[many]]),
            np.concatenate([d[many], -d[many]]),
            n + 1,
        ).tolist()
        started_l, finished_l = started.tolist(), finished.tolist()
        for r in self._open_runs(now):
            start, end = _start(r), now
            if since <= start < until:
                started_l[(start - since) // step_ms] += 1
            a0, b0 = max(start, since), min(end, until)
            if a0 >= b0:
                continue
            f0, l0 = (a0 - since) // step_ms, (b0 - 1 - since) // step_ms
            if f0 == l0:
                device_ms[f0] += r.devices * (b0 - a0)
                continue
            device_ms[f0] += r.devices * (since + (f0 + 1) * step_ms - a0)
            device_ms[l0] += r.devices * (b0 - (since + l0 * step_ms))
            whole[f0 + 1] += r.devices
            whole[l0] -= r.devices
        busy = 0
        for k in range(n):
            busy += whole[k]
            device_ms[k] += busy * step_ms
        return device_ms, started_l, finished_l

    def _usage_steps(self, since: int, n: int, step_ms: int) -> tuple[list[int], ...]:
        """Metered energy, carbon and spend in each of `n` steps from `since`."""
        if self.usage.exact_in_int64():
            return tuple(col.tolist() for col in self.usage.per_step(since, n, step_ms))
        until = since + n * step_ms
        out = [[0] * n for _ in range(3)]
        for m in self._records_touching(since, until):
            first = max(0, (max(m[0], since) - since) // step_ms)
            last = min(n - 1, (max(min(m[1], until) - 1, m[0]) - since) // step_ms)
            for k in range(first, last + 1):
                s0 = since + k * step_ms
                for j in range(3):
                    out[j][k] += share(m[3 + j], m[0], m[1], s0, s0 + step_ms)
        return out[0], out[1], out[2]

    def _usage_by_producer(
        self, since: int, until: int, only: I64 | None = None
    ) -> tuple[list[int], ...]:
        """Metered energy, carbon and spend in [since, until) per producer code (of the
        producers `only` names, if given; the others' are 0)."""
        n = len(self.runs.centers.names)
        if self.usage.exact_in_int64():
            c = self.usage.cols()
            touching = self.usage.touching(since, until)
            if only is not None:
                touching &= np.isin(c.producer, only)
            # A record wholly inside counts whole; only those across an edge are shared.
            inside = touching & (c.start >= since) & (c.end <= until)
            whole = np.flatnonzero(inside)
            part = np.flatnonzero(touching & ~inside)
            start, end = c.start[part], c.end[part]
            return tuple(
                (
                    add_by(c.producer[whole], col[whole], n)
                    + add_by(c.producer[part], shares(col[part], start, end, since, until), n)
                ).tolist()
                for col in (c.energy, c.carbon, c.charge)
            )
        out = [[0] * n for _ in range(3)]
        for m in self._records_touching(since, until):
            for j in range(3):
                out[j][m[2]] += share(m[3 + j], m[0], m[1], since, until)
        return out[0], out[1], out[2]

    def _records_touching(self, since: int, until: int) -> Iterator[tuple[int, ...]]:
        """The usage rows meeting [since, until), as Python integers (the path for
        figures too large for int64)."""
        c = self.usage.cols()
        for i in np.flatnonzero(self.usage.touching(since, until)).tolist():
            yield tuple(
                int(col[i]) for col in (c.start, c.end, c.producer, c.energy, c.carbon, c.charge)
            )


def _start(r: ClaimRecord) -> int:
    return r.started_at_ms if r.started_at_ms is not None else r.claimed_at_ms


def _end(r: ClaimRecord, now: int) -> int:
    return r.ended_at_ms if r.ended_at_ms is not None else now


def _without_queue(acc: _Acc) -> _Acc:
    """A center's figures to add to its hub's: a queued job may count at several
    centers, so a hub's queue is counted afresh."""
    out = _Acc()
    out.add(acc)
    out.queue_length = 0
    return out


def _center_figures(s: Site, acc: _Acc, period_ms: int) -> CenterFigures:
    return CenterFigures(
        center_id=s.center_id,
        name=s.name,
        region=s.region,
        latitude=s.latitude,
        longitude=s.longitude,
        broker=s.broker,
        live=s.live,
        pools=s.pools,
        price_minor_per_device_hour=min(
            (p.price_minor_per_device_hour for p in s.pools), default=0
        ),
        pue_milli=s.pue_milli,
        grid_g_co2_per_kwh=s.grid_g_co2_per_kwh,
        figures=acc.figures(period_ms),
    )


def local_sites(centers: Centers, at_ms: int) -> list[Site]:
    """This broker's centers: descriptors, with busy devices from each live offer."""
    out = []
    for center_id, center in sorted(centers.descriptors.items()):
        session = centers.live(center_id)
        offer = session.offer if session is not None else None
        live = offer is not None and offer.expires_at_ms > at_ms
        free = {p.pool_id: p.devices_free for p in offer.pools} if offer and live else {}
        out.append(
            Site(
                center_id=center_id,
                name=center.name,
                region=center.region,
                latitude=center.latitude,
                longitude=center.longitude,
                broker="",
                live=live,
                pools=tuple(
                    PoolFigures(
                        pool_id=p.pool_id,
                        accelerator=p.accelerator,
                        devices_total=p.devices_total,
                        devices_busy=p.devices_total - free[p.pool_id] if p.pool_id in free else 0,
                        price_minor_per_device_hour=p.price_minor_per_device_hour,
                        power_w=p.power_w,
                    )
                    for p in center.pools
                ),
                accelerators=frozenset(p.accelerator for p in center.pools),
                pue_milli=offer.pue_milli if offer and live else center.pue_milli,
                grid_g_co2_per_kwh=(
                    offer.grid_g_co2_per_kwh if offer and live else center.grid_g_co2_per_kwh
                ),
            )
        )
    return out


def peer_sites(peers: Peers, at_ms: int) -> list[Site]:
    """The peers' centers, as their summaries state them (a summary from a broker that
    sends no places names a center by its id, at 0, 0)."""
    pools: dict[tuple[str, str], list[PoolCapacity]] = {}
    live: dict[str, bool] = {}
    for summary in list(peers.views.values()):
        live[summary.broker] = peers.live(summary, at_ms)
        for p in summary.pools:
            pools.setdefault((summary.broker, p.ref.center_id), []).append(p)
    out = []
    places: dict[tuple[str, str], Place] = {}
    for summary in list(peers.views.values()):
        for center_id, named in summary.places.items():
            places[(summary.broker, center_id)] = named
    for (broker, center_id), held in sorted(pools.items()):
        first = held[0]
        place = places.get((broker, center_id))
        out.append(
            Site(
                center_id=center_id,
                name=place.name if place is not None else center_id,
                region=first.region,
                latitude=place.latitude if place is not None else 0.0,
                longitude=place.longitude if place is not None else 0.0,
                broker=broker,
                live=live[broker],
                pools=tuple(
                    PoolFigures(
                        pool_id=p.pool.pool_id,
                        accelerator=p.pool.accelerator,
                        devices_total=p.pool.devices_total,
                        devices_busy=p.pool.devices_total - p.free if live[broker] else 0,
                        price_minor_per_device_hour=p.pool.price_minor_per_device_hour,
                        power_w=p.pool.power_w,
                    )
                    for p in held
                ),
                accelerators=frozenset(p.pool.accelerator for p in held),
                pue_milli=first.pue_milli,
                grid_g_co2_per_kwh=first.grid_g_co2_per_kwh,
            )
        )
    return out


def _select(e: EndedRuns, rows: npt.NDArray[np.bool_]) -> EndedRuns:
    return EndedRuns(
        start=e.start[rows],
        end=e.end[rows],
        devices=e.devices[rows],
        center=e.center[rows],
        home=e.home[rows],
        finished=e.finished[rows],
    )


def _overlap(e: EndedRuns, since_ms: int, until_ms: int) -> I64:
    """Each run's time in [since, until)."""
    out: I64 = np.maximum(0, np.minimum(e.end, until_ms) - np.maximum(e.start, since_ms))
    return out
