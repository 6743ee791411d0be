"""Indexes behind the national figures, kept up to date as claims are noted and usage
records arrive, so that a call reads columns instead of walking every run in Python.

- `RunIndex`: every claim record. Open ones (no end yet: claimed or running) stay
  records, read one by one (there are as many as runs going on); ended runs that
  started are rows of integer columns (start, end, devices, center, home), sorted by
  end, read with numpy over the rows that end inside the window asked for.
- `UsageIndex`: the ledger's records in force (a correction replaces the record it
  corrects) as rows of columns; a replaced row is marked dead. Per-step sums of a
  time series are cached per step length and updated as records arrive.

Every sum is in int64 and follows the rules of `broker.national` exactly (the same
overlap and `share` arithmetic, vectorised); sums that could pass 2**62 fall back to
Python integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from broker.claims import ClaimRecord
from core.states import TERMINAL
from core.types import Job
from ledger import UsageRecord
from ledger.records import RecordKind

I64 = npt.NDArray[np.int64]
# Above this, a product or a sum may not fit in int64: use Python integers.
_SAFE = 1 << 62

UNKNOWN, NOT_FINISHED, FINISHED = -1, 0, 1


class Codes:
    """Small integers for names (centers, home keys), stable for the index's life."""

    def __init__(self) -> None:
        self.of: dict[object, int] = {}
        self.names: list[object] = []

    def code(self, name: object) -> int:
        c = self.of.get(name)
        if c is None:
            c = self.of[name] = len(self.names)
            self.names.append(name)
        return c


@dataclass(slots=True)
class EndedRuns:
    """A consistent view of the ended runs, as numpy columns sorted by end."""

    start: I64
    end: I64
    devices: I64
    center: I64
    home: I64  # -1: the job was not known
    finished: npt.NDArray[np.int8]


def _empty() -> I64:
    return np.zeros(0, dtype=np.int64)


class RunIndex:
    """The claim records, as `broker.national` reads them (see the module's doc)."""

    def __init__(self, find_job: Callable[[str], Job | None]) -> None:
        self.find_job = find_job
        self.open: dict[str, ClaimRecord] = {}
        self.centers = Codes()
        # A home is what decides a job's home hub: its data region and home broker; one
        # job of each is kept to ask the view's `home_region` at call time.
        self.homes = Codes()
        self.home_jobs: list[Job] = []
        self._ended_ids: set[str] = set()
        self._rows: list[tuple[int, int, int, int, int]] = []  # appended, not yet columns
        self._row_claims: list[ClaimRecord] = []
        self._claims: list[ClaimRecord] = []  # per column row, in column order
        self._cols = EndedRuns(_empty(), _empty(), _empty(), _empty(), _empty(), _i8())
        self._unresolved: list[int] = []  # column rows whose `finished` is UNKNOWN

    def note(self, record: ClaimRecord) -> None:
        claim_id = str(record.claim_id)
        if record.ended_at_ms is None:
            if claim_id not in self._ended_ids:
                self.open[claim_id] = record
            return
        self.open.pop(claim_id, None)
        if claim_id in self._ended_ids:
            return  # noted again after its end (billed): the run is as it was
        self._ended_ids.add(claim_id)
        if record.started_at_ms is None:
            return  # never ran (refused, lapsed, cancelled before it started)
        job = self.find_job(record.job_id)
        home = -1
        if job is not None:
            home = self.homes.code((job.spec.data_region, job.home))
            if home == len(self.home_jobs):
                self.home_jobs.append(job)
        self._rows.append(
            (
                record.started_at_ms,
                record.ended_at_ms,
                record.devices,
                self.centers.code(str(record.pool.center_id)),
                home,
            )
        )
        self._row_claims.append(record)

    def ended(self) -> EndedRuns:
        """The ended runs, every `finished` flag that can be known resolved."""
        if self._rows:
            self._fold()
        cols = self._cols
        if self._unresolved:
            still = []
            for i in self._unresolved:
                flag = self._finished(self._claims[i])
                cols.finished[i] = flag
                if flag == UNKNOWN:
                    still.append(i)
            self._unresolved = still
        return cols

    def _fold(self) -> None:
        new = np.array(self._rows, dtype=np.int64).reshape(-1, 5)
        old = self._cols
        start = np.concatenate([old.start, new[:, 0]])
        end = np.concatenate([old.end, new[:, 1]])
        devices = np.concatenate([old.devices, new[:, 2]])
        center = np.concatenate([old.center, new[:, 3]])
        home = np.concatenate([old.home, new[:, 4]])
        finished = np.concatenate([old.finished, np.full(len(new), UNKNOWN, dtype=np.int8)])
        claims = self._claims + self._row_claims
        unresolved = self._unresolved + list(range(len(old.start), len(start)))
        if len(old.end) and len(new) and (new[0, 1] < old.end[-1] or not _sorted(new[:, 1])):
            order = np.argsort(end, kind="stable")
            start, end, devices = start[order], end[order], devices[order]
            center, home, finished = center[order], home[order], finished[order]
            claims = [claims[i] for i in order.tolist()]
            unresolved = np.flatnonzero(finished == UNKNOWN).tolist()
        elif not len(old.end) and not _sorted(end):
            order = np.argsort(end, kind="stable")
            start, end, devices = start[order], end[order], devices[order]
            center, home, finished = center[order], home[order], finished[order]
            claims = [claims[i] for i in order.tolist()]
        self._cols = EndedRuns(start, end, devices, center, home, finished)
        self._claims = claims
        self._unresolved = unresolved
        self._rows = []
        self._row_claims = []

    def _finished(self, r: ClaimRecord) -> int:
        """FINISHED once the job ended under this claim; NOT_FINISHED once it cannot
        (another claim, or no job); UNKNOWN while the job still holds the claim."""
        job = self.find_job(r.job_id)
        if job is None or job.claim_id != r.claim_id:
            return NOT_FINISHED
        return FINISHED if job.state in TERMINAL else UNKNOWN


