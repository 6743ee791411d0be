"""The broker's state machine: jobs, connected centers, claims, matching rounds.

Memory is the working copy; SQLite is the truth. Every change is applied to memory and
enqueued to the store in the same step of the event loop, and any reply or message that
depends on it is sent only after its commit. On start the broker loads the store and
gives every center that holds work one expiry period to come back.

Invariant 1 (an offer is a hint, a claim is the truth): the broker only believes an
agent's offer minus the claims it has sent and not yet heard back about; the agent
decides each claim. Invariant 2 (no accepted job is lost): a job leaves the queue only
for a claim, and a lapsed claim or a lost center puts it back or ends it with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker._rows import insert_event, job_from_row, parse_center, update_job
from broker.ledger import BrokerLedger
from broker.metrics import Metrics
from broker.store import Store
from core import wire
from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from core.states import TERMINAL, JobState, check_transition
from core.types import (
    CenterDescriptor,
    CenterId,
    ClaimId,
    Job,
    JobEvent,
    JobId,
    JobSpec,
    LogChunk,
    Offer,
    PoolId,
)
from icx.v1 import agent_pb2
from ledger import SignedRecord
from matcher import (
    ANY,
    GreedyMatcher,
    JobRequest,
    Matcher,
    PoolSlot,
    Problem,
    QuoteLine,
    Solution,
    quote,
)

log = logging.getLogger("icx.broker")

ACTIVE = frozenset({JobState.CLAIMED, JobState.RUNNING})
# A round considers jobs asking for up to this many times the free devices ...
ROUND_OVERSUBSCRIPTION = 4
# ... and at least this many jobs.
ROUND_MIN_JOBS = 64


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    heartbeat_interval_ms: int = 1_000
    # Silence past this takes a center out of matching and requeues its jobs.
    center_expiry_ms: int = 10_000
    # A reserve not answered within this lapses and the job goes back to the queue.
    lease_ms: int = 10_000
    # A job lost (its center gone) this many times fails instead of running again.
    max_attempts: int = 3
    round_interval_s: float = 0.5
    # After a wake-up, wait this long so that a burst of submits and ends share a round.
    round_debounce_s: float = 0.025
    max_jobs_per_round: int = 5_000
    # The coordinator's policy and the network (latency, bandwidth) for every round: a
    # problem without pools or jobs, which each round fills in.
    round_template: Problem = field(default_factory=lambda: Problem(pools=(), jobs=()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Round:
    """A solved matching round, kept so that it can be dumped and replayed."""

    number: int
    at_ms: int
    problem: Problem
    solution: Solution


@dataclass(slots=True, kw_only=True)
class Session:
    """A connected node agent."""

    center: CenterDescriptor
    generation: int
    outbox: asyncio.Queue[agent_pb2.ConnectResponse] = field(default_factory=asyncio.Queue)
    last_seen_ms: int
    connected: bool = True
    offer: Offer | None = None


@dataclass(slots=True, kw_only=True)
class PendingClaim:
    claim_id: ClaimId
    job_id: JobId
    center_id: CenterId
    pool_id: PoolId
    devices: int
    lease_expires_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterView:
    center: CenterDescriptor
    offer: Offer | None
    connected: bool
    last_seen_ms: int
    jobs_running: int


class Broker:
    def __init__(
        self,
        store: Store,
        *,
        config: BrokerConfig | None = None,
        matcher: Matcher | None = None,
        metrics: Metrics | None = None,
        ledger: BrokerLedger | None = None,
    ) -> None:
        self.store = store
        self.config = config or BrokerConfig()
        self.matcher: Matcher = matcher or GreedyMatcher()
        self.metrics = metrics or Metrics()
        self.ledger = ledger
        self.jobs: dict[JobId, Job] = {}
        self._event_seq: dict[JobId, int] = {}
        self._log_seq: dict[JobId, int] = {}
        self._requests: dict[tuple[str, str], JobId] = {}
        self.centers: dict[CenterId, CenterDescriptor] = {}
        self._center_seen: dict[CenterId, int] = {}
        self.sessions: dict[CenterId, Session] = {}
        self.claims: dict[ClaimId, PendingClaim] = {}
        self._generation = 0
        self._wake = asyncio.Event()
        self._changed: dict[JobId, asyncio.Event] = {}
        self._state_counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        self.rounds = 0
        self.last_round: Round | None = None

    # ----------------------------------------------------------------- loading

    def load(self) -> None:
        """Read the store into memory. Centers holding active work get one expiry period
        (from now) to reconnect before their jobs are requeued."""
        db = self.store.reader
        start = now_ms()
        for row in db.execute("SELECT * FROM jobs"):
            job = job_from_row(row)
            self.jobs[job.job_id] = job
            self._count(None, job.state)
            if row["request_id"]:
                self._requests[(job.tenant, row["request_id"])] = job.job_id
        for job_id, seq in db.execute("SELECT job_id, MAX(seq) FROM events GROUP BY job_id"):
            self._event_seq[JobId(job_id)] = seq
        for job_id, seq in db.execute("SELECT job_id, MAX(seq) FROM logs GROUP BY job_id"):
            self._log_seq[JobId(job_id)] = seq
        for row in db.execute("SELECT center_id, descriptor FROM centers"):
            center = wire.center_from_proto(parse_center(row["descriptor"]))
            self.centers[center.center_id] = center
            self._center_seen[center.center_id] = start
        active = sum(1 for j in self.jobs.values() if j.state in ACTIVE)
        log.info(
            "loaded %d jobs (%d queued, %d active) and %d centers from %s",
            len(self.jobs),
            self._state_counts[JobState.QUEUED],
            active,
            len(self.centers),
            self.store.path,
        )
        self._wake.set()

    # ------------------------------------------------------------- user side

    async def submit(self, tenant: str, spec: JobSpec, request_id: str = "") -> Job:
        """Accept a job; returns once it is committed to the store."""
        spec.validate_at(now_ms())
        if request_id:
            existing = self._requests.get((tenant, request_id))
            if existing is not None:
                return self.jobs[existing]
        at = now_ms()
        job = Job(
            job_id=JobId("j-" + secrets.token_hex(6)),
            tenant=tenant,
            spec=spec,
            state=JobState.QUEUED,
            submitted_at_ms=at,
            updated_at_ms=at,
        )
        self.jobs[job.job_id] = job
        self._count(None, JobState.QUEUED)
        if request_id:
            self._requests[(tenant, request_id)] = job.job_id
        spec_bytes = wire.spec_to_proto(spec).SerializeToString(deterministic=True)
        event = self._next_event(job, "accepted")

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (job_id, tenant, request_id, spec, state, submitted_at_ms,"
                " updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    tenant,
                    request_id or None,
                    spec_bytes,
                    job.state.value,
                    at,
                    at,
                ),
            )
            insert_event(conn, event)

        await self._persist(job.job_id, insert)
        log.info(
            "job %s queued tenant=%s devices=%d accelerator=%s",
            job.job_id,
            tenant,
            spec.devices,
            spec.accelerator,
        )
        self._wake.set()
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(JobId(job_id))
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def list_jobs(self, states: Iterable[JobState] = (), limit: int = 0) -> list[Job]:
        wanted = frozenset(states)
        jobs = [j for j in self.jobs.values() if not wanted or j.state in wanted]
        jobs.sort(key=lambda j: (j.submitted_at_ms, j.job_id), reverse=True)
        return jobs[:limit] if limit > 0 else jobs

    async def cancel(self, tenant: str, job_id: str) -> Job:
        job = self.get(job_id)
        if job.tenant != tenant:
            raise PermissionDenied(f"job {job_id} belongs to another tenant")
        if job.state in TERMINAL:
            raise FailedPrecondition(f"job {job_id} already {job.state}")
        session = self.sessions.get(job.center_id) if job.center_id else None
        claim_id = job.claim_id
        if claim_id:
            self.claims.pop(claim_id, None)
        job = await self._transition(job, JobState.CANCELLED, "cancelled by the user")
        if session is not None and session.connected and claim_id:
            _send(session, cancel=agent_pb2.Cancel(claim_id=claim_id, job_id=job.job_id))
        return job

    def center_views(self) -> list[CenterView]:
        running: dict[CenterId, int] = {}
        for job in self.jobs.values():
            if job.state in ACTIVE and job.center_id:
                running[job.center_id] = running.get(job.center_id, 0) + 1
        views = []
        for center_id, center in sorted(self.centers.items()):
            session = self.sessions.get(center_id)
            views.append(
                CenterView(
                    center=center,
                    offer=session.offer if session else None,
                    connected=bool(session and session.connected),
                    last_seen_ms=self._center_seen.get(center_id, 0),
                    jobs_running=running.get(center_id, 0),
                )
            )
        return views

    def events_after(self, job_id: JobId, seq: int) -> list[JobEvent]:
        rows = self.store.reader.execute(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [
            JobEvent(
                job_id=JobId(r["job_id"]),
                seq=r["seq"],
                at_ms=r["at_ms"],
                state=JobState(r["state"]),
                center_id=CenterId(r["center_id"]) if r["center_id"] else None,
                message=r["message"],
            )
            for r in rows
        ]

    def logs_after(self, job_id: JobId, seq: int) -> list[LogChunk]:
        rows = self.store.reader.execute(
            "SELECT * FROM logs WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [
            LogChunk(job_id=JobId(r["job_id"]), seq=r["seq"], stream=r["stream"], data=r["data"])
            for r in rows
        ]

    def change_event(self, job_id: JobId) -> asyncio.Event:
        """An event set (and replaced) after each committed change to the job."""
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = asyncio.Event()
        return event

    # ------------------------------------------------------------ agent side

    async def connect(
        self, center: CenterDescriptor, held: list[agent_pb2.HeldClaim], usage_key: str = ""
    ) -> tuple[Session, agent_pb2.Welcome]:
        """Register a (re)connecting agent and reconcile the claims it holds."""
        if usage_key and self.ledger is not None:
            await self.ledger.admit_center(center.center_id, usage_key)
        old = self.sessions.get(center.center_id)
        if old is not None and old.connected:
            log.warning("center %s reconnected; closing its previous stream", center.center_id)
            old.connected = False
            old.outbox.put_nowait(agent_pb2.ConnectResponse())  # wakes its sender to stop
        self._generation += 1
        at = now_ms()
        session = Session(center=center, generation=self._generation, last_seen_ms=at)
        self.sessions[center.center_id] = session
        self._center_seen[center.center_id] = at
        first = center.center_id not in self.centers
        self.centers[center.center_id] = center
        blob = wire.center_to_proto(center).SerializeToString(deterministic=True)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO centers (center_id, descriptor, first_seen_ms, last_seen_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(center_id) DO UPDATE SET"
                " descriptor = excluded.descriptor, last_seen_ms = excluded.last_seen_ms",
                (center.center_id, blob, at, at),
            )

        await self.store.write(upsert)
        log.info(
            "center %s %s region=%s pools=%s",
            center.center_id,
            "joined" if first else "reconnected",
            center.region,
            ",".join(f"{p.pool_id}x{p.devices_total}" for p in center.pools),
        )
        stale = await self._reconcile(session, held)
        welcome = agent_pb2.Welcome(
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            center_expiry_ms=self.config.center_expiry_ms,
            stale_claim_ids=stale,
        )
        self._refresh_gauges()
        return session, welcome

    async def _reconcile(self, session: Session, held: list[agent_pb2.HeldClaim]) -> list[str]:
        center_id = session.center.center_id
        stale: list[str] = []
        held_claims = set()
        for h in held:
            held_claims.add(h.claim_id)
            job = self.jobs.get(JobId(h.job_id))
            if job is None or job.claim_id != h.claim_id or job.center_id != center_id:
                stale.append(h.claim_id)
                continue
            reported = wire.state_from_proto(h.state)
            if job.state in TERMINAL:
                if reported in ACTIVE:
                    stale.append(h.claim_id)
                continue
            if reported in TERMINAL:
                exit_code = h.exit_code if h.HasField("exit_code") else None
                await self._finish(job, reported, exit_code, "reported on reconnect")
            elif reported == JobState.RUNNING and job.state == JobState.CLAIMED:
                await self._transition(job, JobState.RUNNING, "running (reported on reconnect)")
            elif reported == JobState.CLAIMED and job.state == JobState.CLAIMED:
                self.claims.pop(ClaimId(h.claim_id), None)
                _launch(session, h.claim_id, job)
        for job in list(self.jobs.values()):
            orphan = job.claim_id not in held_claims and job.claim_id not in self.claims
            if job.center_id == center_id and job.state in ACTIVE and orphan:
                await self._requeue(job, f"center {center_id} no longer holds the job")
        return stale

    def disconnect(self, session: Session) -> None:
        if self.sessions.get(session.center.center_id) is session:
            session.connected = False
            log.info("center %s disconnected", session.center.center_id)
            self._refresh_gauges()

    def heartbeat(self, session: Session) -> None:
        session.last_seen_ms = now_ms()
        self._center_seen[session.center.center_id] = session.last_seen_ms

    def on_offer(self, session: Session, offer: Offer) -> None:
        self.heartbeat(session)
        if offer.center_id != session.center.center_id:
            raise PermissionDenied(
                f"center {session.center.center_id} cannot advertise for {offer.center_id}"
            )
        known = {p.pool_id for p in session.center.pools}
        for pool in offer.pools:
            if pool.pool_id not in known:
                raise InvalidArgument(
                    f"offer names pool {pool.pool_id!r}, not in center "
                    f"{session.center.center_id}'s descriptor"
                )
        if session.offer is not None and offer.seq <= session.offer.seq:
            log.debug("stale offer from %s seq %d", offer.center_id, offer.seq)
            return
        session.offer = offer
        self._wake.set()

    async def on_claim_reply(self, session: Session, reply: agent_pb2.ClaimReply) -> None:
        self.heartbeat(session)
        claim = self.claims.pop(ClaimId(reply.claim_id), None)
        job = self.jobs.get(claim.job_id) if claim else None
        if claim is None or job is None or job.claim_id != reply.claim_id:
            if reply.accepted:  # lapsed or cancelled meanwhile: release it at the center
                _send(session, cancel=agent_pb2.Cancel(claim_id=reply.claim_id, reason="lapsed"))
            return
        if not reply.accepted:
            self.metrics.claim_refusals.inc()
            log.info(
                "claim %s for job %s refused by %s: %s",
                reply.claim_id,
                job.job_id,
                session.center.center_id,
                reply.reason,
            )
            await self._requeue(
                job, f"claim refused by {claim.center_id}: {reply.reason}", lost=False
            )
            return
        job = dataclasses.replace(
            job,
            device_indices=tuple(reply.device_indices),
            attempts=job.attempts + 1,
            updated_at_ms=now_ms(),
        )
        self.jobs[job.job_id] = job
        await self._persist(job.job_id, update_job(job))
        _launch(session, reply.claim_id, job)

    async def on_job_update(self, session: Session, update: agent_pb2.JobUpdate) -> None:
        self.heartbeat(session)
        job = self.jobs.get(JobId(update.job_id))
        state = wire.state_from_proto(update.state)
        if job is None or job.claim_id != update.claim_id or job.state in TERMINAL:
            if state in ACTIVE:  # the broker gave this work away: stop it there
                _send(
                    session,
                    cancel=agent_pb2.Cancel(
                        claim_id=update.claim_id,
                        job_id=update.job_id,
                        reason="claim no longer valid",
                    ),
                )
            return
        if state == JobState.QUEUED:
            center_id = session.center.center_id
            await self._requeue(job, f"center {center_id} gave it back: {update.message}")
        elif state == JobState.RUNNING:
            if job.state == JobState.CLAIMED:
                await self._transition(job, JobState.RUNNING, update.message or "started")
        elif state in TERMINAL:
            exit_code = update.exit_code if update.HasField("exit_code") else None
            await self._finish(job, state, exit_code, update.message)

    async def on_usage(self, session: Session, entry: bytes) -> agent_pb2.UsageAck:
        """A center's signed usage record: checked against the job it bills, then
        verified, countersigned and appended by the ledger."""
        self.heartbeat(session)
        center_id = session.center.center_id
        try:
            signed = SignedRecord.from_entry(entry)
        except IcxError as exc:
            return agent_pb2.UsageAck(accepted=False, reason=f"unreadable record: {exc}")
        record = signed.record
        ack = agent_pb2.UsageAck(record_id=record.record_id)
        job = self.jobs.get(JobId(record.job_id))
        reason = ""
        if self.ledger is None:
            reason = "this broker keeps no ledger"
        elif record.producer != center_id:
            reason = f"center {center_id} cannot report usage for {record.producer}"
        elif job is None:
            reason = f"no job {record.job_id!r}"
        elif record.consumer != job.tenant:
            reason = f"job {job.job_id} belongs to {job.tenant!r}, not {record.consumer!r}"
        if reason:
            log.warning("usage %s from %s refused: %s", record.record_id, center_id, reason)
            ack.reason = reason
            return ack
        assert self.ledger is not None
        try:
            ack.index = await self.ledger.append(signed)
        except IcxError as exc:
            log.warning("usage %s from %s refused: %s", record.record_id, center_id, exc)
            ack.reason = str(exc)
            return ack
        ack.accepted = True
        log.info(
            "usage %s for job %s logged at %d: %d device-s, %d fen",
            record.record_id,
            record.job_id,
            ack.index,
            record.device_s,
            record.charge_minor,
        )
        return ack

    def on_log(self, session: Session, chunk: LogChunk) -> None:
        job = self.jobs.get(chunk.job_id)
        if job is None or job.center_id != session.center.center_id:
            return
        if chunk.seq <= self._log_seq.get(chunk.job_id, 0):
            return  # a resend after reconnect
        self._log_seq[chunk.job_id] = chunk.seq

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO logs (job_id, seq, stream, data) VALUES (?, ?, ?, ?)",
                (chunk.job_id, chunk.seq, chunk.stream, chunk.data),
            )

        self._persist_nowait(chunk.job_id, insert)

    # ---------------------------------------------------------------- loops

    async def run_matching(self) -> None:
        """Match in rounds: at once when woken (a submit, an offer, a requeue), else on a
        timer."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.round_interval_s)
            self._wake.clear()
            await asyncio.sleep(self.config.round_debounce_s)  # let a burst land in one round
            try:
                await self.match_round()
            except Exception:
                log.exception("matching round failed")

    async def match_round(self) -> int:
        """One round: the matcher's assignments become claims. Returns claims sent."""
        started = time.perf_counter()
        at = now_ms()
        pools = self._pool_slots(at)
        if not pools:  # nothing free anywhere: no need to look at the queue
            return 0
        queued = [j for j in self.jobs.values() if j.state == JobState.QUEUED]
        if not queued:
            return 0
        queued.sort(key=lambda j: (-j.spec.priority, j.submitted_at_ms))
        queued = _round_jobs(queued, list(pools.values()), self.config)
        problem = dataclasses.replace(
            self.config.round_template,
            pools=tuple(pools.values()),
            jobs=tuple(_job_request(j, at) for j in queued),
        )
        solution = await asyncio.to_thread(self.matcher.solve, problem)
        self.rounds += 1
        self.last_round = Round(number=self.rounds, at_ms=at, problem=problem, solution=solution)
        self._record_round(problem, solution)
        claims = []
        for a in solution.assignments:
            job = self.jobs.get(JobId(a.job_id))
            slot = pools[a.pool_id]
            session = self.sessions.get(CenterId(slot.center_id))
            if job is None or job.state != JobState.QUEUED or session is None:
                continue
            if not session.connected:
                continue
            claims.append(self._claim(job, session, slot, a.explanation))
        # Together, so that the round's transitions share one commit.
        await asyncio.gather(*claims)
        sent = len(claims)
        for u in solution.unplaced:
            job = self.jobs.get(JobId(u.job_id))
            if job is not None and job.state == JobState.QUEUED and job.explanation != u.reason:
                self.jobs[job.job_id] = dataclasses.replace(job, explanation=u.reason)
        self.metrics.round_seconds.observe(time.perf_counter() - started)
        self._refresh_gauges()
        return sent

    def _record_round(self, problem: Problem, solution: Solution) -> None:
        gap = solution.gap
        log.info(
            "round %d: %d jobs on %d pools -> %d placed, %d unplaced; objective %.2f bound %s"
            " gap %s (%s, %.3f s)",
            self.rounds,
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
        m = self.metrics
        m.round_objective.set(solution.objective)
        m.round_bound.set(solution.objective if solution.bound is None else solution.bound)
        m.round_gap.set(gap or 0.0)
        m.round_solve_seconds.set(solution.seconds)
        m.placed.inc(len(solution.assignments))

    def quote(self, spec: JobSpec) -> tuple[QuoteLine, ...]:
        """The centers that could run `spec` now, ranked by the round's policy."""
        at = now_ms()
        spec.validate_at(at)
        request = _job_request_from_spec("quote", spec, at, submitted_at_ms=at)
        problem = dataclasses.replace(
            self.config.round_template,
            pools=tuple(self._pool_slots(at, include_full=True).values()),
            jobs=(),
        )
        return quote(request, problem)

    def current_problem(self) -> Problem:
        """The problem a round would solve now."""
        at = now_ms()
        queued = [j for j in self.jobs.values() if j.state == JobState.QUEUED]
        queued.sort(key=lambda j: (-j.spec.priority, j.submitted_at_ms))
        return dataclasses.replace(
            self.config.round_template,
            pools=tuple(self._pool_slots(at).values()),
            jobs=tuple(_job_request(j, at) for j in queued[: self.config.max_jobs_per_round]),
        )

    def _pool_slots(self, at: int, *, include_full: bool = False) -> dict[str, PoolSlot]:
        """Pools of connected centers with a live offer, free devices as the broker may
        believe them (the offer less claims not yet answered)."""
        pending: dict[tuple[CenterId, PoolId], int] = {}
        for c in self.claims.values():
            key = (c.center_id, c.pool_id)
            pending[key] = pending.get(key, 0) + c.devices
        slots: dict[str, PoolSlot] = {}
        for center_id, session in self.sessions.items():
            offer = session.offer
            if not session.connected or offer is None or offer.expires_at_ms <= at:
                continue
            for pool in offer.pools:
                free = max(0, pool.devices_free - pending.get((center_id, pool.pool_id), 0))
                if free == 0 and not include_full:
                    continue
                slot_id = f"{center_id}/{pool.pool_id}"
                slots[slot_id] = PoolSlot(
                    pool_id=slot_id,
                    center_id=center_id,
                    region=session.center.region,
                    accelerator=pool.accelerator,
                    free=free,
                    memory_gb=pool.memory_gb,
                    tflops=pool.fp16_tflops,
                    power_w=pool.power_w,
                    pue_milli=offer.pue_milli,
                    grid_g_per_kwh=offer.grid_g_co2_per_kwh,
                    price_minor_per_device_hour=pool.price_minor_per_device_hour,
                )
        return slots

    async def _claim(self, job: Job, session: Session, slot: PoolSlot, why: str) -> None:
        claim_id = ClaimId("c-" + secrets.token_hex(6))
        pool_id = PoolId(slot.pool_id.split("/", 1)[1])
        lease_until = now_ms() + self.config.lease_ms
        # Held before the commit so the next round already subtracts these devices.
        self.claims[claim_id] = PendingClaim(
            claim_id=claim_id,
            job_id=job.job_id,
            center_id=session.center.center_id,
            pool_id=pool_id,
            devices=job.spec.devices,
            lease_expires_at_ms=lease_until,
        )
        await self._transition(
            job,
            JobState.CLAIMED,
            f"claim {claim_id} at {session.center.center_id}/{pool_id}",
            center_id=session.center.center_id,
            pool_id=pool_id,
            claim_id=claim_id,
            device_indices=(),
            explanation=why,
        )
        self.metrics.claims.inc()
        _send(
            session,
            reserve=agent_pb2.Reserve(
                claim_id=claim_id,
                job_id=job.job_id,
                pool_id=pool_id,
                devices=job.spec.devices,
                lease_expires_at_ms=lease_until,
            ),
        )

    async def run_expiry(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                await self.expire()
            except Exception:
                log.exception("expiry pass failed")

    async def expire(self) -> None:
        """Lapse unanswered claims and take silent centers out, requeueing their work."""
        at = now_ms()
        for claim in list(self.claims.values()):
            if claim.lease_expires_at_ms <= at:
                self.claims.pop(claim.claim_id, None)
                job = self.jobs.get(claim.job_id)
                if job is not None and job.claim_id == claim.claim_id and job.state in ACTIVE:
                    await self._requeue(
                        job, f"claim {claim.claim_id} lapsed unanswered", lost=False
                    )
                session = self.sessions.get(claim.center_id)
                if session is not None and session.connected:
                    _send(
                        session, cancel=agent_pb2.Cancel(claim_id=claim.claim_id, reason="lapsed")
                    )
        expired_centers = {
            center_id
            for center_id, seen in self._center_seen.items()
            if seen + self.config.center_expiry_ms <= at
        }
        for center_id in expired_centers:
            session = self.sessions.get(center_id)
            if session is not None and session.connected:
                log.warning(
                    "center %s silent for %d ms: out of matching",
                    center_id,
                    at - session.last_seen_ms,
                )
                session.connected = False
        if not expired_centers:
            return
        for job in list(self.jobs.values()):
            if job.state in ACTIVE and job.center_id in expired_centers:
                await self._requeue(job, f"center {job.center_id} lost (silent past expiry)")
        self._refresh_gauges()

    # ----------------------------------------------------------- transitions

    async def _requeue(self, job: Job, reason: str, *, lost: bool = True) -> None:
        if job.claim_id:
            self.claims.pop(job.claim_id, None)
        if lost and job.attempts >= self.config.max_attempts:
            await self._transition(
                job, JobState.FAILED, f"{reason}; gave up after {job.attempts} attempts"
            )
            return
        self.metrics.requeues.inc()
        await self._transition(
            job,
            JobState.QUEUED,
            f"requeued: {reason}",
            center_id=None,
            pool_id=None,
            claim_id=None,
            device_indices=(),
        )
        self._wake.set()

    async def _finish(self, job: Job, state: JobState, exit_code: int | None, message: str) -> None:
        if job.claim_id:
            self.claims.pop(job.claim_id, None)
        if job.state == JobState.CLAIMED and state != JobState.CANCELLED:
            # It ran while the broker did not hear of the start (a restart in between).
            job = await self._transition(job, JobState.RUNNING, "started (reported late)")
        await self._transition(job, state, message or str(state), exit_code=exit_code)
        self._wake.set()

    async def _transition(self, job: Job, state: JobState, message: str, **changes: object) -> Job:
        """Apply old -> new in memory and in the store; returns after the commit."""
        check_transition(job.job_id, job.state, state)
        new = dataclasses.replace(
            job,
            state=state,
            updated_at_ms=now_ms(),
            reason=message,
            **changes,  # type: ignore[arg-type]
        )
        self.jobs[job.job_id] = new
        self._count(job.state, state)
        event = self._next_event(new, message)
        update = update_job(new)

        def write(conn: sqlite3.Connection) -> None:
            update(conn)
            insert_event(conn, event)

        log.info(
            "job %s %s -> %s%s: %s",
            job.job_id,
            job.state,
            state,
            f" center={new.center_id}" if new.center_id else "",
            message,
        )
        await self._persist(job.job_id, write)
        return new

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

    async def _persist(self, job_id: JobId, fn: Callable[[sqlite3.Connection], None]) -> None:
        await self._persist_nowait(job_id, fn)

    def _persist_nowait(
        self, job_id: JobId, fn: Callable[[sqlite3.Connection], None]
    ) -> asyncio.Future[None]:
        fut = self.store.write(fn)
        fut.add_done_callback(lambda _: self._notify(job_id))
        return fut

    def _notify(self, job_id: JobId) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    def _count(self, old: JobState | None, new: JobState) -> None:
        if old is not None:
            self._state_counts[old] -= 1
        self._state_counts[new] += 1

    def _refresh_gauges(self) -> None:
        for state, n in self._state_counts.items():
            self.metrics.jobs.labels(state=state.value).set(n)
        self.metrics.queue_length.set(self._state_counts[JobState.QUEUED])
        live = [s for s in self.sessions.values() if s.connected]
        self.metrics.centers_connected.set(len(live))
        self.metrics.offers.set(sum(1 for s in live if s.offer is not None))


def _send(session: Session, **msg: object) -> None:
    session.outbox.put_nowait(agent_pb2.ConnectResponse(**msg))  # type: ignore[arg-type]


def _launch(session: Session, claim_id: str, job: Job) -> None:
    """Tell the center to start the job it holds under `claim_id`."""
    _send(
        session,
        launch=agent_pb2.Launch(
            claim_id=claim_id,
            job_id=job.job_id,
            spec=wire.spec_to_proto(job.spec),
            tenant=job.tenant,
        ),
    )


def _round_jobs(queued: list[Job], pools: list[PoolSlot], config: BrokerConfig) -> list[Job]:
    """The head of the queue that a round considers: jobs that could use the free
    devices, asking for several times as many as there are (so that the matcher can
    choose), at least a floor of jobs, never more than the cap. A backed-up queue is not
    re-solved whole for a few free devices. Only jobs that some free pool of their
    accelerator could hold count toward the budget, so jobs that cannot run now (a gang
    too big, a model with nothing free) never crowd out those behind them."""
    largest: dict[str, int] = {}
    for pool in pools:
        largest[pool.accelerator] = max(largest.get(pool.accelerator, 0), pool.free)
    largest_any = max(largest.values(), default=0)
    budget = ROUND_OVERSUBSCRIPTION * sum(p.free for p in pools)
    chosen: list[Job] = []
    asked = placeable = explained = 0
    for job in queued:
        if len(chosen) >= config.max_jobs_per_round:
            break
        fits = largest_any if job.spec.accelerator == ANY else largest.get(job.spec.accelerator, 0)
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
    )
