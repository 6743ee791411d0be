"""The allocation problem as plain values: pools with free devices, pending jobs, the
network between regions and the coordinator's policy; and what a matcher returns.

Pure: no network, no database, no clock. Every figure is an integer in a named unit so
that a CP-SAT model can use the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from matcher.errors import InvalidProblem

ANY = "any"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSlot:
    """Free capacity of one pool at one center, as the matcher sees it this round."""

    pool_id: str  # unique across the problem, e.g. "CN06/ascend-910"
    center_id: str
    region: str
    accelerator: str
    free: int
    memory_gb: int
    tflops: int
    power_w: int
    pue_milli: int
    grid_g_per_kwh: int
    price_fen_per_device_hour: int

    def __post_init__(self) -> None:
        for name in ("free", "memory_gb", "tflops", "power_w", "grid_g_per_kwh"):
            if getattr(self, name) < 0:
                raise InvalidProblem(
                    f"pool {self.pool_id}: {name} must be >= 0, got {getattr(self, name)}"
                )
        if self.pue_milli < 1000:
            raise InvalidProblem(
                f"pool {self.pool_id}: pue_milli must be >= 1000, got {self.pue_milli}"
            )
        if self.price_fen_per_device_hour < 0:
            raise InvalidProblem(
                f"pool {self.pool_id}: price_fen_per_device_hour must be >= 0, "
                f"got {self.price_fen_per_device_hour}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    """A pending job as the matcher sees it."""

    job_id: str
    accelerator: str  # a model id or "any"
    devices: int
    seconds: int
    regions: tuple[str, ...] | None = None  # None: anywhere
    max_price_fen: int | None = None
    priority: int = 0
    data_region: str = ""
    data_mb: int = 0
    deadline_s: int | None = None  # seconds from now; None: no deadline
    waited_s: int = 0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise InvalidProblem(f"job {self.job_id}: devices must be >= 1, got {self.devices}")
        if self.seconds < 1:
            raise InvalidProblem(f"job {self.job_id}: seconds must be >= 1, got {self.seconds}")
        if self.data_mb < 0:
            raise InvalidProblem(f"job {self.job_id}: data_mb must be >= 0, got {self.data_mb}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The coordinator's objective weights (integers, as the solver needs)."""

    w_cost: int = 1
    w_carbon: int = 0
    w_latency: int = 0
    carbon_price_fen_per_tonne: int = 10_000  # 100 yuan per tonne CO2


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    pools: tuple[PoolSlot, ...]
    jobs: tuple[JobRequest, ...]
    policy: Policy = field(default_factory=Policy)
    # Round-trip time in ms between regions; missing pairs count as unknown (0).
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [p.pool_id for p in self.pools]
        if len(set(ids)) != len(ids):
            raise InvalidProblem("pool ids must be unique")
        jids = [j.job_id for j in self.jobs]
        if len(set(jids)) != len(jids):
            raise InvalidProblem("job ids must be unique")


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    job_id: str
    pool_id: str
    charge_fen: int
    energy_wh: int
    carbon_g: int
    explanation: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unplaced:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...]
    objective: float
    bound: float | None
    solver: str
    seconds: float


class Matcher(Protocol):
    """Anything that turns a problem into a feasible solution."""

    name: str

    def solve(self, problem: Problem) -> Solution: ...


def charge_fen(job: JobRequest, pool: PoolSlot) -> int:
    """price x devices x hours, rounded up to the whole fen (the center is never short)."""
    return -(-pool.price_fen_per_device_hour * job.devices * job.seconds // 3600)


def energy_wh(job: JobRequest, pool: PoolSlot) -> int:
    """devices x power x hours x PUE, rounded to the nearest Wh."""
    milli_wh = job.devices * pool.power_w * job.seconds * pool.pue_milli // 3600
    return (milli_wh + 500) // 1000


def carbon_g(job: JobRequest, pool: PoolSlot) -> int:
    """energy x grid intensity, rounded to the nearest gram."""
    return (energy_wh(job, pool) * pool.grid_g_per_kwh + 500) // 1000


def compatible(job: JobRequest, pool: PoolSlot) -> bool:
    """Accelerator match and allowed region: the constraints capacity cannot change."""
    if job.accelerator != ANY and job.accelerator != pool.accelerator:
        return False
    return job.regions is None or pool.region in job.regions


def feasible(job: JobRequest, pool: PoolSlot, free: int) -> bool:
    """Every hard constraint of one job on one pool with `free` devices left."""
    if not compatible(job, pool) or job.devices > free:
        return False
    if job.max_price_fen is not None and charge_fen(job, pool) > job.max_price_fen:
        return False
    return job.deadline_s is None or job.seconds <= job.deadline_s
