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

A job naming a container *image* may run in pool P only if P's center accepts that image
(`P.images`); a job naming none only in a pool whose center runs no containers (no
images): a container center runs nothing but its images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np
import numpy.typing as npt

from core import types as limits
from core.errors import InvalidArgument
from core.ids import shown
from core.money import charge_minor
from matcher.errors import InvalidProblem

ANY = "any"

Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

DEFAULT_BANDWIDTH_MBPS = 100_000  # 100 Gbit/s per inter-hub tenant slice (SOURCES.md 5.4)
DEFAULT_AGING_S = 3600  # one priority step per hour waited

# The matcher's own bounds, beside the edge's (`core.types`, which the broker's values
# already meet): problem files and callers of the library are held to the same numbers,
# so that the int64 figures of `matcher._candidates` cannot overflow.
MAX_DEADLINE_S = limits.MAX_TIME_MS // 1000
MAX_AGING_STEPS = 10_000  # priority steps a job can gain by waiting (13.7 months at 1 h)
MAX_RTT_MS = 1_000_000  # between two regions: 1000 s
MAX_BANDWIDTH_MBPS = 10**9  # 1 Pbit/s
MAX_QUOTA_DEVICES = 10**12
MAX_WEIGHT = 10**6
# The most one job's objective cost, and each product inside it, may reach at the
# bounds (`worst_cost_milli_minor`): a quarter of int64, so sums of a few terms fit.
COST_LIMIT = 1 << 61
# Feasibility's stand-ins for "none": larger than any bound, and x 1000 still in int64.
NO_BUDGET_MINOR = 1 << 62
NO_DEADLINE_S = (1 << 62) // 1000