def _i8() -> npt.NDArray[np.int8]:
    return np.zeros(0, dtype=np.int8)


def _sorted(a: I64) -> bool:
    return bool(len(a) < 2 or np.all(a[1:] >= a[:-1]))


def add_by(codes: I64, values: I64, n: int) -> I64:
    """Sums of `values` per code 0..n-1, exactly."""
    if not len(values):
        return np.zeros(n, dtype=np.int64)
    if int(np.abs(values).max()) * len(values) < (1 << 53):
        # Every partial sum is an integer below 2**53: float64 adds it exactly.
        return np.bincount(codes, weights=values, minlength=n).astype(np.int64)
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, codes, values)
    return out


@dataclass(slots=True)
class UsageCols:
    start: I64
    end: I64
    producer: I64
    energy: I64
    carbon: I64
    charge: I64
    alive: npt.NDArray[np.bool_]


class UsageIndex:
    """The ledger's usage records in force: a correction replaces the record it
    corrects."""

    def __init__(self, producers: Codes) -> None:
        self.producers = producers
        self._row_of: dict[str, int] = {}
        self._rows: list[tuple[int, int, int, int, int, int]] = []
        self._dead: list[int] = []
        self._cols = UsageCols(
            _empty(), _empty(), _empty(), _empty(), _empty(), _empty(), np.zeros(0, dtype=bool)
        )
        self.max_length_ms = 0
        self.max_total = 0
        # Per step length: (first step's start, energy, carbon, spend per step).
        self._steps: dict[int, tuple[int, I64, I64, I64]] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def note(self, record: UsageRecord) -> None:
        if record.kind is RecordKind.USAGE:
            key = record.record_id
        elif record.kind is RecordKind.CORRECTION:
            key = record.refs
        else:
            return
        old = self._row_of.get(key)
        row = (
            record.start_ms,
            record.end_ms,
            self.producers.code(record.producer),
            record.energy_wh,
            record.carbon_g,
            record.charge_minor,
        )
        if old is not None:
            self._dead.append(old)
            self._add_to_steps(self._row(old), -1)
        self._row_of[key] = len(self._cols.start) + len(self._rows)
        self._rows.append(row)
        self.max_length_ms = max(self.max_length_ms, record.end_ms - record.start_ms)
        self.max_total = max(
            self.max_total, abs(record.energy_wh), abs(record.carbon_g), abs(record.charge_minor)
        )
        self._add_to_steps(row, 1)

    def _row(self, i: int) -> tuple[int, int, int, int, int, int]:
        n = len(self._cols.start)
        if i >= n:
            return self._rows[i - n]
        c = self._cols
        return (
            int(c.start[i]),
            int(c.end[i]),
            int(c.producer[i]),
            int(c.energy[i]),
            int(c.carbon[i]),
            int(c.charge[i]),
        )

    def exact_in_int64(self) -> bool:
        """Every product `total * length` of `share` fits in int64."""
        return (self.max_total + 1) * (self.max_length_ms + 1) < _SAFE

    def cols(self) -> UsageCols:
        if self._rows or self._dead:
            new = np.array(self._rows, dtype=np.int64).reshape(-1, 6)
            c = self._cols
            alive = np.concatenate([c.alive, np.ones(len(new), dtype=bool)])
            if self._dead:
                alive[np.array(self._dead, dtype=np.int64)] = False
            self._cols = UsageCols(
                np.concatenate([c.start, new[:, 0]]),
                np.concatenate([c.end, new[:, 1]]),
                np.concatenate([c.producer, new[:, 2]]),
                np.concatenate([c.energy, new[:, 3]]),
                np.concatenate([c.carbon, new[:, 4]]),
                np.concatenate([c.charge, new[:, 5]]),
                alive,
            )
            self._rows = []
            self._dead = []
        return self._cols

    def touching(self, since_ms: int, until_ms: int) -> npt.NDArray[np.bool_]:
        """Rows in force whose interval meets [since, until) (a zero-length one at its
        instant), as `broker.national` counts them."""
        c = self.cols()
        return c.alive & (c.end >= since_ms) & (c.start < until_ms)

    # ------------------------------------------------------------ time series

    def per_step(self, since: int, n: int, step_ms: int) -> tuple[I64, I64, I64]:
        """Energy, carbon and spend in each of `n` steps from `since` (a multiple of
        `step_ms`): kept per step length and updated as records arrive."""
        held = self._steps.get(step_ms)
        if held is None or held[0] > since:
            origin = since
            energy, carbon, spend = self._compute_steps(origin, n, step_ms)
            if len(self._steps) >= 4:
                self._steps.clear()
            self._steps[step_ms] = (origin, energy, carbon, spend)
            held = self._steps[step_ms]
        origin, energy, carbon, spend = held
        first = (since - origin) // step_ms
        if first + n > len(energy):  # time has moved on: grow, filling the new steps
            extra = first + n - len(energy) + n // 4
            e2, c2, s2 = self._compute_steps(origin + len(energy) * step_ms, extra, step_ms)
            energy = np.concatenate([energy, e2])
            carbon = np.concatenate([carbon, c2])
            spend = np.concatenate([spend, s2])
            self._steps[step_ms] = (origin, energy, carbon, spend)
        return energy[first : first + n], carbon[first : first + n], spend[first : first + n]

    def _compute_steps(self, since: int, n: int, step_ms: int) -> tuple[I64, I64, I64]:
        """Each record's share of each step it meets, added up per step."""
        until = since + n * step_ms
        c = self.cols()
        rows = np.flatnonzero(self.touching(since, until))
        out = [np.zeros(n, dtype=np.int64) for _ in range(3)]
        if not len(rows):
            return out[0], out[1], out[2]
        start, end = c.start[rows], c.end[rows]
        first = np.maximum(0, (np.maximum(start, since) - since) // step_ms)
        last = np.minimum(n - 1, (np.maximum(np.minimum(end, until) - 1, start) - since) // step_ms)
        count = np.maximum(last - first + 1, 0)
        # One pair per (record, step it meets).
        pair_row = np.repeat(np.arange(len(rows)), count)
        offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        k = first[pair_row] + offsets
        s0 = since + k * step_ms
        ps, pe = start[pair_row], end[pair_row]
        for j, col in enumerate((c.energy, c.carbon, c.charge)):
            parts = shares(col[rows][pair_row], ps, pe, s0, s0 + step_ms)
            out[j] = add_by(k, parts, n)
        return out[0], out[1], out[2]

    def _add_to_steps(self, row: tuple[int, int, int, int, int, int], sign: int) -> None:
        """A record's shares added to (or, with sign -1, taken from) each cached series."""
        start, end, _, energy, carbon, charge = row
        for step_ms, (origin, e, c, s) in self._steps.items():
            first = max(0, (max(start, origin) - origin) // step_ms)
            last = min(len(e) - 1, (max(end - 1, start) - origin) // step_ms)
            for k in range(first, last + 1):
                s0 = origin + k * step_ms
                e[k] += sign * share(energy, start, end, s0, s0 + step_ms)
                c[k] += sign * share(carbon, start, end, s0, s0 + step_ms)
                s[k] += sign * share(charge, start, end, s0, s0 + step_ms)


def shares(total: I64, start: I64, end: I64, since: I64 | int, until: I64 | int) -> I64:
    """`share` of each row, vectorised (exact while `UsageIndex.exact_in_int64`)."""
    length = end - start
    zero = length <= 0
    safe = np.where(zero, 1, length)

    def upto(t: I64 | int) -> I64:
        return total * np.clip(t - start, 0, safe) // safe

    whole = np.where((since <= start) & (start < until), total, 0)
    return np.where(zero, whole, upto(until) - upto(since))


def share(total: int, start_ms: int, end_ms: int, since_ms: int, until_ms: int) -> int:
    """The part of `total`, spread evenly over [start, end), that falls in [since, until):
    floor(total * elapsed at until / length) - floor(total * elapsed at since / length),
    so that the parts of adjacent windows add up to `total` exactly. A record of no
    length counts whole in the window that holds its instant."""
    length = end_ms - start_ms
    if length <= 0:
        return total if since_ms <= start_ms < until_ms else 0

    def upto(t: int) -> int:
        return total * min(max(t - start_ms, 0), length) // length

    return upto(until_ms) - upto(since_ms)
