"""The coordinator's national view as plain values: what NationalService answers
(proto/icx/v1/national.proto says where each figure comes from).

Units are in the names: device-seconds, Wh, g CO2, minor units (fen), Unix ms UTC.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidArgument

# A period or window when none is asked for, the default step, and the bounds.
DEFAULT_PERIOD_MS = 3_600_000
DEFAULT_STEP_MS = 60_000
MAX_PERIOD_MS = 366 * 86_400_000
MAX_STEPS = 1_440
DEFAULT_LIMIT = 20
MAX_LIMIT = 500


def period_or_default(period_ms: int, what: str = "period_ms") -> int:
    """`period_ms`, or the default for 0; InvalidArgument outside 1 ms..MAX_PERIOD_MS."""
    if period_ms == 0:
        return DEFAULT_PERIOD_MS
    if not 0 < period_ms <= MAX_PERIOD_MS:
        raise InvalidArgument(f"{what} must be 1..{MAX_PERIOD_MS} (0: one hour), got {period_ms}")
    return period_ms


def step_or_default(window_ms: int, step_ms: int) -> int:
    """`step_ms` (0: one minute, or the window / MAX_STEPS if that is longer)."""
    if step_ms == 0:
        return max(DEFAULT_STEP_MS, -(-window_ms // MAX_STEPS))
    if step_ms < 1_000:
        raise InvalidArgument(f"step_ms must be >= 1000 (0: one minute), got {step_ms}")
    if -(-window_ms // step_ms) > MAX_STEPS:
        raise InvalidArgument(
            f"step_ms {step_ms} makes more than {MAX_STEPS} steps of window_ms {window_ms}"
        )
    return step_ms


def limit_or_default(limit: int) -> int:
    if limit == 0:
        return DEFAULT_LIMIT
    if not 0 < limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be 1..{MAX_LIMIT} (0: {DEFAULT_LIMIT}), got {limit}")
    return limit


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolFigures:
    pool_id: str
    accelerator: str
    devices_total: int
    devices_busy: int
    price_minor_per_device_hour: int
    power_w: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """One center's, one hub's or everyone's figures over a period."""

    centers: int = 0
    centers_live: int = 0
    devices_total: int = 0
    devices_busy: int = 0
    queue_length: int = 0
    jobs_running: int = 0
    jobs_done: int = 0
    device_seconds: int = 0
    utilisation: float = 0.0
    energy_wh: int = 0
    carbon_g: int = 0
    spend_minor: int = 0

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterFigures:
    center_id: str
    name: str
    region: str
    latitude: float
    longitude: float
    broker: str  # "" for this broker's own; else the peer whose summary names it
    live: bool
    pools: tuple[PoolFigures, ...]
    price_minor_per_device_hour: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    figures: Figures


@dataclass(frozen=True, slots=True, kw_only=True)
class HubFigures:
    region: str
    figures: Figures


@dataclass(frozen=True, slots=True, kw_only=True)
class Flow:
    """Work submitted in `from_region` that ran in `to_region` during the period."""

    from_region: str
    to_region: str
    jobs: int
    device_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    as_of_ms: int
    period_ms: int
    centers: tuple[CenterFigures, ...]
    hubs: tuple[HubFigures, ...]
    totals: Figures
    flows: tuple[Flow, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningJob:
    job_id: str
    tenant: str
    pool_id: str
    accelerator: str
    devices: int
    started_at_ms: int
    home_region: str
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterDetail:
    as_of_ms: int
    period_ms: int
    center: CenterFigures
    running: tuple[RunningJob, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeStep:
    start_ms: int
    device_seconds: int
    utilisation: float
    queue_length: int | None  # None: no sample in the step
    jobs_started: int
    jobs_finished: int
    energy_wh: int
    carbon_g: int
    spend_minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSeries:
    as_of_ms: int
    step_ms: int
    devices_total: int
    steps: tuple[TimeStep, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonCount:
    reason: str  # numbers read as "N"
    example: str
    jobs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSummary:
    number: int
    at_ms: int
    objective: float
    bound: float | None
    gap: float | None
    solver: str
    solve_seconds: float
    pools: int
    jobs_considered: int
    jobs_placed: int
    jobs_waiting: int
    waiting: tuple[ReasonCount, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion:
    """The coordinator's policy as set: its file (JSON text), version (0: never set),
    who set it, when and why."""

    version: int
    policy_json: str
    set_by: str = ""
    set_at_ms: int = 0
    comment: str = ""

    def __post_init__(self) -> None:
        if self.version < 0:
            raise InvalidArgument(f"policy version must be >= 0, got {self.version}")
