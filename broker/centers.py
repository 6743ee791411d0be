"""The centers: their descriptors, the connected agents' sessions, their offers, and when
each was last heard from (one value, on the session's center record).

A session's outbox holds what the broker tells the center, as domain values; the agent
link (broker.agent_link) is the only place that turns them into stream messages.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from broker.store import Snapshot, Store
from core.clock import Clock
from core.errors import InvalidArgument, PermissionDenied
from core.states import JobState
from core.types import CenterDescriptor, CenterId, ClaimId, Job, JobId, Offer, PoolId
from core.views import CenterStatus
from identity import Member

log = logging.getLogger("icx.broker")


# What the broker tells a center (each becomes one stream message).


@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve:
    claim_id: ClaimId
    job_id: JobId
    pool_id: PoolId
    devices: int
    lease_expires_at_ms: int
    image: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    claim_id: ClaimId
    job: Job


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    claim_id: str
    job_id: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageAck:
    record_id: str
    accepted: bool = False
    index: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatEcho:
    sent_at_ms: int


@dataclass(frozen=True, slots=True)
class Close:
    """Ends the session's stream (a newer stream replaced it, or it was taken out); with
    a refusal, because the center is no longer a member (revoked, expired)."""

    refusal: str = ""


Command = Reserve | Launch | Cancel | UsageAck | HeartbeatEcho | Close


# What a center tells the broker about its claims and jobs.


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldClaim:
    """A claim the agent holds when it (re)connects, with its job's state there."""

    claim_id: str
    job_id: str
    state: JobState
    exit_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimReply:
    claim_id: str
    accepted: bool
    reason: str = ""
    device_indices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdate:
    claim_id: str
    job_id: str
    state: JobState
    exit_code: int | None = None
    message: str = ""


class TokenBucket:
    """At most `rate_per_s` a second on average, `burst` at once."""

    def __init__(self, *, rate_per_s: int, burst: int, now_ms: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at_ms = now_ms

    def take(self, now_ms: int) -> bool:
        elapsed = max(0, now_ms - self._at_ms)
        self._at_ms = max(self._at_ms, now_ms)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s / 1000)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(slots=True, kw_only=True)
class Session:
    """A connected node agent."""

    center: CenterDescriptor
    outbox: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)
    connected: bool = True
    offer: Offer | None = None
    # The center's verified membership (None under --insecure).
    member: Member | None = None
    log_budget: TokenBucket = field(
        default_factory=lambda: TokenBucket(rate_per_s=500, burst=1000, now_ms=0)
    )

    @property
    def center_id(self) -> CenterId:
        return self.center.center_id

    def send(self, command: Command) -> None:
        self.outbox.put_nowait(command)


class Centers:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.descriptors: dict[CenterId, CenterDescriptor] = {}
        self.sessions: dict[CenterId, Session] = {}
        self.last_seen_ms: dict[CenterId, int] = {}

    def load(self, snapshot: Snapshot) -> None:
        """Centers known from the store get one expiry period from now to come back."""
        start = self.clock.now_ms()
        for stored in snapshot.centers:
            self.descriptors[stored.center.center_id] = stored.center
            self.last_seen_ms[stored.center.center_id] = start

    def grant_grace(self) -> None:
        """Every known center not heard from since the broker started gets one expiry
        period from now: called once the broker serves, so that a slow start does not eat
        into the time its centers have to come back."""
        start = self.clock.now_ms()
        for center_id in self.descriptors:
            if self.live(center_id) is None:
                self.last_seen_ms[center_id] = start

    async def connect(self, center: CenterDescriptor) -> Session:
        """A (re)connecting agent's session, its descriptor committed; an older stream of
        the same center is closed."""
        old = self.sessions.get(center.center_id)
        if old is not None and old.connected:
            log.warning("center %s reconnected; closing its previous stream", center.center_id)
            old.connected = False
            old.send(Close())
        at = self.clock.now_ms()
        session = Session(center=center)
        self.sessions[center.center_id] = session
        self.last_seen_ms[center.center_id] = at
        first = center.center_id not in self.descriptors
        self.descriptors[center.center_id] = center
        await self.store.upsert_center(center, at)
        log.info(
            "center %s %s region=%s pools=%s",
            center.center_id,
            "joined" if first else "reconnected",
            center.region,
            ",".join(f"{p.pool_id}x{p.devices_total}" for p in center.pools),
        )
        return session

    def disconnect(self, session: Session) -> None:
        if self.sessions.get(session.center_id) is session and session.connected:
            session.connected = False
            log.info("center %s disconnected", session.center_id)

    def heard_from(self, session: Session) -> None:
        self.last_seen_ms[session.center_id] = self.clock.now_ms()

    def on_offer(self, session: Session, offer: Offer) -> bool:
        """Takes a newer offer of the session's own center; True if it replaced the last."""
        self.heard_from(session)
        if offer.center_id != session.center_id:
            raise PermissionDenied(
                f"center {session.center_id} cannot advertise for {offer.center_id}"
            )
        known = {p.pool_id for p in session.center.pools}
        for pool in offer.pools:
            if pool.pool_id not in known:
                raise InvalidArgument(
                    f"offer names pool {pool.pool_id!r}, not in center "
                    f"{session.center_id}'s descriptor"
                )
        if session.offer is not None and offer.seq <= session.offer.seq:
            log.debug("stale offer from %s seq %d", offer.center_id, offer.seq)
            return False
        session.offer = offer
        return True

    def live(self, center_id: CenterId) -> Session | None:
        session = self.sessions.get(center_id)
        return session if session is not None and session.connected else None

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.connected]

    def expire(self, expiry_ms: int) -> set[CenterId]:
        """Centers silent for `expiry_ms`: their sessions leave matching. Returns every
        silent center, connected or not, so that work still held there is requeued."""
        at = self.clock.now_ms()
        silent = {c for c, seen in self.last_seen_ms.items() if seen + expiry_ms <= at}
        for center_id in silent:
            session = self.live(center_id)
            if session is not None:
                log.warning(
                    "center %s silent for %d ms: out of matching",
                    center_id,
                    at - self.last_seen_ms[center_id],
                )
                session.connected = False
                session.send(Close())
        return silent

    def views(self, running: dict[CenterId, int]) -> list[CenterStatus]:
        return [
            CenterStatus(
                center=center,
                offer=session.offer if (session := self.sessions.get(center_id)) else None,
                connected=bool(session and session.connected),
                last_seen_ms=self.last_seen_ms.get(center_id, 0),
                jobs_running=running.get(center_id, 0),
            )
            for center_id, center in sorted(self.descriptors.items())
        ]
