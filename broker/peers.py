"""Peer brokers: their gossiped offer summaries as a capacity source, and a job forwarded
to the broker that owns the chosen center as a claim route.

A summary is a hint (invariant 1 across brokers): the round believes a peer's summary,
minus what this broker forwarded there since the peer signed it, and no longer than the
summary expiry. The owning broker decides each forward by its own view and its agent
decides the claim, so a stale summary ends in a refusal and a re-match here, never a
double booking.

A forwarded job lives at both ends. Here it is CLAIMED with `broker` naming the owner
the moment the round chooses it (committed before the forward is sent); there it is
stored with `home` naming this broker before the owner answers. One follower task per
active forwarded job sends the forward (idempotent by job id, so it is simply repeated
after a lost reply or a restart of either side), then follows the job there, mirroring
its state and output here, until it ends or is handed back (the owner's copy went back
to queued: refused by the agent, its center lost), when it is matched again here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace

import grpc

from broker.capacity import PoolCapacity
from broker.centers import Centers
from broker.jobs import ACTIVE, JobBook
from broker.metrics import Metrics
from core import wire
from core.clock import Clock
from core.errors import InvalidArgument
from core.states import TERMINAL, JobState
from core.types import CenterId, Job, JobId, Pool, PoolId, PoolRef
from icx.v1 import federation_pb2, federation_pb2_grpc
from identity import Credentials
from identity.certs import broker_host
from identity.tls import aio_channel

log = logging.getLogger("icx.broker.peers")

# The summary payload's format (its "v" field); a summary of another is dropped.
SUMMARY_FORMAT = 1

# How long a forward may take to be answered (the owner commits, then claims).
FORWARD_TIMEOUT_S = 5.0

# Re-sending a forward or re-following a job after a failure: from min to max, doubling.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0

# After a restart, cancels of forwarded jobs this recent are relayed again.
RELAY_CANCELS_WITHIN_MS = 3_600_000

CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSummary:
    """One peer broker's offer, as its latest summary states it."""

    broker: str
    region: str
    address: str  # its gRPC address, where forwards go
    issued_at_ms: int
    version: int
    pools: tuple[PoolCapacity, ...]
    heard_at_ms: int = 0  # by this broker's clock
    # Where its centers are (summaries from brokers before places were sent have none).
    places: Mapping[str, Place] = field(default_factory=dict)

    def age_ms(self, at_ms: int) -> int:
        """How old the summary is: since its broker signed it, or since it was heard if
        that is longer ago (a broker whose clock runs ahead cannot stay believed)."""
        return max(at_ms - self.issued_at_ms, at_ms - self.heard_at_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    """A center's name and coordinates, as its broker's summary states them."""

    name: str
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= MAX_PLACE_NAME:
            raise ValueError(f"center name must be 1..{MAX_PLACE_NAME} characters")
        if not (math.isfinite(self.latitude) and -90 <= self.latitude <= 90):
            raise ValueError(f"latitude must be -90..90, got {self.latitude}")
        if not (math.isfinite(self.longitude) and -180 <= self.longitude <= 180):
            raise ValueError(f"longitude must be -180..180, got {self.longitude}")


MAX_PLACE_NAME = 200


def places_of(centers: Centers) -> dict[str, Place]:
    """This broker's centers' places, from their descriptors."""
    return {
        str(cid): Place(name=c.name or str(cid), latitude=c.latitude, longitude=c.longitude)
        for cid, c in centers.descriptors.items()
    }


def summary_payload(
    region: str,
    address: str,
    pools: Iterable[PoolCapacity],
    places: Mapping[str, Place] | None = None,
) -> bytes:
    """This broker's summary: its centers' pools (full ones included, so that peers see
    the whole federation), sorted, as canonical JSON: equal offers give equal bytes.
    `places` adds the name and coordinates of each center with a pool in it (under
    "centers", which brokers that predate it ignore)."""
    rows = sorted(
        (
            {
                "center": p.ref.center_id,
                "pool": p.pool.pool_id,
                "region": p.region,
                "accelerator": p.pool.accelerator,
                "total": p.pool.devices_total,
                "free": p.free,
                "memory_gb": p.pool.memory_gb,
                "tflops": p.pool.fp16_tflops,
                "power_w": p.pool.power_w,
                "price": p.pool.price_minor_per_device_hour,
                "pue_milli": p.pue_milli,
                "grid": p.grid_g_co2_per_kwh,
                "images": list(p.images),
            }
            for p in pools
        ),
        key=lambda r: (r["center"], r["pool"]),
    )
    body: dict[str, object] = {
        "v": SUMMARY_FORMAT,
        "region": region,
        "address": address,
        "pools": rows,
    }
    named = {r["center"] for r in rows}
    if places:
        body["centers"] = {
            c: {"name": p.name, "lat": p.latitude, "lon": p.longitude}
            for c, p in places.items()
            if c in named
        }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_summary(broker: str, version: int, issued_at_ms: int, payload: bytes) -> PeerSummary:
    """A peer's summary from its payload; InvalidArgument names what is wrong."""
    try:
        body = json.loads(payload)
        if body.get("v") != SUMMARY_FORMAT:
            raise InvalidArgument(f"summary format {body.get('v')!r}, not {SUMMARY_FORMAT}")
        pools = tuple(
            PoolCapacity(
                ref=PoolRef(
                    broker=broker, center_id=CenterId(r["center"]), pool_id=PoolId(r["pool"])
                ),
                region=str(r["region"]),
                pool=Pool(
                    pool_id=PoolId(r["pool"]),
                    accelerator=str(r["accelerator"]),
                    devices_total=int(r["total"]),
                    devices_free=int(r["free"]),
                    memory_gb=int(r["memory_gb"]),
                    fp16_tflops=int(r["tflops"]),
                    power_w=int(r["power_w"]),
                    price_minor_per_device_hour=int(r["price"]),
                ),
                free=max(0, int(r["free"])),
                pue_milli=int(r["pue_milli"]),
                grid_g_co2_per_kwh=int(r["grid"]),
                images=tuple(str(i) for i in r["images"]),
            )
            for r in body["pools"]
        )
        places = {
            str(c): Place(name=str(p["name"]), latitude=float(p["lat"]), longitude=float(p["lon"]))
            for c, p in body.get("centers", {}).items()
        }
        return PeerSummary(
            broker=broker,
            region=str(body["region"]),
            address=str(body["address"]),
            issued_at_ms=issued_at_ms,
            version=version,
            pools=pools,
            places=places,
        )
    except InvalidArgument:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"malformed summary from {broker}: {exc!r}") from None