def _check_range(where: str, name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise InvalidProblem(f"{where}: {name} must be {lo}..{hi}, got {value}")


def _check_image(field: str, image: str) -> None:
    try:
        limits.check_image(field, image, InvalidArgument)
    except InvalidArgument as exc:
        raise InvalidProblem(str(exc)) from None


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
    images: tuple[str, ...] = ()  # its center's accepted images; () for no containers

    def __post_init__(self) -> None:
        if not self.pool_id:
            raise InvalidProblem("pool_id must not be empty")
        where = f"pool {shown(self.pool_id)}"
        if len(self.images) > limits.MAX_IMAGES:
            raise InvalidProblem(
                f"{where}: images must name at most {limits.MAX_IMAGES}, got {len(self.images)}"
            )
        for i, image in enumerate(self.images):
            _check_image(f"{where}: images[{i}]", image)
        for name, most in (
            ("free", limits.MAX_POOL_DEVICES),
            ("memory_gb", limits.MAX_MEMORY_GB),
            ("tflops", limits.MAX_FP16_TFLOPS),
            ("power_w", limits.MAX_POWER_W),
            ("grid_g_per_kwh", limits.MAX_GRID_G_CO2_PER_KWH),
            ("price_minor_per_device_hour", limits.MAX_PRICE_MINOR_PER_DEVICE_HOUR),
        ):
            _check_range(where, name, getattr(self, name), 0, most)
        _check_range(where, "pue_milli", self.pue_milli, 1000, limits.MAX_PUE_MILLI)


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
    image: str = ""  # a container image; "": none (a center without containers)

    def __post_init__(self) -> None:
        if not self.job_id:
            raise InvalidProblem("job_id must not be empty")
        where = f"job {shown(self.job_id)}"
        if self.image:
            _check_image(f"{where}: image", self.image)
        _check_range(where, "devices", self.devices, 1, limits.MAX_GANG)
        _check_range(where, "seconds", self.seconds, 1, limits.MAX_ESTIMATED_S)
        for name, most in (
            ("data_mb", limits.MAX_DATA_MB),
            ("priority", limits.MAX_PRIORITY),
            ("min_memory_gb", limits.MAX_MEMORY_GB),
            ("min_tflops", limits.MAX_FP16_TFLOPS),
        ):
            _check_range(where, name, getattr(self, name), 0, most)
        if self.waited_s < 0:
            raise InvalidProblem(f"{where}: waited_s must be >= 0, got {self.waited_s}")
        if self.max_price_minor is not None:
            _check_range(where, "max_price_minor", self.max_price_minor, 0, limits.MAX_BUDGET_MINOR)
        if self.deadline_s is not None:
            _check_range(where, "deadline_s", self.deadline_s, 0, MAX_DEADLINE_S)


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
            _check_range("policy", name, getattr(self, name), 0, MAX_WEIGHT)
        if self.aging_s < 1:
            raise InvalidProblem(f"policy: aging_s must be >= 1, got {self.aging_s}")
        for region, quota in self.quota_devices.items():
            _check_range("policy", f"quota_devices[{region}]", quota, 0, MAX_QUOTA_DEVICES)
        _check_range(
            "policy",
            "incentive_minor_per_device_hour",
            self.incentive_minor_per_device_hour,
            0,
            limits.MAX_PRICE_MINOR_PER_DEVICE_HOUR,
        )
        worst = worst_cost_milli_minor(self)
        if worst > COST_LIMIT:
            raise InvalidProblem(
                f"policy: a job's objective cost could reach {worst:.3g} milli-minor units at "
                "the bounds, above 2**61; lower w_cost, w_carbon, w_latency or "
                "carbon_price_minor_per_tonne"
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
        _check_range(
            "problem", "default_bandwidth_mbps", self.default_bandwidth_mbps, 1, MAX_BANDWIDTH_MBPS
        )
        for a, row in self.latency_ms.items():
            for b, ms in row.items():
                # `not <=` also refuses NaN; infinity is out of range.
                if not 0 <= ms <= MAX_RTT_MS:
                    raise InvalidProblem(f"latency_ms[{a}][{b}] must be 0..{MAX_RTT_MS}, got {ms}")
        for a, brow in self.bandwidth_mbps.items():
            for b, mbps in brow.items():
                _check_range("problem", f"bandwidth_mbps[{a}][{b}]", mbps, 1, MAX_BANDWIDTH_MBPS)


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
    """1 + priority + one step per `policy.aging_s` waited, at most `MAX_AGING_STEPS`
    steps (>= 1, so every job counts; bounded, so value stays well inside int64)."""
    return 1 + job.priority + min(job.waited_s // policy.aging_s, MAX_AGING_STEPS)


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
    return moving_ms(job.data_mb, mbps, rtt_ms(problem, job.data_region, pool.region))


@overload
def moving_ms(data_mb: int, mbps: int, rtt: int) -> int: ...
@overload
def moving_ms(data_mb: Int64s, mbps: Int64s | int, rtt: Int64s | int) -> Int64s: ...
def moving_ms(data_mb: int | Int64s, mbps: int | Int64s, rtt: int | Int64s) -> int | Int64s:
    """RTT + data_mb x 8000 / Mbit/s, rounded up: the ms to move data between two
    regions. Elementwise on int64 arrays (the round's candidates) as on ints (quotes and
    the greedy baseline), so that all of them time a transfer alike; in range at the
    bounds (10^8 MB x 8000 = 8e11)."""
    return rtt + -(-(data_mb * 8000) // mbps)


@overload
def on_time(seconds: int, transfer: int, deadline_s: int) -> bool: ...
@overload
def on_time(seconds: Int64s, transfer: Int64s, deadline_s: Int64s) -> Bools: ...
def on_time(
    seconds: int | Int64s, transfer: int | Int64s, deadline_s: int | Int64s
) -> bool | Bools:
    """The deadline constraint: transfer + run, in ms, within the deadline
    (`NO_DEADLINE_S` for none). The one test of it, for the quote, the greedy baseline
    and the optimising matcher's candidates (elementwise on int64 arrays)."""
    return seconds * 1000 + transfer <= deadline_s * 1000


def deadline_of(job: JobRequest) -> int:
    """The job's deadline in s from now, or `NO_DEADLINE_S` for none."""
    return NO_DEADLINE_S if job.deadline_s is None else job.deadline_s


def budget_of(job: JobRequest) -> int:
    """The job's budget in minor units, or `NO_BUDGET_MINOR` for none."""
    return NO_BUDGET_MINOR if job.max_price_minor is None else job.max_price_minor


def worst_cost_milli_minor(policy: Policy) -> int:
    """The largest of one job's objective cost (`cost_milli_minor`) and of each product
    formed on the way to it, at the bounds of `core.types` and this module: a gang of
    MAX_GANG for MAX_ESTIMATED_S at the highest price, power, PUE and grid factor,
    moving MAX_DATA_MB at 1 Mbit/s over MAX_RTT_MS. In Python integers."""
    g, s = limits.MAX_GANG, limits.MAX_ESTIMATED_S
    charge = charge_minor(g * s, limits.MAX_PRICE_MINOR_PER_DEVICE_HOUR)
    milli_wh = g * limits.MAX_POWER_W * s * limits.MAX_PUE_MILLI // 3600
    carbon = (((milli_wh + 500) // 1000) * limits.MAX_GRID_G_CO2_PER_KWH + 500) // 1000
    carbon_product = policy.w_carbon * carbon * policy.carbon_price_minor_per_tonne + 500
    transfer = MAX_RTT_MS + limits.MAX_DATA_MB * 8000
    total = policy.w_cost * charge * 1000 + carbon_product // 1000 + policy.w_latency * g * transfer
    incentive_product = policy.incentive_minor_per_device_hour * g * s * 10
    return max(total, carbon_product, incentive_product)


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
    """Accelerator (model, memory, TFLOPS), allowed region and container image: what
    capacity cannot change."""
    if job.accelerator != ANY and job.accelerator != pool.accelerator:
        return False
    if pool.memory_gb < job.min_memory_gb or pool.tflops < job.min_tflops:
        return False
    if not limits.accepts_image(pool.images, job.image):
        return False
    return job.regions is None or pool.region in job.regions


def image_reason(job: JobRequest, pools: Iterable[PoolSlot], place: str) -> str | None:
    """Why `job` has no compatible pool when its image (or its lack of one) is what
    rules out every pool that would otherwise be, in words ending with `place` (the pools
    it could use, e.g. "of ascend-910 in any region"); None when the image is not why."""
    anywhere = dataclasses.replace(job, image="")
    if not any(compatible(anywhere, dataclasses.replace(p, images=())) for p in pools):
        return None
    if job.image:
        return f"no center with a pool {place} accepts the image {job.image}"
    return f"the centers with a pool {place} run only container jobs, and it names no image"


def admissible(job: JobRequest, pool: PoolSlot, transfer: int = 0) -> bool:
    """Every hard constraint of one job on one pool but capacity, the data arriving
    after `transfer` ms: compatible, the charge within the budget, on time. What a
    quote calls feasible."""
    return (
        compatible(job, pool)
        and job_charge_minor(job, pool) <= budget_of(job)
        and on_time(job.seconds, transfer, deadline_of(job))
    )


def feasible(job: JobRequest, pool: PoolSlot, free: int, transfer: int = 0) -> bool:
    """Every hard constraint of one job on one pool with `free` devices left, the data
    arriving after `transfer` ms (quotas, which span pools, are the caller's)."""
    return job.devices <= free and admissible(job, pool, transfer)
