"""The broker: a thin facade over its state owners.

- `JobBook` (broker.jobs): jobs, transitions, events, output, change notification;
- `Centers` (broker.centers): descriptors, agents' sessions, offers, last heard from;
- `ClaimBook` (broker.claims): reserves sent and not yet answered, with their leases;
- `Rounds` (broker.rounds): matching over every `CapacitySource`, claims through a
  `ClaimRoute` (broker.capacity; `LocalCenters` today, peer brokers next), quotes;
- `UsageIntake` (broker.usage): signed usage checked and handed to the ledger.

The facade holds the flows that touch several owners: a submit, a cancel, an agent's
(re)connection and its claims' answers, expiry. Every change is committed by the store
before a reply or a message depends on it.

Invariant 1 (an offer is a hint, a claim is the truth): the broker only believes an
agent's offer minus the claims it has sent and not yet heard back about; the agent
decides each claim. Invariant 2 (no accepted job is lost): a job leaves the queue only
for a claim, and a lapsed claim or a lost center puts it back or ends it with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker.capacity import PEER_BROKERS, LocalCenters
from broker.centers import (
    Cancel,
    Centers,
    ClaimReply,
    Close,
    HeldClaim,
    JobUpdate,
    Launch,
    Session,
    TokenBucket,
    UsageAck,
)
from broker.claims import ClaimBook
from broker.jobs import ACTIVE, DEFAULT_MAX_LOG_BYTES, JobBook
from broker.ledger import BrokerLedger
from broker.metrics import Metrics
from broker.national import NationalView, Site, local_sites, peer_sites
from broker.peers import Peers
from broker.policy_book import PolicyBook
from broker.rounds import Round, Rounds
from broker.store import Store
from broker.usage import MIN_INTERVAL_S, UsageIntake
from core.clock import SYSTEM, Clock
from core.errors import FailedPrecondition, InvalidJobSpec, PermissionDenied, Unauthenticated
from core.states import TERMINAL, JobState
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
    PoolRef,
    accepts_image,
)
from core.views import CenterStatus, QuoteLine
from identity import Credentials, Member, Revocations
from identity.tls import Trust
from ledger import SignedRecord
from matcher import ANY, GreedyMatcher, Matcher, Problem

log = logging.getLogger("icx.broker")


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
    expiry_interval_s: float = 0.25
    max_jobs_per_round: int = 5_000
    # Output kept per job (the center keeps all of it), and the output chunks a center may
    # send per second (a burst of twice that); more are dropped and counted.
    max_log_bytes_per_job: int = DEFAULT_MAX_LOG_BYTES
    log_chunks_per_s: int = 500
    # The shortest metering interval a center may bill, but for a run's last.
    min_metering_interval_s: int = MIN_INTERVAL_S
    # The coordinator's policy and the network (latency, bandwidth) for every round: a
    # problem without pools or jobs, which each round fills in.
    round_template: Problem = field(default_factory=lambda: Problem(pools=(), jobs=()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    heartbeat_interval_ms: int
    center_expiry_ms: int
    stale_claim_ids: tuple[str, ...] = ()


class Broker:
    def __init__(
        self,
        store: Store,
        *,
        config: BrokerConfig | None = None,
        matcher: Matcher | None = None,
        metrics: Metrics | None = None,
        ledger: BrokerLedger | None = None,
        clock: Clock = SYSTEM,
        trust: Trust | None = None,
        on_revocations: Callable[[Revocations], None] | None = None,
    ) -> None:
        self.store = store
        # Who is a member (None: --insecure), and where a newer revocation list is kept.
        self.trust = trust
        self._on_revocations = on_revocations
        self.config = config or BrokerConfig()
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.jobs = JobBook(store, clock, self.config.max_log_bytes_per_job)
        self.centers = Centers(store, clock)
        self.claims = ClaimBook()
        self.local = LocalCenters(self.centers, self.claims, self.jobs, clock, self.config.lease_ms)
        self.rounds = Rounds(
            self.jobs,
            [self.local],
            {self.local.broker: self.local},
            matcher or GreedyMatcher(),
            self.metrics,
            clock,
            template=self.config.round_template,
            max_jobs_per_round=self.config.max_jobs_per_round,
        )
        self.rounds.on_round = self._on_round
        # The coordinator's figures and policy (NationalService). `region`: this broker's
        # hub, the home of the jobs submitted here that name no data region.
        self.region = ""
        self.national = NationalView(
            self.jobs, self.claims, self._sites, self._home_region, clock.now_ms
        )
        self.policy = PolicyBook(store, clock, self.config.round_template, self._use_policy)
        self.usage = UsageIntake(
            self.claims,
            store,
            clock,
            ledger,
            self.metrics,
            min_interval_s=self.config.min_metering_interval_s,
        )
        # The peer brokers, once this broker federates (None: it stands alone).
        self.peers: Peers | None = None
        self._forwards = asyncio.Lock()
        self._wake = asyncio.Event()
        self._center_regions: frozenset[str] | None = None
        self._known_regions: frozenset[str] = frozenset()
        self.metrics.observe(
            job_counts=self.jobs.counts,
            centers_connected=lambda: len(self.centers.live_sessions()),
            offers=lambda: sum(1 for s in self.centers.live_sessions() if s.offer is not None),
        )

    def federate(self, name: str, credentials: Credentials | None, expiry_ms: int) -> Peers:
        """Match against the peer brokers' summaries too and forward there; `name` is
        this broker's own (its certificate's). Followers resume for jobs already
        forwarded."""
        peers = Peers(
            name,
            self.jobs,
            self.clock,
            credentials,
            expiry_ms=expiry_ms,
            requeue=self._requeue,
            finish=self._finish,
            metrics=self.metrics,
        )
        self.peers = peers
        self.rounds.sources = [*self.rounds.sources, peers]
        self.rounds.routes[PEER_BROKERS] = peers
        resumed = peers.resume()
        if resumed:
            log.info("following %d jobs forwarded to peers", resumed)
        return peers

    def peers_changed(self) -> None:
        """A peer's summary changed: match again."""
        self._wake.set()

    async def accept_forward(
        self, home: str, job: Job, ref: PoolRef, explanation: str
    ) -> tuple[str, Job | None]:
        """A job forwarded by broker `home` to run at `ref` (a center of this broker):
        stored, then claimed. Returns ("", job) once claimed, or (why not, job or None).
        Idempotent by job id: a repeat answers from the job as it is; a job handed back
        (queued here again) is claimed anew."""
        # One at a time: a retry arriving while the first is committing must see it.
        async with self._forwards:
            return await self._accept_forward(home, job, ref, explanation)

    async def _accept_forward(
        self, home: str, job: Job, ref: PoolRef, explanation: str
    ) -> tuple[str, Job | None]:
        held = self.jobs.find(job.job_id)
        if held is not None:
            if held.home != home or held.tenant != job.tenant:
                raise FailedPrecondition(f"job id {job.job_id} is taken here by another job")
            if held.state != JobState.QUEUED:
                return "", held  # a repeat of a forward already taken
        why = self._room_for(job.spec, ref)
        if why:
            return why, held
        if held is None:
            if job.tenant in self.centers.descriptors:
                raise PermissionDenied(f"tenant {job.tenant!r} is the name of a center here")
            held = await self.jobs.adopt(
                Job(
                    job_id=job.job_id,
                    tenant=job.tenant,
                    spec=job.spec,
                    state=JobState.QUEUED,
                    submitted_at_ms=job.submitted_at_ms,
                    updated_at_ms=self.clock.now_ms(),
                    home=home,
                    reason=f"forwarded by {home}",
                ),
                f"forwarded by {home}",
            )
        if not await self.local.claim(held.job_id, ref, explanation):
            return f"{ref} cannot be claimed now", self.jobs.find(held.job_id)
        return "", self.jobs.find(held.job_id)

    def _room_for(self, spec: JobSpec, ref: PoolRef) -> str:
        """Why `ref` cannot take `spec` now by this broker's own view ("" if it can)."""
        for p in self.local.capacity(self.clock.now_ms(), include_full=True):
            if p.ref.center_id != ref.center_id or p.ref.pool_id != ref.pool_id:
                continue
            if spec.accelerator not in (ANY, p.pool.accelerator):
                return f"{ref} has {p.pool.accelerator}, not {spec.accelerator}"
            if not accepts_image(p.images, spec.image):
                return f"{ref} does not run image {spec.image!r}"
            if p.free < spec.devices:
                return f"{ref} has {p.free} devices free, the job needs {spec.devices}"
            return ""
        return f"{ref} has no live offer here"

    async def cancel_forwarded(self, home: str, job_id: JobId) -> Job:
        """Broker `home` cancels a job it forwarded here."""
        job = self.check_home(home, job_id)
        if job.state in TERMINAL:
            return job
        return await self.cancel(job.tenant, job_id)

    def check_home(self, home: str, job_id: JobId) -> Job:
        """The job, if broker `home` forwarded it here."""
        job = self.jobs.get(job_id)
        if job.home != home:
            raise PermissionDenied(f"job {job_id} was not forwarded by {home}")
        return job

    def load(self) -> None:
        """Read the store into memory. Centers holding active work get one expiry period
        (from now) to reconnect before their jobs are requeued."""
        # Loading makes objects that live as long as the broker: the collector would walk
        # them all, again and again, while they are made (the server then freezes them).
        collecting = gc.isenabled()
        gc.disable()
        try:
            snapshot = self.store.load()
            self.jobs.load(snapshot)
            self.centers.load(snapshot)
            self.claims.load(snapshot.claims)
            self._restore_starts()
            self.policy.load(snapshot)
        finally:
            if collecting:
                gc.enable()
        counts = self.jobs.counts
        log.info(
            "loaded %d jobs (%d queued, %d active) and %d centers from %s",
            len(self.jobs.jobs),
            counts[JobState.QUEUED],
            counts[JobState.CLAIMED] + counts[JobState.RUNNING],
            len(self.centers.descriptors),
            self.store.location,
        )
        self._wake.set()

    def _restore_starts(self) -> None:
        """A run going at a restart: its start was seen but is written only with its end
        (`_observe`), so it is taken again from the job, whose last change was its commit
        as running."""
        for job in self.jobs.page([JobState.RUNNING]):
            record = self.claims.record(job.claim_id)
            if record is not None and record.started_at_ms is None and record.ended_at_ms is None:
                self.claims.note(dataclasses.replace(record, started_at_ms=job.updated_at_ms))

    # ------------------------------------------------------------- user side

    def known_regions(self) -> frozenset[str]:
        """Regions this broker can place work in or reason about: its centers', its peer
        brokers' and its policy's (latency, quotas, incentives). Recomputed only when
        that set of regions changes."""
        centers = frozenset(c.region for c in self.centers.descriptors.values())
        if self.peers is not None:  # the peers' regions, and their centers' regions
            for summary in self.peers.views.values():
                centers |= {summary.region, *(p.region for p in summary.pools)}
        if centers != self._center_regions:
            t = self.rounds.template
            policy = set(t.latency_ms) | {b for row in t.latency_ms.values() for b in row}
            policy |= set(t.policy.quota_devices) | set(t.policy.incentive_regions)
            self._center_regions = centers
            self._known_regions = centers | policy
        return self._known_regions

    def check_spec(self, spec: JobSpec) -> None:
        """What a spec must satisfy here and now: a deadline ahead, regions known."""
        spec.validate_at(self.clock.now_ms())
        known = self.known_regions()
        if not known:
            return  # nothing known yet to check against
        for region in (*spec.allowed_regions, *([spec.data_region] if spec.data_region else [])):
            if region not in known:
                raise InvalidJobSpec(
                    f"region {region!r} is not known to this broker; known regions: "
                    + ", ".join(sorted(known))
                )

    async def submit(self, tenant: str, spec: JobSpec, request_id: str = "") -> Job:
        """Accept a job; returns once it is committed to the store."""
        if tenant in self.centers.descriptors:
            # Tenants and centers are parties of one ledger: one name, one party.
            raise PermissionDenied(f"tenant {tenant!r} is the name of a center")
        self.check_spec(spec)
        job = await self.jobs.accept(tenant, spec, request_id)
        self._wake.set()
        return job

    def get(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def list_jobs(self, states: Iterable[JobState] = (), limit: int = 0) -> list[Job]:
        return self.jobs.newest(states, limit)

    def count_jobs(self, states: Iterable[JobState] = (), tenant: str | None = None) -> int:
        return self.jobs.count(states, tenant)

    async def cancel(self, tenant: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.tenant != tenant:
            raise PermissionDenied(f"job {job_id} belongs to another tenant")
        if job.state in TERMINAL:
            raise FailedPrecondition(f"job {job_id} already {job.state}")
        claim_id = job.claim_id
        self.claims.pop(claim_id)
        session = self.centers.live(job.center_id) if job.center_id else None
        job = await self.jobs.transition(job, JobState.CANCELLED, "cancelled by the user")
        self._observe(claim_id, ended=True)
        if session is not None and claim_id:
            session.send(Cancel(claim_id=claim_id, job_id=job.job_id))
        if job.broker and self.peers is not None:
            self.peers.cancelled(job)
        return job

    def quote(self, spec: JobSpec) -> list[QuoteLine]:
        self.check_spec(spec)
        return self.rounds.quote(spec)

    def center_views(self) -> list[CenterStatus]:
        running: dict[CenterId, int] = {}
        for job in self.jobs.jobs.values():
            if job.state in ACTIVE and job.center_id:
                running[job.center_id] = running.get(job.center_id, 0) + 1
        return self.centers.views(running)

    def events_after(self, job_id: JobId, seq: int) -> list[JobEvent]:
        return self.jobs.events_after(job_id, seq)

    def logs_after(self, job_id: JobId, seq: int) -> list[LogChunk]:
        return self.jobs.logs_after(job_id, seq)

    def change_event(self, job_id: JobId) -> asyncio.Event:
        return self.jobs.change_event(job_id)

    @property
    def last_round(self) -> Round | None:
        return self.rounds.last

    def current_problem(self) -> Problem:
        return self.rounds.current_problem()

    # ------------------------------------------------------- the coordinator

    def _use_policy(self, template: Problem) -> None:
        """A policy in force from the next round on."""
        self.rounds.template = template
        self._center_regions = None  # the known regions include the policy's
        self._wake.set()

    def _on_round(self, solved: Round) -> None:
        self.national.note_round(solved)

    def _sites(self, at_ms: int) -> list[Site]:
        sites = local_sites(self.centers, at_ms)
        if self.peers is not None:
            sites += peer_sites(self.peers, at_ms)
        return sites

    def _home_region(self, job: Job) -> str:
        """The hub a job was submitted in: its data's, else its home broker's, else
        this broker's."""
        if job.spec.data_region:
            return job.spec.data_region
        if job.home and self.peers is not None:
            summary = self.peers.views.get(job.home)
            if summary is not None:
                return summary.region
        return self.region

    # ------------------------------------------------------------ agent side

    async def connect(
        self,
        center: CenterDescriptor,
        held: Iterable[HeldClaim],
        usage_key: str = "",
        *,
        member: Member | None = None,
        certificate: str = "",
    ) -> tuple[Session, Welcome]:
        """Register a (re)connecting agent and reconcile the claims it holds. While the
        center's current stream is alive (heard from within two heartbeats), another is
        refused: two agents started as one center would otherwise take the stream from
        each other several times a second."""
        live = self.centers.live(center.center_id)
        if live is not None:
            silent_ms = self.clock.now_ms() - self.centers.last_seen_ms.get(center.center_id, 0)
            if silent_ms < 2 * self.config.heartbeat_interval_ms:
                raise FailedPrecondition(
                    f"center {center.center_id} is already connected on another stream "
                    f"(heard from {silent_ms} ms ago): is another agent running as "
                    f"{center.center_id}?"
                )
        if center.center_id not in self.centers.descriptors and self.jobs.has_tenant(
            center.center_id
        ):
            raise PermissionDenied(f"center id {center.center_id!r} is the name of a tenant")
        await self.usage.admit_center_key(center.center_id, usage_key, certificate)
        session = await self.centers.connect(center)
        session.member = member
        session.log_budget = TokenBucket(
            rate_per_s=self.config.log_chunks_per_s,
            burst=2 * self.config.log_chunks_per_s,
            now_ms=self.clock.now_ms(),
        )
        try:
            stale = await self._reconcile(session, list(held))
        except BaseException:  # the agent gone mid-Hello: no session left without a stream
            self.centers.disconnect(session)
            raise
        welcome = Welcome(
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            center_expiry_ms=self.config.center_expiry_ms,
            stale_claim_ids=tuple(stale),
        )
        return session, welcome

    async def _reconcile(self, session: Session, held: list[HeldClaim]) -> list[str]:
        center_id = session.center_id
        stale: list[str] = []
        held_claims = set()
        for h in held:
            held_claims.add(h.claim_id)
            job = self.jobs.find(h.job_id)
            if job is None or job.claim_id != h.claim_id or job.center_id != center_id:
                stale.append(h.claim_id)
                continue
            if job.state in TERMINAL:
                if h.state in ACTIVE:
                    stale.append(h.claim_id)
                continue
            if h.state in TERMINAL:
                await self._finish(job, h.state, h.exit_code, "reported on reconnect")
            elif h.state == JobState.RUNNING and job.state == JobState.CLAIMED:
                await self.jobs.transition(job, JobState.RUNNING, "running (reported on reconnect)")
                self._observe(job.claim_id, started=True)
            elif h.state == JobState.CLAIMED and job.state == JobState.CLAIMED:
                self.claims.pop(h.claim_id)
                session.send(Launch(claim_id=ClaimId(h.claim_id), job=job))
        for job in list(self.jobs.jobs.values()):
            orphan = job.claim_id not in held_claims and job.claim_id not in self.claims
            if job.center_id == center_id and job.state in ACTIVE and orphan:
                await self._requeue(job, f"center {center_id} no longer holds the job")
        return stale

    def disconnect(self, session: Session) -> None:
        self.centers.disconnect(session)

    def heartbeat(self, session: Session) -> None:
        self.centers.heard_from(session)

    def on_offer(self, session: Session, offer: Offer) -> None:
        if self.centers.on_offer(session, offer):
            self._wake.set()

    async def on_claim_reply(self, session: Session, reply: ClaimReply) -> None:
        self.centers.heard_from(session)
        self._check_holder(session, reply.claim_id, "claim_reply")
        claim = self.claims.pop(reply.claim_id)
        job = self.jobs.find(claim.job_id) if claim else None
        if claim is None and self._answered(reply.claim_id):
            log.debug("claim %s answered again by %s: ignored", reply.claim_id, session.center_id)
            return
        if claim is None or job is None or job.claim_id != reply.claim_id:
            if reply.accepted:  # lapsed or cancelled meanwhile: release it at the center
                session.send(Cancel(claim_id=reply.claim_id, reason="lapsed"))
            return
        if not reply.accepted:
            self.metrics.claim_refusals.inc()
            log.info(
                "claim %s for job %s refused by %s: %s",
                reply.claim_id,
                job.job_id,
                session.center_id,
                reply.reason,
            )
            await self._requeue(
                job, f"claim refused by {claim.pool.center_id}: {reply.reason}", lost=False
            )
            return
        job = await self.jobs.amend(
            job, device_indices=reply.device_indices, attempts=job.attempts + 1
        )
        session.send(Launch(claim_id=claim.claim_id, job=job))

    def _answered(self, claim_id: str) -> bool:
        """The claim was answered already and its job still holds it: a repeated (or
        replayed) answer, which must change nothing."""
        record = self.claims.record(claim_id)
        job = self.jobs.find(record.job_id) if record is not None else None
        return job is not None and job.claim_id == claim_id and job.state in ACTIVE

    async def on_job_update(self, session: Session, update: JobUpdate) -> None:
        self.centers.heard_from(session)
        self._check_holder(session, update.claim_id, "job_update")
        job = self.jobs.find(update.job_id)
        state = update.state
        if job is None or job.claim_id != update.claim_id or job.state in TERMINAL:
            if state in ACTIVE:  # the broker gave this work away: stop it there
                session.send(
                    Cancel(
                        claim_id=update.claim_id,
                        job_id=update.job_id,
                        reason="claim no longer valid",
                    )
                )
            return
        if state == JobState.QUEUED:
            await self._requeue(job, f"center {session.center_id} gave it back: {update.message}")
        elif state == JobState.RUNNING:
            if job.state == JobState.CLAIMED:
                await self.jobs.transition(job, JobState.RUNNING, update.message or "started")
                self._observe(job.claim_id, started=True)
        elif state in TERMINAL:
            await self._finish(job, state, update.exit_code, update.message)

    async def on_usage(self, session: Session, entry: bytes) -> UsageAck:
        self.centers.heard_from(session)
        ack = await self.usage.receive(session.center_id, entry)
        if ack.accepted:
            self.national.note_usage([SignedRecord.from_entry(entry).record])
        return ack

    def on_log(self, session: Session, chunk: LogChunk) -> None:
        job = self.jobs.find(chunk.job_id)
        if job is None or job.center_id != session.center_id or job.state in TERMINAL:
            return  # not this center's live job (a job's output precedes its end)
        if not session.log_budget.take(self.clock.now_ms()):
            self.metrics.log_chunks_dropped.labels(reason="rate").inc()
            return
        if not self.jobs.append_log(chunk):
            self.metrics.log_chunks_dropped.labels(reason="cap").inc()

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
        """One round; returns the claims sent."""
        self.national.sample_queue()
        return await self.rounds.run()

    async def run_expiry(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_interval_s)
            try:
                await self.expire()
            except Exception:
                log.exception("expiry pass failed")

    async def take_revocations(self, data: bytes, by: str) -> Revocations:
        """A newer signed revocation list: kept, its centers' usage keys revoked in the
        ledger, their streams ended at the next expiry pass."""
        if self.trust is None:
            raise FailedPrecondition("this broker runs --insecure: it has no members to revoke")
        taken = self.trust.update(data)
        if self._on_revocations is not None:
            self._on_revocations(taken)
        log.info(
            "revocation list %d taken from %s: %d revoked", taken.number, by, len(taken.serials)
        )
        for session in list(self.centers.sessions.values()):
            m = session.member
            if m is not None and m.usage_key and taken.revoked(m.chain_serials):
                await self.usage.revoke_center_key(
                    session.center_id,
                    m.usage_key,
                    f"certificate {m.serial:x} revoked (revocation list {taken.number})",
                )
        self.check_members()
        return taken

    def check_members(self) -> None:
        """End the stream of every center whose certificate has expired or been revoked."""
        if self.trust is None:
            return
        now = self.trust.now()
        for session in list(self.centers.sessions.values()):
            if session.member is None or not session.connected:
                continue
            try:
                self.trust.check(session.member, now)
            except Unauthenticated as exc:
                log.warning("center %s: %s: ending its stream", session.center_id, exc)
                session.send(Close(refusal=str(exc)))
                session.member = None

    async def expire(self) -> None:
        """Lapse unanswered claims and take silent centers out, requeueing their work."""
        self.check_members()
        for claim in self.claims.lapsed(self.clock.now_ms()):
            job = self.jobs.find(claim.job_id)
            if job is not None and job.claim_id == claim.claim_id and job.state in ACTIVE:
                await self._requeue(job, f"claim {claim.claim_id} lapsed unanswered", lost=False)
            session = self.centers.live(claim.pool.center_id)
            if session is not None:
                session.send(Cancel(claim_id=claim.claim_id, reason="lapsed"))
        silent = self.centers.expire(self.config.center_expiry_ms)
        if not silent:
            return
        for job in list(self.jobs.page(ACTIVE)):  # the active jobs only, not every job
            if job.center_id in silent and not job.broker:
                await self._requeue(job, f"center {job.center_id} lost (silent past expiry)")

    # ----------------------------------------------------------- transitions

    def _check_holder(self, session: Session, claim_id: str, what: str) -> None:
        """Only the center that holds a claim may speak of it (claim ids are not secret:
        they appear in events)."""
        record = self.claims.record(claim_id)
        if record is not None and record.pool.center_id != session.center_id:
            self.metrics.refused.labels(kind=what).inc()
            raise PermissionDenied(f"center {session.center_id} does not hold claim {claim_id}")

    def _observe(self, claim_id: str | None, *, started: bool = False, ended: bool = False) -> None:
        """Note when the broker saw a claim's run start or end (the first time only)."""
        record = self.claims.record(claim_id)
        if record is None:
            return
        at = self.clock.now_ms()
        changes: dict[str, int] = {}
        if started and record.started_at_ms is None:
            changes["started_at_ms"] = at
        if ended and record.ended_at_ms is None:
            changes["ended_at_ms"] = at
        if changes:
            updated = self.claims.note(dataclasses.replace(record, **changes))  # type: ignore[arg-type]
            # The start is kept in memory and written with the end: what the usage checks
            # need on disk is the claim (written when made) and its end.
            if updated.ended_at_ms is not None:
                self.store.put_claim(updated).add_done_callback(_log_failure)

    async def _requeue(self, job: Job, reason: str, *, lost: bool = True) -> None:
        self._observe(job.claim_id, ended=True)
        self.claims.pop(job.claim_id)
        if lost and job.attempts >= self.config.max_attempts:
            await self.jobs.transition(
                job, JobState.FAILED, f"{reason}; gave up after {job.attempts} attempts"
            )
            return
        self.metrics.requeues.inc()
        await self.jobs.transition(
            job,
            JobState.QUEUED,
            f"requeued: {reason}",
            center_id=None,
            pool_id=None,
            claim_id=None,
            device_indices=(),
            broker="",
        )
        self._wake.set()

    async def _finish(self, job: Job, state: JobState, exit_code: int | None, message: str) -> None:
        self._observe(job.claim_id, started=state != JobState.CANCELLED, ended=True)
        self.claims.pop(job.claim_id)
        if job.state == JobState.CLAIMED and state != JobState.CANCELLED:
            # It ran while the broker did not hear of the start (a restart in between).
            job = await self.jobs.transition(job, JobState.RUNNING, "started (reported late)")
        await self.jobs.transition(job, state, message or str(state), exit_code=exit_code)
        self._wake.set()


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("store write failed: %s", fut.exception())