@dataclass(slots=True)
class _Sent:
    """Devices forwarded to a pool, not yet in a summary of its broker."""

    at_ms: int
    devices: int


@dataclass(slots=True)
class _Following:
    task: asyncio.Task[None]
    failing: str = ""  # the last failure, logged once per outage


Requeue = Callable[..., Awaitable[None]]  # (job, reason, *, lost)
Finish = Callable[[Job, JobState, "int | None", str], Awaitable[None]]


class Peers:
    """Every peer broker: a CapacitySource over their summaries and the ClaimRoute that
    forwards to them. `requeue(job, reason, lost)` and `finish(job, state, exit_code,
    message)` are the broker's own transitions, so that a job handed back or ended there
    goes through the same paths as a local one."""

    def __init__(
        self,
        name: str,
        jobs: JobBook,
        clock: Clock,
        credentials: Credentials | None,
        *,
        expiry_ms: int,
        requeue: Requeue,
        finish: Finish,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.jobs = jobs
        self.clock = clock
        self.credentials = credentials
        self.expiry_ms = expiry_ms
        self._requeue = requeue
        self._finish = finish
        self.views: dict[str, PeerSummary] = {}
        self._sent: dict[PoolRef, list[_Sent]] = {}
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._following: dict[JobId, _Following] = {}
        self.metrics = metrics or Metrics()
        self.metrics.peer_brokers.labels(live="yes").set_function(lambda: self._count(True))
        self.metrics.peer_brokers.labels(live="no").set_function(lambda: self._count(False))
        self._silent: set[str] = set()  # peers whose summary expired (logged once)
        self._closing = False
        # Brokers caught equivocating (broker.witnessing): never matched nor forwarded to.
        self.distrusted: dict[str, str] = {}
        # Called with a forwarded job and a broker it ran at, once it is done there (its
        # usage there is collected).
        self.on_ended: Callable[[Job, str], None] | None = None

    # ------------------------------------------------------------ summaries

    def update(self, broker: str, version: int, issued_at_ms: int, payload: bytes) -> bool:
        """A newer summary of `broker` (checked and ordered by the peering host); False
        (logged) if its payload is malformed."""
        if broker == self.name:
            return False
        try:
            summary = parse_summary(broker, version, issued_at_ms, payload)
        except InvalidArgument as exc:
            log.warning("peer %s: summary %d dropped: %s", broker, version, exc)
            return False
        summary = replace(summary, heard_at_ms=self.clock.now_ms())
        old = self.views.get(broker)
        self.views[broker] = summary
        if broker in self._silent:
            self._silent.discard(broker)
            log.info("peer %s: heard from again (summary %d)", broker, version)
        if old is None:
            log.info(
                "peer %s (%s) at %s: %d pools", broker, summary.region, summary.address,
                len(summary.pools),
            )  # fmt: skip
        return True

    def _count(self, live: bool) -> int:
        at = self.clock.now_ms()
        return sum(1 for s in self.views.values() if self.live(s, at) == live)

    def live(self, summary: PeerSummary, at_ms: int) -> bool:
        return summary.age_ms(at_ms) < self.expiry_ms and summary.broker not in self.distrusted

    def distrust(self, broker: str, reason: str) -> None:
        """Match nothing at `broker` and forward nothing there from now on."""
        self.distrusted[broker] = reason

    def capacity(self, at_ms: int, *, include_full: bool = False) -> Iterable[PoolCapacity]:
        for summary in list(self.views.values()):
            if summary.broker in self.distrusted:
                continue
            if not self.live(summary, at_ms):
                if summary.broker not in self._silent:
                    self._silent.add(summary.broker)
                    log.warning(
                        "peer %s: its summary is %.1f s old: its centers leave matching",
                        summary.broker,
                        summary.age_ms(at_ms) / 1000,
                    )
                continue
            for p in summary.pools:
                free = max(0, p.free - self._since(p.ref, summary.issued_at_ms, at_ms))
                if free == 0 and not include_full:
                    continue
                yield p if free == p.free else replace(p, free=free)

    def _since(self, ref: PoolRef, issued_at_ms: int, at_ms: int) -> int:
        """Devices forwarded to `ref` after its summary was signed (older ones pruned)."""
        sent = self._sent.get(ref)
        if not sent:
            return 0
        sent[:] = [s for s in sent if at_ms - s.at_ms < self.expiry_ms]
        return sum(s.devices for s in sent if s.at_ms >= issued_at_ms)

    # ------------------------------------------------------------ forwarding

    async def claim(self, job_id: JobId, ref: PoolRef, explanation: str) -> bool:
        job = self.jobs.find(job_id)
        summary = self.views.get(ref.broker)
        if job is None or job.state != JobState.QUEUED or summary is None:
            return False
        if ref.broker in self.distrusted:
            return False
        at = self.clock.now_ms()
        self._sent.setdefault(ref, []).append(_Sent(at_ms=at, devices=job.spec.devices))
        job = await self.jobs.transition(
            job,
            JobState.CLAIMED,
            f"forwarded to {ref.broker} for {ref.center_id}/{ref.pool_id}",
            broker=ref.broker,
            center_id=ref.center_id,
            pool_id=ref.pool_id,
            claim_id=None,
            device_indices=(),
            explanation=explanation,
        )
        self.follow(job)
        return True

    def follow(self, job: Job) -> None:
        """Start the follower of an active forwarded job (once)."""
        if job.job_id in self._following or not job.broker:
            return
        self._start(job.job_id, self._follow(job.job_id))

    def resume(self) -> int:
        """Followers for every active forwarded job (after a restart), and the cancel
        relayed again for those cancelled lately (the relay may not have been answered
        before the restart; a repeat is harmless); how many active."""
        active = [j for j in self.jobs.jobs.values() if j.broker and j.state in ACTIVE]
        for job in active:
            self.follow(job)
        since = self.clock.now_ms() - RELAY_CANCELS_WITHIN_MS
        for job in self.jobs.jobs.values():
            if job.broker and job.state == JobState.CANCELLED and job.updated_at_ms >= since:
                self._start(job.job_id, self._relay_cancel(job))
        return len(active)

    def cancelled(self, job: Job) -> None:
        """The user cancelled a forwarded job here: relay the cancel to its broker (the
        follower, if any, stops first)."""
        following = self._following.get(job.job_id)
        if following is None:
            self._start(job.job_id, self._relay_cancel(job))
            return
        following.task.cancel()
        following.task.add_done_callback(
            lambda _: None if self._closing else self._start(job.job_id, self._relay_cancel(job))
        )

    def _ended(self, job_id: JobId, owner: str) -> None:
        """The job is done at `owner` (ended, handed back, cancelled): its usage there
        is collected."""
        job = self.jobs.find(job_id)
        if job is not None and self.on_ended is not None:
            self.on_ended(job, owner)

    def _start(self, job_id: JobId, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work, name=f"peer-{job_id}")
        self._following[job_id] = _Following(task=task)

        def done(_: object) -> None:
            following = self._following.get(job_id)
            if following is not None and following.task is task:
                del self._following[job_id]

        task.add_done_callback(done)

    def counts(self) -> tuple[int, int]:
        """Active jobs forwarded out (to peers) and in (from peers)."""
        out = sum(1 for j in self.jobs.jobs.values() if j.broker and j.state in ACTIVE)
        into = sum(1 for j in self.jobs.jobs.values() if j.home and j.state in ACTIVE)
        return out, into

    async def close(self) -> None:
        self._closing = True  # no relay starts from a follower cancelled here
        for following in list(self._following.values()):
            following.task.cancel()
        for following in list(self._following.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await following.task
        for chan in self._channels.values():
            await chan.close()
        self._channels.clear()

    def channel(self, broker: str) -> grpc.aio.Channel | None:
        """A channel to `broker`'s gRPC address (by its latest summary), as this broker."""
        summary = self.views.get(broker)
        if summary is None:
            return None
        key = (broker, summary.address)
        chan = self._channels.get(key)
        if chan is None:
            options: tuple[tuple[str, str | int], ...] = CHANNEL_OPTIONS
            own = broker_host(broker)
            if own is not None:
                # TLS checks the server's certificate against the broker's own name, not
                # the address's: a member advertising another member's address is refused.
                options = (*options, ("grpc.ssl_target_name_override", own))
            chan = aio_channel(summary.address, self.credentials, options)
            self._channels[key] = chan
        return chan

    def _stub(self, broker: str) -> federation_pb2_grpc.FederationServiceStub | None:
        chan = self.channel(broker)
        return None if chan is None else federation_pb2_grpc.FederationServiceStub(chan)

    async def _follow(self, job_id: JobId) -> None:
        delay = RETRY_MIN_S
        forwarded = False
        # Whether any forward so far may have reached the owner: until one may have, a
        # refusal is final and an owner gone for good can be given up on.
        maybe_delivered = False
        while True:
            job = self.jobs.find(job_id)
            if job is None or not job.broker or job.state not in ACTIVE:
                return
            peer = job.broker
            stub = self._stub(peer)
            try:
                if stub is None:
                    raise _Unreachable(f"no summary of {peer} yet")
                if not forwarded and job.state == JobState.CLAIMED:
                    reply = await stub.ForwardJob(
                        federation_pb2.ForwardJobRequest(
                            job=wire.job_to_proto(job),
                            center_id=job.center_id or "",
                            pool_id=job.pool_id or "",
                            explanation=job.explanation,
                        ),
                        timeout=FORWARD_TIMEOUT_S,
                    )
                    if not reply.accepted:
                        self.metrics.forwards.labels(outcome="refused").inc()
                        if (j := self._release(job_id)) is not None:
                            why = f"{peer} refused the forward: {reply.reason}"
                            await self._requeue(j, why, lost=False)
                        return
                    log.info("job %s accepted by %s", job_id, peer)
                    self.metrics.forwards.labels(outcome="accepted").inc()
                forwarded = maybe_delivered = True
                if await self._mirror(stub, job_id, peer):
                    return
            except (grpc.aio.AioRpcError, _Unreachable) as exc:
                what = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                never_sent = isinstance(exc, _Unreachable) or _not_sent(exc)
                if not forwarded and not maybe_delivered and _never(exc):
                    # The peer will never take it, and no earlier forward reached it.
                    self.metrics.forwards.labels(outcome="refused").inc()
                    if (j := self._release(job_id)) is not None:
                        await self._requeue(j, f"{peer} refused: {what}", lost=False)
                    return
                maybe_delivered = maybe_delivered or not never_sent
                if not maybe_delivered and not self._believed(peer):
                    # No forward ever left, and its broker is out of matching: match again.
                    self.metrics.forwards.labels(outcome="never_delivered").inc()
                    if (j := self._release(job_id)) is not None:
                        why = f"{peer} unreachable; the forward never reached it"
                        await self._requeue(j, why, lost=False)
                    return
                self._failing(job_id, peer, what)
            except Exception as exc:  # a store or a message error: logged, then retried
                self._failing(job_id, peer, repr(exc), unexpected=True)
            else:
                delay = RETRY_MIN_S
                continue
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(RETRY_MAX_S, delay * 2)

    def _failing(self, job_id: JobId, peer: str, what: str, *, unexpected: bool = False) -> None:
        """Log a follower's failure once per kind of failure, not every retry."""
        following = self._following.get(job_id)
        if following is not None and following.failing != what:
            following.failing = what
            if unexpected:
                log.exception("job %s at %s: %s; retrying", job_id, peer, what)
            else:
                log.warning("job %s at %s: %s; retrying", job_id, peer, what)

    def _believed(self, peer: str) -> bool:
        summary = self.views.get(peer)
        return summary is not None and self.live(summary, self.clock.now_ms())

    def _release(self, job_id: JobId) -> Job | None:
        """Before the follower's last change to the job (requeue, end): it leaves
        `_following`, since a round may claim the job again while that change commits,
        and that claim must get a follower of its own. The job, if still active."""
        following = self._following.get(job_id)
        if following is not None and following.task is asyncio.current_task():
            del self._following[job_id]
        job = self.jobs.find(job_id)
        return job if job is not None and job.state in ACTIVE else None

    async def _mirror(
        self, stub: federation_pb2_grpc.FederationServiceStub, job_id: JobId, peer: str
    ) -> bool:
        """Follow the job at its broker until the stream ends; True once it is settled
        here (ended, or handed back and queued again). Output is kept as it comes, a
        start at once; an end (or a hand-back) only once the stream has ended, the owner
        having sent all of the job's output first."""
        stream = stub.FollowJob(
            federation_pb2.FollowJobRequest(job_id=job_id, after_log_seq=self.jobs.log_seq(job_id))
        )
        there: Job | None = None
        async for item in stream:
            if item.HasField("log"):
                chunk = wire.log_from_proto(item.log)
                if chunk.job_id != job_id:
                    raise InvalidArgument(f"{peer} sent output of job {chunk.job_id} for {job_id}")
                self.jobs.append_log(chunk)
            there = wire.job_from_proto(item.job)
            if there.job_id != job_id:
                raise InvalidArgument(f"{peer} sent job {there.job_id} for {job_id}")
            if there.state == JobState.RUNNING:
                await self._started(job_id, there)
        if there is None or there.state not in (JobState.QUEUED, *TERMINAL):
            return False  # the stream ended early: follow again
        await self._ended_there(job_id, there, peer)
        return True

    async def _started(self, job_id: JobId, there: Job) -> None:
        job = self.jobs.find(job_id)
        if job is not None and job.state == JobState.CLAIMED and job.broker:
            await self.jobs.transition(
                job,
                JobState.RUNNING,
                f"at {job.broker}: {there.reason}",
                device_indices=there.device_indices,
                attempts=job.attempts + 1,
            )

    async def _ended_there(self, job_id: JobId, there: Job, peer: str) -> None:
        """The owner ended the job, or handed it back (queued there again)."""
        job = self._release(job_id)
        if job is not None and there.state == JobState.QUEUED:
            self.metrics.forwards.labels(outcome="handed_back").inc()
            why = f"handed back by {peer}: {there.reason}"
            await self._requeue(job, why, lost=job.state == JobState.RUNNING)
        elif job is not None:
            await self._finish(job, there.state, there.exit_code, f"at {peer}: {there.reason}")
        self._ended(job_id, peer)  # what ran there, if anything, is billed there

    async def _relay_cancel(self, job: Job) -> None:
        delay = RETRY_MIN_S
        failing = ""
        while True:
            stub = self._stub(job.broker)
            try:
                if stub is None:
                    raise _Unreachable(f"no summary of {job.broker}")
                await stub.CancelForwarded(
                    federation_pb2.CancelForwardedRequest(job_id=job.job_id), timeout=5.0
                )
                log.info("job %s: cancel relayed to %s", job.job_id, job.broker)
                self._ended(job.job_id, job.broker)  # it may have run: collect its usage
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                    return  # never arrived there, or ended there already
                what = exc.details() or exc.code().name
            except _Unreachable as exc:
                what = str(exc)
            if what != failing:
                failing = what
                log.warning("job %s: relaying the cancel to %s: %s; retrying", job.job_id,
                            job.broker, what)  # fmt: skip
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(RETRY_MAX_S, delay * 2)


def _never(exc: Exception) -> bool:
    """A refusal that a repeat would meet again."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    )


def _not_sent(exc: Exception) -> bool:
    """gRPC failed the call before sending it: no connection to the peer could be made."""
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() == grpc.StatusCode.UNAVAILABLE
        and "failed to connect" in (exc.details() or "").lower()
    )


class _Unreachable(Exception):
    """The peer's address is not known (yet)."""
