"""The allocation problem as plain values: pools with free devices, pending jobs, the
network between regions and the coordinator's policy; and what a matcher returns.

Pure: no network, no database, no clock. Every figure is an integer in a named unit so
that a CP-SAT model can use the same numbers:

- money in minor units (`_minor`, fen for CNY; `core.money`); objective costs in
  thousandths of a minor unit (`_milli_minor`) so that small carbon and latency terms
  keep their resolution;
- time in seconds (`_s`) or milliseconds (`_ms`), data in MB (10^6 bytes),
  bandwidth in Mbit/s, energy in Wh, carbon in g CO2.

A *region* is one name space for data residency, the data's location and the network
matrix: a job may run in pool P only if P.region is in the job's `regions`, and moving its
data costs the RTT and the transfer time between `data_region` and P.region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from core.money import charge_minor
from matcher.errors import InvalidProblem

ANY = "any"

DEFAULT_BANDWIDTH_MBPS = 100_000  # 100 Gbit/s per inter-hub tenant slice (SOURCES.md 5.4)
DEFAULT_AGING_S = 3600  # one priority step per hour waited


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
    price_minor_per_device_hour: int

    def __post_init__(self) -> None:
        if not self.pool_id:
            raise InvalidProblem("pool_id must not be empty")
        for name in ("free", "memory_gb", "tflops", "power_w", "grid_g_per_kwh"):
            if getattr(self, name) < 0:
                raise InvalidProblem(
                    f"pool {self.pool_id}: {name} must be >= 0, got {getattr(self, name)}"
                )
        if self.pue_milli < 1000:
            raise InvalidProblem(
                f"pool {self.pool_id}: pue_milli must be >= 1000, got {self.pue_milli}"
            )
        if self.price_minor_per_device_hour < 0:
            raise InvalidProblem(
                f"pool {self.pool_id}: price_minor_per_device_hour must be >= 0, "
                f"got {self.price_minor_per_device_hour}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    """A pending job as the matcher sees it."""

    job_id: str
    accelerator: str  # a model id or "any"
    devices: int
    seconds: int
    regions: tuple[str, ...] | None = None  # None: anywhere
    max_price_minor: int | None = None
    priority: int = 0
    data_region: str = ""  # "": no data to move
    data_mb: int = 0
    deadline_s: int | None = None  # seconds from now; None: no deadline
    waited_s: int = 0
    tenant: str = ""
    min_memory_gb: int = 0  # per device; matters for accelerator "any"
    min_tflops: int = 0  # FP16 per device; matters for accelerator "any"

    def __post_init__(self) -> None:
        where = f"job {self.job_id}"
        if not self.job_id:
            raise InvalidProblem("job_id must not be empty")
        if self.devices < 1:
            raise InvalidProblem(f"{where}: devices must be >= 1, got {self.devices}")
        if self.seconds < 1:
            raise InvalidProblem(f"{where}: seconds must be >= 1, got {self.seconds}")
        for name in ("data_mb", "priority", "waited_s", "min_memory_gb", "min_tflops"):
            if getattr(self, name) < 0:
                raise InvalidProblem(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        if self.max_price_minor is not None and self.max_price_minor < 0:
            raise InvalidProblem(
                f"{where}: max_price_minor must be >= 0, got {self.max_price_minor}"
            )
        if self.deadline_s is not None and self.deadline_s < 0:
            raise InvalidProblem(f"{where}: deadline_s must be >= 0, got {self.deadline_s}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The coordinator's policy, as integers (the solver needs them).

    - `w_cost`, `w_carbon`, `w_latency`: non-negative weights of the second objective
      (see `cost_milli_minor`);
    - `carbon_price_minor_per_tonne`: what one tonne of CO2 costs in the objective;
    - `aging_s`: a job's effective priority rises by one per `aging_s` waited, so that
      nothing starves across rounds;
    - `quota_devices`: region -> most devices this round may newly place there;
    - `incentive_minor_per_device_hour` on pools in `incentive_regions`: the east-to-west
      incentive, subtracted from the objective cost (never from the charge).
    """

    w_cost: int = 1
    w_carbon: int = 0
    w_latency: int = 0
    carbon_price_minor_per_tonne: int = 10_000  # 100 yuan per tonne CO2
    aging_s: int = DEFAULT_AGING_S
    quota_devices: Mapping[str, int] = field(default_factory=dict)
    incentive_minor_per_device_hour: int = 0
    incentive_regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("w_cost", "w_carbon", "w_latency", "carbon_price_minor_per_tonne"):
            if getattr(self, name) < 0:
                raise InvalidProblem(f"policy: {name} must be >= 0, got {getattr(self, name)}")
        if self.aging_s < 1:
            raise InvalidProblem(f"policy: aging_s must be >= 1, got {self.aging_s}")
        for region, quota in self.quota_devices.items():
            if quota < 0:
                raise InvalidProblem(f"policy: quota_devices[{region}] must be >= 0, got {quota}")
        if self.incentive_minor_per_device_hour < 0:
            raise InvalidProblem(
                "policy: incentive_minor_per_device_hour must be >= 0, "
                f"got {self.incentive_minor_per_device_hour}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One round: pools, pending jobs, the network and the policy.

    `latency_ms[a][b]` is the round-trip time between regions a and b (looked up in
    either order; a missing pair counts as 0 ms). `bandwidth_mbps[a][b]` likewise, with
    `default_bandwidth_mbps` for pairs not listed.
    """

    pools: tuple[PoolSlot, ...]
    jobs: tuple[JobRequest, ...]
    policy: Policy = field(default_factory=Policy)
    latency_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    bandwidth_mbps: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    default_bandwidth_mbps: int = DEFAULT_BANDWIDTH_MBPS

    def __post_init__(self) -> None:
        ids = [p.pool_id for p in self.pools]
        if len(set(ids)) != len(ids):
            raise InvalidProblem("pool ids must be unique")
        jids = [j.job_id for j in self.jobs]
        if len(set(jids)) != len(jids):
            raise InvalidProblem("job ids must be unique")
        if self.default_bandwidth_mbps < 1:
            raise InvalidProblem(
                f"default_bandwidth_mbps must be >= 1, got {self.default_bandwidth_mbps}"
            )
        for a, row in self.latency_ms.items():
            for b, ms in row.items():
                if not ms >= 0:
                    raise InvalidProblem(f"latency_ms[{a}][{b}] must be >= 0, got {ms}")
        for a, brow in self.bandwidth_mbps.items():
            for b, mbps in brow.items():
                if mbps < 1:
                    raise InvalidProblem(f"bandwidth_mbps[{a}][{b}] must be >= 1, got {mbps}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    job_id: str
    pool_id: str
    charge_minor: int
    energy_wh: int
    carbon_g: int
    explanation: str = ""
    transfer_ms: int = 0
    cost_milli_minor: int = 0
    runner_up: str | None = None  # pool id of the next best candidate, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class Unplaced:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    """What a matcher returns.

    `objective` is the placed priority-weighted work, in weighted device-hours (the
    first, lexicographic objective); `bound` is a proven upper bound on it for this
    problem (None where the matcher proves none). `cost_milli_minor` is the second objective of
    the placed jobs; `cost_bound_milli_minor`, where known, a lower bound on it among solutions
    that place at least `objective`.
    """

    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...]
    objective: float
    bound: float | None
    solver: str
    seconds: float
    cost_milli_minor: int = 0
    cost_bound_milli_minor: int | None = None
    optimal: bool = False

    @property
    def gap(self) -> float | None:
        """(bound - objective) / bound, the proven relative gap of the first objective."""
        if self.bound is None:
            return None
        if self.bound <= 0:
            return 0.0
        return max(0.0, (self.bound - self.objective) / self.bound)


class Matcher(Protocol):
    """Anything that turns a problem into a feasible solution."""

    name: str

    def solve(self, problem: Problem) -> Solution: ...


def job_charge_minor(job: JobRequest, pool: PoolSlot) -> int:
    """What `job` would be billed on `pool`: the exchange's one charge rule
    (`core.money.charge_minor`) for devices x seconds at the pool's price."""
    return charge_minor(job.devices * job.seconds, pool.price_minor_per_device_hour)


def energy_wh(job: JobRequest, pool: PoolSlot) -> int:
    """devices x power x hours x PUE, rounded to the nearest Wh."""
    milli_wh = job.devices * pool.power_w * job.seconds * pool.pue_milli // 3600
    return (milli_wh + 500) // 1000


def carbon_g(job: JobRequest, pool: PoolSlot) -> int:
    """energy x grid intensity, rounded to the nearest gram."""
    return (energy_wh(job, pool) * pool.grid_g_per_kwh + 500) // 1000


def effective_priority(job: JobRequest, policy: Policy) -> int:
    """1 + priority + one step per `policy.aging_s` waited (>= 1, so every job counts)."""
    return 1 + job.priority + job.waited_s // policy.aging_s


def value(job: JobRequest, policy: Policy) -> int:
    """The first objective's term: effective priority x devices x seconds."""
    return effective_priority(job, policy) * job.devices * job.seconds


def _pair(table: Mapping[str, Mapping[str, float]], a: str, b: str) -> float | None:
    row = table.get(a)
    if row is not None and b in row:
        return row[b]
    row = table.get(b)
    if row is not None and a in row:
        return row[a]
    return None


def rtt_ms(problem: Problem, a: str, b: str) -> int:
    """Round-trip time between two regions in whole ms (half up); 0 within a region."""
    if a == b:
        return 0
    ms = _pair(problem.latency_ms, a, b)
    return 0 if ms is None else int(ms + 0.5)


def bandwidth_mbps(problem: Problem, a: str, b: str) -> int:
    found = _pair(problem.bandwidth_mbps, a, b)
    return problem.default_bandwidth_mbps if found is None else int(found)


def transfer_ms(job: JobRequest, pool: PoolSlot, problem: Problem) -> int:
    """Time to bring the job's data to the pool: size / bandwidth + RTT, in ms (rounded
    up). Zero when the data is already in the pool's region or the job names none."""
    if not job.data_region or job.data_region == pool.region:
        return 0
    mbps = bandwidth_mbps(problem, job.data_region, pool.region)
    return rtt_ms(problem, job.data_region, pool.region) + -(-job.data_mb * 8000 // mbps)


def cost_milli_minor(job: JobRequest, pool: PoolSlot, problem: Problem) -> int:
    """The second objective's term for running `job` on `pool`, in thousandths of a minor unit:

      w_cost    x charge_minor x 1000
    + w_carbon  x carbon_g x carbon_price_minor_per_tonne / 1000   (rounded half up)
    + w_latency x devices x transfer_ms       (1 fen per device-second idle, at weight 1)
    - incentive_minor_per_device_hour x devices x seconds / 3.6    (pools in incentive_regions)
    """
    policy = problem.policy
    total = policy.w_cost * job_charge_minor(job, pool) * 1000
    total += (
        policy.w_carbon * carbon_g(job, pool) * policy.carbon_price_minor_per_tonne + 500
    ) // (1000)
    total += policy.w_latency * job.devices * transfer_ms(job, pool, problem)
    if pool.region in policy.incentive_regions:
        total -= policy.incentive_minor_per_device_hour * job.devices * job.seconds * 10 // 36
    return total


def compatible(job: JobRequest, pool: PoolSlot) -> bool:
    """Accelerator (model, memory, TFLOPS) and allowed region: what capacity cannot change."""
    if job.accelerator != ANY and job.accelerator != pool.accelerator:
        return False
    if pool.memory_gb < job.min_memory_gb or pool.tflops < job.min_tflops:
        return False
    return job.regions is None or pool.region in job.regions


def feasible(job: JobRequest, pool: PoolSlot, free: int, transfer: int = 0) -> bool:
    """Every hard constraint of one job on one pool with `free` devices left, the data
    arriving after `transfer` ms (quotas, which span pools, are the caller's)."""
    if not compatible(job, pool) or job.devices > free:
        return False
    if job.max_price_minor is not None and job_charge_minor(job, pool) > job.max_price_minor:
        return False
    return job.deadline_s is None or job.seconds * 1000 + transfer <= job.deadline_s * 1000
