"""What the broker answers that is not a job, spec, offer or center: views assembled
for a caller (a center's status, a quote line, a page of jobs, a dumped round).

Plain values like those in core.types; `core.wire` converts them to and from the
protocol. Money in integer minor units (core.money), time in Unix ms UTC.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidArgument
from core.types import CenterDescriptor, CenterId, Job, Offer, PoolId


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterStatus:
    """A center as the broker sees it: what it declared, its latest offer (None until it
    sent one: then free devices are unknown), whether its agent is connected now."""

    center: CenterDescriptor
    offer: Offer | None
    connected: bool
    last_seen_ms: int
    jobs_running: int

    def __post_init__(self) -> None:
        if self.jobs_running < 0:
            raise InvalidArgument(f"jobs_running must be >= 0, got {self.jobs_running}")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuoteLine:
    """One candidate pool for a job and what running there would cost. `feasible`: every
    hard constraint but capacity holds; `has_capacity`: the devices are free now;
    `reason` says why not, when not."""

    rank: int
    center_id: CenterId
    pool_id: PoolId
    region: str
    accelerator: str
    price_minor_per_device_hour: int
    charge_minor: int
    rtt_ms: int
    transfer_ms: int
    energy_wh: int
    carbon_g: int
    has_capacity: bool
    feasible: bool
    reason: str = ""

    @property
    def placeable_now(self) -> bool:
        return self.has_capacity and self.feasible


@dataclass(frozen=True, slots=True, kw_only=True)
class JobPage:
    """Jobs newest first, at most the limit asked for, and how many matched in all."""

    jobs: tuple[Job, ...]
    total: int

    def __post_init__(self) -> None:
        if self.total < len(self.jobs):
            raise InvalidArgument(
                f"total must be >= the {len(self.jobs)} jobs listed, got {self.total}"
            )

    @property
    def more(self) -> int:
        """Jobs that matched but are not on this page."""
        return self.total - len(self.jobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundDump:
    """A matching round as a replayable problem file (docs/matcher-problem.md) and the
    broker's solution to it. `number` 0: the queue as it is now, never solved (no
    solution)."""

    number: int
    at_ms: int
    problem_json: str
    solution_json: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoAmI:
    """Who a broker takes its caller to be, from the caller's verified certificate."""

    name: str
    role: str
    region: str = ""
    tenant: str = ""
    serial: str = ""
    issuer: str = ""
    not_after_ms: int = 0
    # False when the broker runs --insecure: the identity is only declared.
    authenticated: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    """A peer broker as this broker holds it: its latest gossiped summary's version and
    age, the centers and free devices it offers by that summary, and whether the summary
    is still believed (`live`: younger than the summary expiry); its witness
    (cosignature/v1) verifier key as its membership-signed checkpoint announcement gave it
    ("" until one was heard)."""

    broker: str
    region: str
    address: str
    version: int
    age_ms: int
    centers: int
    devices_free: int
    live: bool
    witness_key: str = ""

    def __post_init__(self) -> None:
        for name in ("version", "age_ms", "centers", "devices_free"):
            value = getattr(self, name)
            if value < 0:
                raise InvalidArgument(f"peer {self.broker}: {name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Federation:
    """A broker's view of its peering: its own name, region and libp2p address, each
    peer broker, the gossip counters since it started (envelopes published, newer ones
    received, pulls, failed pulls, dropped by reason) and the forwarded jobs active now
    (out: ours running at a peer; in: a peer's running here), and its own witness
    (cosignature/v1) verifier key. `broker` is "" when the broker does not peer (started
    without --peer-listen): then everything else is empty or zero but the region."""

    broker: str
    region: str = ""
    peer_address: str = ""
    peers: tuple[PeerView, ...] = ()
    published: int = 0
    received: int = 0
    pulls: int = 0
    pull_failures: int = 0
    # Reason -> envelopes dropped (docs/peering.md lists the reasons), sorted by reason.
    dropped: tuple[tuple[str, int], ...] = ()
    forwarded_out: int = 0
    forwarded_in: int = 0
    witness_key: str = ""

    def __post_init__(self) -> None:
        counters = ("published", "received", "pulls", "pull_failures")
        for name in (*counters, "forwarded_out", "forwarded_in"):
            value = getattr(self, name)
            if value < 0:
                raise InvalidArgument(f"{name} must be >= 0, got {value}")
        for reason, n in self.dropped:
            if n < 0:
                raise InvalidArgument(f"dropped[{reason}] must be >= 0, got {n}")

    @property
    def peering(self) -> bool:
        """Whether the broker peers with other brokers at all."""
        return bool(self.broker)

    @property
    def live_peers(self) -> int:
        return sum(1 for p in self.peers if p.live)
