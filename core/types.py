"""Domain values shared by the broker, the node agent and the CLI.

Each value checks itself on construction and raises InvalidJobSpec / InvalidOffer naming
the field, the value and what was expected. Units are in the names: money in integer fen,
time in Unix ms UTC (durations in s), power in W.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import NewType

from core import accelerators
from core.errors import InvalidJobSpec, InvalidOffer
from core.states import JobState

JobId = NewType("JobId", str)
CenterId = NewType("CenterId", str)
PoolId = NewType("PoolId", str)
ClaimId = NewType("ClaimId", str)

MAX_GANG = 4096
MAX_ESTIMATED_S = 30 * 24 * 3600
MAX_PRIORITY = 100


def iso_utc(at_ms: int) -> str:
    """A Unix ms time as ISO 8601 UTC, to the second: 1767225600000 -> 2026-01-01T00:00:00Z."""
    when = dt.datetime.fromtimestamp(at_ms // 1000, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What a user asks for. `validate(now_ms)` also checks what depends on the clock."""

    name: str = ""
    accelerator: str
    devices: int
    estimated_s: int
    allowed_regions: tuple[str, ...] = ()
    max_price_minor: int | None = None
    deadline_ms: int | None = None
    priority: int = 0
    data_region: str = ""
    data_mb: int = 0
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.accelerator != accelerators.ANY and not accelerators.is_known(self.accelerator):
            known = ", ".join(sorted(accelerators.CATALOGUE))
            raise InvalidJobSpec(
                f"accelerator must be 'any' or one of {known}, got {self.accelerator!r}"
            )
        if not 1 <= self.devices <= MAX_GANG:
            raise InvalidJobSpec(f"devices must be 1..{MAX_GANG}, got {self.devices}")
        if not 1 <= self.estimated_s <= MAX_ESTIMATED_S:
            raise InvalidJobSpec(
                f"estimated_seconds must be 1..{MAX_ESTIMATED_S}, got {self.estimated_s}"
            )
        if self.max_price_minor is not None and self.max_price_minor <= 0:
            raise InvalidJobSpec(f"max_price_minor must be positive, got {self.max_price_minor}")
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise InvalidJobSpec(f"priority must be 0..{MAX_PRIORITY}, got {self.priority}")
        if self.data_mb < 0:
            raise InvalidJobSpec(f"data_mb must be >= 0, got {self.data_mb}")
        if any(not r for r in self.allowed_regions):
            raise InvalidJobSpec("allowed_regions must not contain an empty name")
        if not self.command or not self.command[0]:
            raise InvalidJobSpec("command must name a program, got an empty command")

    def validate_at(self, now_ms: int) -> None:
        """Checks that depend on the clock: the deadline must lie ahead."""
        if self.deadline_ms is not None and self.deadline_ms <= now_ms:
            raise InvalidJobSpec(
                f"deadline_ms must be in the future, got {self.deadline_ms} "
                f"({iso_utc(self.deadline_ms)}; now {iso_utc(now_ms)})"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """An accelerator pool of one center."""

    pool_id: PoolId
    accelerator: str
    devices_total: int
    devices_free: int
    memory_gb: int
    fp16_tflops: int
    power_w: int
    price_minor_per_device_hour: int

    def __post_init__(self) -> None:
        where = f"pool {self.pool_id!r}"
        if not self.pool_id:
            raise InvalidOffer("pool_id must not be empty")
        if not accelerators.is_known(self.accelerator):
            raise InvalidOffer(f"{where}: accelerator {self.accelerator!r} is not in the catalogue")
        if not 0 <= self.devices_total <= 1_000_000:
            raise InvalidOffer(
                f"{where}: devices_total must be 0..1000000, got {self.devices_total}"
            )
        if not 0 <= self.devices_free <= self.devices_total:
            raise InvalidOffer(
                f"{where}: devices_free must be 0..devices_total ({self.devices_total}), "
                f"got {self.devices_free}"
            )
        for name in ("memory_gb", "fp16_tflops", "power_w"):
            value = getattr(self, name)
            if value <= 0:
                raise InvalidOffer(f"{where}: {name} must be positive, got {value}")
        if self.price_minor_per_device_hour < 0:
            raise InvalidOffer(
                f"{where}: price_minor_per_device_hour must be >= 0, "
                f"got {self.price_minor_per_device_hour}"
            )


def _check_site(where: str, pue_milli: int, grid_g_co2_per_kwh: int) -> None:
    if not 1000 <= pue_milli <= 3000:
        raise InvalidOffer(f"{where}: pue_milli must be 1000..3000, got {pue_milli}")
    if not 0 <= grid_g_co2_per_kwh <= 2000:
        raise InvalidOffer(f"{where}: grid_g_co2_per_kwh must be 0..2000, got {grid_g_co2_per_kwh}")


def _check_pools(where: str, pools: tuple[Pool, ...]) -> None:
    ids = [p.pool_id for p in pools]
    if len(set(ids)) != len(ids):
        raise InvalidOffer(f"{where}: pool ids must be unique, got {ids}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterDescriptor:
    center_id: CenterId
    name: str
    region: str
    latitude: float = 0.0
    longitude: float = 0.0
    pue_milli: int
    grid_g_co2_per_kwh: int
    pools: tuple[Pool, ...]

    def __post_init__(self) -> None:
        if not self.center_id:
            raise InvalidOffer("center_id must not be empty")
        if not self.region:
            raise InvalidOffer(f"center {self.center_id}: region must not be empty")
        _check_site(f"center {self.center_id}", self.pue_milli, self.grid_g_co2_per_kwh)
        _check_pools(f"center {self.center_id}", self.pools)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A center's advertised capacity at one moment: a hint, never the truth."""

    center_id: CenterId
    seq: int
    issued_at_ms: int
    expires_at_ms: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    pools: tuple[Pool, ...]

    def __post_init__(self) -> None:
        where = f"offer from {self.center_id} seq {self.seq}"
        if self.seq < 1:
            raise InvalidOffer(f"{where}: seq must be >= 1, got {self.seq}")
        if self.expires_at_ms <= self.issued_at_ms:
            raise InvalidOffer(
                f"{where}: expires_at_ms must be after issued_at_ms, "
                f"got {self.expires_at_ms} <= {self.issued_at_ms}"
            )
        _check_site(where, self.pue_milli, self.grid_g_co2_per_kwh)
        _check_pools(where, self.pools)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """The broker's record of a job. Replaced, never mutated."""

    job_id: JobId
    tenant: str
    spec: JobSpec
    state: JobState
    submitted_at_ms: int
    updated_at_ms: int
    center_id: CenterId | None = None
    pool_id: PoolId | None = None
    claim_id: ClaimId | None = None
    device_indices: tuple[int, ...] = ()
    attempts: int = 0
    exit_code: int | None = None
    reason: str = ""
    explanation: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    job_id: JobId
    seq: int
    at_ms: int
    state: JobState
    center_id: CenterId | None = None
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogChunk:
    job_id: JobId
    seq: int
    stream: str  # "stdout" | "stderr"
    data: bytes = field(repr=False)


LOCAL_BROKER = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolRef:
    """Where a pool lives: a center's pool, reached through a broker (`LOCAL_BROKER` for
    this broker's own centers; a peer broker's name for capacity it federates)."""

    broker: str = LOCAL_BROKER
    center_id: CenterId
    pool_id: PoolId

    @property
    def key(self) -> str:
        """A unique string name for the matcher, which names pools by strings."""
        local = f"{self.center_id}/{self.pool_id}"
        return local if self.broker == LOCAL_BROKER else f"{self.broker}/{local}"

    def __str__(self) -> str:
        return self.key
