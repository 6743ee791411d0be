"""The job book: every job the broker accepted, its transitions and its events.

Memory is the working copy, the store the truth: each change is applied here and handed
to the store in the same step of the event loop, and whoever depends on it (a reply, a
message to a center, a watcher) waits for the commit. Transitions follow the one table
in core.states; each commits with its event.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import heapq
import logging
import secrets
from collections.abc import Iterable, Iterator

from broker.store import Snapshot, Store
from core.clock import Clock
from core.errors import FailedPrecondition, NotFound
from core.states import JobState, check_transition
from core.types import Job, JobEvent, JobId, JobSpec, LogChunk

log = logging.getLogger("icx.broker")

ACTIVE = frozenset({JobState.CLAIMED, JobState.RUNNING})


# What the broker keeps of one job's output; the center keeps all of it in the job's folder.
DEFAULT_MAX_LOG_BYTES = 1 << 20


class JobBook:
    def __init__(
        self, store: Store, clock: Clock, max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_log_bytes = max_log_bytes
        self._log_bytes: dict[JobId, int] = {}
        # Every job in the order it was accepted, and each one's place in it: pages are
        # read from the end without sorting.
        self._order: list[JobId] = []
        self._place: dict[JobId, int] = {}
        # Each state's jobs as sorted places in `_order`: a page of some states merges
        # these from their ends, so it costs the page, not every job.
        self._in_state: dict[JobState, list[int]] = {s: [] for s in JobState}
        self.jobs: dict[JobId, Job] = {}
        self.counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        self._requests: dict[tuple[str, str], JobId] = {}
        self._tenants: set[str] = set()
        # Each tenant's jobs as places in `_order` (appended, so sorted) and its count
        # per state: a tenant's page and total cost its own jobs, not everyone's.
        self._of_tenant: dict[str, list[int]] = {}
        self._tenant_counts: dict[tuple[str, JobState], int] = {}
        self._event_seq: dict[JobId, int] = {}
        self._log_seq: dict[JobId, int] = {}
        self._changed: dict[JobId, asyncio.Event] = {}
        # Submits not yet committed: a duplicate of one waits for the same commit.
        self._accepting: dict[JobId, asyncio.Future[None]] = {}

    def load(self, snapshot: Snapshot) -> None:
        for stored in sorted(snapshot.jobs, key=lambda s: (s.job.submitted_at_ms, s.job.job_id)):
            job = stored.job
            self.jobs[job.job_id] = job
            self._remember(job)
            self._tenants.add(job.tenant)
            self._count(job, 1)
            if stored.request_id:
                self._requests[(job.tenant, stored.request_id)] = job.job_id
        self._event_seq.update(snapshot.event_seq)
        self._log_seq.update(snapshot.log_seq)
        self._log_bytes.update(snapshot.log_bytes)

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(JobId(job_id))
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def find(self, job_id: str) -> Job | None:
        return self.jobs.get(JobId(job_id))

    def newest(self, states: Iterable[JobState] = (), limit: int = 0) -> list[Job]:
        """Newest first (in the order accepted); `limit` 0 for all."""
        out = []
        for job in self.page(states):
            out.append(job)
            if len(out) == limit:
                break
        return out

    def page(
        self, states: Iterable[JobState] = (), after: str = "", tenant: str | None = None
    ) -> Iterator[Job]:
        """Jobs in `states` (all if empty) of `tenant` (every tenant if None), newest
        first, starting after the job `after` (from the newest if empty). NotFound if
        `after` names no job."""
        wanted = frozenset(states)
        if after:
            place = self._place.get(JobId(after))
            if place is None:
                raise NotFound(f"no job {after!r} to continue after")
            end = place
        else:
            end = len(self._order)
        if tenant is not None:
            mine = (
                self.jobs[self._order[i]] for i in _before(self._of_tenant.get(tenant, []), end)
            )
            return (j for j in mine if not wanted or j.state in wanted)
        if not wanted or wanted == frozenset(JobState):
            return (self.jobs[self._order[i]] for i in range(end - 1, -1, -1))
        lists = [self._in_state[s] for s in wanted]
        places = heapq.merge(*(_before(lst, end) for lst in lists), reverse=True)
        return (self.jobs[self._order[i]] for i in places)

    def count(self, states: Iterable[JobState] = (), tenant: str | None = None) -> int:
        wanted = frozenset(states) or frozenset(JobState)
        if tenant is not None:
            return sum(self._tenant_counts.get((tenant, state), 0) for state in wanted)
        return sum(n for state, n in self.counts.items() if state in wanted)

    def has_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def in_state(self, state: JobState) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == state]

    def events_after(self, job_id: JobId, seq: int) -> list[JobEvent]:
        return self.store.events_after(job_id, seq)

    def logs_after(self, job_id: JobId, seq: int) -> list[LogChunk]:
        return self.store.logs_after(job_id, seq)

    def log_seq(self, job_id: JobId) -> int:
        """The sequence number of the job's last output chunk kept (0: none)."""
        return self._log_seq.get(job_id, 0)

    def change_event(self, job_id: JobId) -> asyncio.Event:
        """An event set (and replaced) after each committed change to the job."""
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = asyncio.Event()
        return event

    # ----------------------------------------------------------------- writes

    async def accept(self, tenant: str, spec: JobSpec, request_id: str = "") -> Job:
        """A new queued job; returns once it is committed. A retry with the same
        (tenant, request_id) gets the same job, also only once it is committed; the
        same request id with another spec is refused."""
        if request_id:
            existing = self._requests.get((tenant, request_id))
            if existing is not None:
                job = self.jobs[existing]
                if job.spec != spec:
                    raise FailedPrecondition(
                        f"request_id {request_id!r} was used for job {job.job_id} with "
                        "another spec; use a new request id for a new job"
                    )
                pending = self._accepting.get(existing)
                if pending is not None:
                    await asyncio.shield(pending)
                return job
        at = self.clock.now_ms()
        job = Job(
            job_id=JobId("j-" + secrets.token_hex(6)),
            tenant=tenant,
            spec=spec,
            state=JobState.QUEUED,
            submitted_at_ms=at,
            updated_at_ms=at,
        )
        self.jobs[job.job_id] = job
        self._remember(job)
        self._tenants.add(tenant)
        self._count(job, 1)
        if request_id:
            self._requests[(tenant, request_id)] = job.job_id
        commit = self.store.insert_job(job, self._next_event(job, "accepted"), request_id)
        self._accepting[job.job_id] = commit
        try:
            await self._committed(job.job_id, commit)
        finally:
            self._accepting.pop(job.job_id, None)
        return job

    async def adopt(self, job: Job, message: str) -> Job:
        """A job forwarded here by its home broker, under its own id; returns once it is
        committed. The caller has checked that the id is new."""
        self.jobs[job.job_id] = job
        self._remember(job)
        self._tenants.add(job.tenant)
        self._count(job, 1)
        await self._committed(
            job.job_id, self.store.insert_job(job, self._next_event(job, message))
        )
        return job

    async def transition(self, job: Job, state: JobState, message: str, **changes: object) -> Job:
        """old -> new in memory and in the store, with its event; returns after the
        commit. `job` must be the book's current copy in its state: a caller that held
        it across an await, while something else moved the job, is refused here rather
        than writing over the newer state."""
        current = self.jobs[job.job_id]
        if current.state != job.state:
            raise FailedPrecondition(f"job {job.job_id} is now {current.state}, not {job.state}")
        check_transition(job.job_id, job.state, state)
        new = dataclasses.replace(
            current,
            state=state,
            updated_at_ms=self.clock.now_ms(),
            reason=message,
            **changes,  # type: ignore[arg-type]
        )
        self.jobs[job.job_id] = new
        self._count(job, -1)
        self._count(new, 1)
        if state != job.state:
            place = self._place[job.job_id]
            old = self._in_state[job.state]
            del old[bisect.bisect_left(old, place)]
            bisect.insort(self._in_state[state], place)
        log.info(
            "job %s %s -> %s%s: %s",
            job.job_id,
            job.state,
            state,
            f" center={new.center_id}" if new.center_id else "",
            message,
        )
        await self._committed(
            job.job_id, self.store.update_job(new, self._next_event(new, message))
        )
        return new

    async def amend(self, job: Job, **changes: object) -> Job:
        """A change that is not a transition (devices granted, attempts); committed."""
        new = dataclasses.replace(job, updated_at_ms=self.clock.now_ms(), **changes)  # type: ignore[arg-type]
        self.jobs[job.job_id] = new
        await self._committed(job.job_id, self.store.update_job(new))
        return new

    def explain(self, job: Job, explanation: str) -> None:
        """Why a queued job waits: kept in memory only (the matcher says it every round)."""
        if job.explanation != explanation:
            self.jobs[job.job_id] = dataclasses.replace(job, explanation=explanation)

    def append_log(self, chunk: LogChunk) -> bool:
        """A chunk of output; resends (seq already seen) are dropped. Keeps at most
        `max_log_bytes` of a job's output: the chunk that crosses the cap is cut and
        followed by a line saying so, later ones are dropped. False if the chunk was not
        kept whole. Not awaited: the job's final update commits after it."""
        job_id = chunk.job_id
        if chunk.seq <= self._log_seq.get(job_id, 0):
            return True
        self._log_seq[job_id] = chunk.seq
        kept = self._log_bytes.get(job_id, 0)
        if kept >= self.max_log_bytes:
            return False
        room = self.max_log_bytes - kept
        whole = len(chunk.data) <= room
        if not whole:
            note = (
                f"\n[icx: output truncated at {self.max_log_bytes} bytes; the center keeps "
                "all of it in the job's folder]\n"
            ).encode()
            chunk = dataclasses.replace(chunk, data=chunk.data[:room] + note)
            log.warning("job %s: output past %d bytes is not kept", job_id, self.max_log_bytes)
        self._log_bytes[job_id] = kept + len(chunk.data)
        fut = self.store.insert_log(chunk)
        fut.add_done_callback(lambda f: self._after_commit(job_id, f))
        return whole

    # ---------------------------------------------------------------- helpers

    def _count(self, job: Job, n: int) -> None:
        self.counts[job.state] += n
        key = (job.tenant, job.state)
        self._tenant_counts[key] = self._tenant_counts.get(key, 0) + n

    def _remember(self, job: Job) -> None:
        """A job new to the book, placed after every other."""
        place = len(self._order)
        self._place[job.job_id] = place
        self._order.append(job.job_id)
        self._of_tenant.setdefault(job.tenant, []).append(place)
        self._in_state[job.state].append(place)  # the largest place: still sorted

    def _next_event(self, job: Job, message: str) -> JobEvent:
        seq = self._event_seq.get(job.job_id, 0) + 1
        self._event_seq[job.job_id] = seq
        return JobEvent(
            job_id=job.job_id,
            seq=seq,
            at_ms=job.updated_at_ms,
            state=job.state,
            center_id=job.center_id,
            message=message,
        )

    async def _committed(self, job_id: JobId, commit: asyncio.Future[None]) -> None:
        commit.add_done_callback(lambda f: self._after_commit(job_id, f))
        await commit

    def _after_commit(self, job_id: JobId, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("store write for job %s failed: %s", job_id, fut.exception())
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()


def _before(places: list[int], end: int) -> Iterator[int]:
    """The sorted `places` below `end`, largest first."""
    for i in range(bisect.bisect_left(places, end) - 1, -1, -1):
        yield places[i]
