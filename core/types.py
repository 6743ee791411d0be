"""Domain values shared by the broker, the node agent and the CLI.

Each value checks itself on construction and raises InvalidJobSpec / InvalidOffer naming
the field, the value (cut short, `core.ids.shown`) and what was expected. Units are in the
names: money in integer fen, time in Unix ms UTC (durations in s), power in W.

Limits
======

Every number a user or a center sends is bounded here, at the edge, so that nothing
downstream can overflow a 64-bit integer: the matcher computes its per-(job, pool)
figures in numpy int64 (`matcher._candidates`, `matcher._grouped`) and gives CP-SAT
integer coefficients. The products it forms, at these limits (figures in
docs/limits.md):

    price x devices x seconds           10^7 x 4096 x 2,592,000         = 1.06e17
    charge x 1000 (milli-minor units)   ceil(1.06e17 / 3600) x 1000      = 2.95e16
    devices x power x seconds x PUE     4096 x 10^4 x 2,592,000 x 3000   = 3.19e17
    energy x grid (carbon x 1000)       8.85e10 Wh x 2000               = 1.77e14
    devices x transfer                  4096 x (10^8 MB x 8000 + 10^6)   = 3.28e15
    priority x devices x seconds        10,101 x 4096 x 2,592,000       = 1.07e14
    deadline x 1000                     MAX_TIME_MS                     = 2.53e14

each below 2^63 - 1 = 9.22e18 by at least an order of magnitude; the policy's weights
multiply the cost terms, and `matcher.Policy` refuses weights whose worst case passes
2^61 (see `matcher.model.worst_cost_milli_minor`). Sums over many jobs are taken in Python
integers.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import NewType

from core import accelerators
from core.errors import InvalidArgument, InvalidJobSpec, InvalidOffer
from core.ids import (
    check_env_name,
    check_id,
    check_name,
    check_text,
    shown,
)
from core.states import JobState

JobId = NewType("JobId", str)
CenterId = NewType("CenterId", str)
PoolId = NewType("PoolId", str)
ClaimId = NewType("ClaimId", str)

# Jobs.
MAX_GANG = 4096  # devices of one job (all in one pool)
MAX_ESTIMATED_S = 30 * 24 * 3600  # 30 days
MAX_PRIORITY = 100
MAX_BUDGET_MINOR = 10**15  # 10 trillion yuan; above any charge (2.95e13) and below 2^53
MAX_DATA_MB = 10**8  # 100 TB
MAX_REGIONS = 64  # names in allowed_regions
MAX_COMMAND_ARGS = 1024
MAX_ARG_CHARS = 32_768  # one argument or one environment value
MAX_ENV_VARS = 256
# Everything a job hands exec (arguments, names and values), well under Linux's 2 MiB
# ARG_MAX, so that a launch cannot fail with E2BIG.
MAX_EXEC_CHARS = 131_072
MAX_JOB_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB for one job
MAX_MILLICPUS = 1_000_000  # 1,000 CPUs for one job
# Container images: a reference as the Docker engine reads it, its name at most 255
# characters (the engine's own limit), with a tag or a digest.
MAX_IMAGE_NAME_CHARS = 255
MAX_IMAGE_CHARS = 512  # the whole reference, a sha512 digest included
MAX_IMAGES = 256  # accepted by one center
# Pools and centers.
MAX_POOL_DEVICES = 1_000_000
MAX_PRICE_MINOR_PER_DEVICE_HOUR = 10**7  # 100,000 yuan per device-hour (~10^4 x today's)
MAX_MEMORY_GB = 100_000  # per device
MAX_FP16_TFLOPS = 1_000_000  # per device
MAX_POWER_W = 10_000  # per device
MAX_POOLS = 1024  # per center
MIN_PUE_MILLI, MAX_PUE_MILLI = 1000, 3000
MAX_GRID_G_CO2_PER_KWH = 2000
# Time: Unix ms from 1970 to the end of year 9999 (what ISO 8601 and Python can write).
MAX_TIME_MS = 253_402_300_799_999
MAX_SEQ = (1 << 53) - 1  # offer sequence numbers: exact in JSON and SQLite alike


_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
# The grammar of distribution/reference (the Docker engine's): [domain/]path[:tag][@digest].
IMAGE_PATTERN = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)


def check_image(field: str, value: str, error: type[Exception]) -> None:
    """A container image reference with a tag or a digest (`icx/busybox:1`,
    `registry.example:5000/team/train@sha256:...`): raises `error` naming `field`. The
    tag is required so that a job and a center's list of accepted images name one image
    alike (no implied `latest`)."""
    if len(value) > MAX_IMAGE_CHARS:
        raise error(f"{field} must be at most {MAX_IMAGE_CHARS} characters, got {len(value)}")
    found = IMAGE_PATTERN.fullmatch(value)
    if found is None:
        raise error(
            f"{field} must be an image reference such as icx/busybox:1 (lower-case name, "
            f"then :tag or @digest), got {shown(value)}"
        )
    # The first component is a registry only if it looks like a host; the rest (the
    # repository) is lower-case, as the engine requires.
    first, _, rest = found["name"].partition("/")
    is_host = bool(rest) and ("." in first or ":" in first or first == "localhost")
    repository = rest if is_host else found["name"]
    if repository != repository.lower():
        raise error(f"{field}: the image's repository must be lower-case, got {shown(value)}")
    if len(found["name"]) > MAX_IMAGE_NAME_CHARS:
        raise error(
            f"{field}: the image name must be at most {MAX_IMAGE_NAME_CHARS} characters, "
            f"got {len(found['name'])}"
        )
    if found["tag"] is None and found["digest"] is None:
        raise error(f"{field} must name a tag or a digest (e.g. {value}:1), got {shown(value)}")


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
    # What the job runs in: a container image ("" for none: the center's own way of
    # running a program), and the limits a container center enforces (0: not stated).
    image: str = ""
    memory_mb: int = 0
    millicpus: int = 0
    # The job needs the network; a container center gives it the host's, if it allows.
    network: bool = False

    def __post_init__(self) -> None:
        check_name("name", self.name, InvalidJobSpec)
        if self.accelerator != accelerators.ANY and not accelerators.is_known(self.accelerator):
            known = ", ".join(sorted(accelerators.CATALOGUE))
            raise InvalidJobSpec(
                f"accelerator must be 'any' or one of {known}, got {shown(self.accelerator)}"
            )
        if not 1 <= self.devices <= MAX_GANG:
            raise InvalidJobSpec(f"devices must be 1..{MAX_GANG}, got {self.devices}")
        if not 1 <= self.estimated_s <= MAX_ESTIMATED_S:
            raise InvalidJobSpec(
                f"estimated_seconds must be 1..{MAX_ESTIMATED_S}, got {self.estimated_s}"
            )
        if self.max_price_minor is not None:
            if self.max_price_minor <= 0:
                raise InvalidJobSpec(
                    f"max_price_minor must be positive, got {self.max_price_minor}"
                )
            if self.max_price_minor > MAX_BUDGET_MINOR:
                raise InvalidJobSpec(
                    f"max_price_minor must be at most {MAX_BUDGET_MINOR}, "
                    f"got {self.max_price_minor}"
                )
        if self.deadline_ms is not None and not 0 <= self.deadline_ms <= MAX_TIME_MS:
            raise InvalidJobSpec(
                f"deadline_ms must be 0..{MAX_TIME_MS} (the end of year 9999), "
                f"got {self.deadline_ms}"
            )
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise InvalidJobSpec(f"priority must be 0..{MAX_PRIORITY}, got {self.priority}")
        if not 0 <= self.data_mb <= MAX_DATA_MB:
            raise InvalidJobSpec(f"data_mb must be 0..{MAX_DATA_MB}, got {self.data_mb}")
        if any(not r for r in self.allowed_regions):
            raise InvalidJobSpec("allowed_regions must not contain an empty name")
        if len(self.allowed_regions) > MAX_REGIONS:
            raise InvalidJobSpec(
                f"allowed_regions must name at most {MAX_REGIONS} regions, "
                f"got {len(self.allowed_regions)}"
            )
        for i, region in enumerate(self.allowed_regions):
            check_name(f"allowed_regions[{i}]", region, InvalidJobSpec)
        check_name("data_region", self.data_region, InvalidJobSpec)
        self._check_exec()
        self._check_container()

    def _check_exec(self) -> None:
        """The command and environment: what exec can carry (no NUL, bounded)."""
        if not self.command or not self.command[0]:
            raise InvalidJobSpec("command must name a program, got an empty command")
        if len(self.command) > MAX_COMMAND_ARGS:
            raise InvalidJobSpec(
                f"command must have at most {MAX_COMMAND_ARGS} arguments, got {len(self.command)}"
            )
        for i, arg in enumerate(self.command):
            check_text(f"command[{i}]", arg, InvalidJobSpec, max_chars=MAX_ARG_CHARS)
        if len(self.env) > MAX_ENV_VARS:
            raise InvalidJobSpec(
                f"env must have at most {MAX_ENV_VARS} variables, got {len(self.env)}"
            )
        for key, value in self.env:
            check_env_name("env name", key, InvalidJobSpec)
            check_text(f"env[{key}]", value, InvalidJobSpec, max_chars=MAX_ARG_CHARS)
        total = sum(map(len, self.command)) + sum(len(k) + len(v) for k, v in self.env)
        if total > MAX_EXEC_CHARS:
            raise InvalidJobSpec(
                f"command and env must total at most {MAX_EXEC_CHARS} characters, got {total}"
            )

    def _check_container(self) -> None:
        """The image and the limits."""
        if self.image:
            check_image("image", self.image, InvalidJobSpec)
        if not 0 <= self.memory_mb <= MAX_JOB_MEMORY_MB:
            raise InvalidJobSpec(f"memory_mb must be 0..{MAX_JOB_MEMORY_MB}, got {self.memory_mb}")
        if not 0 <= self.millicpus <= MAX_MILLICPUS:
            raise InvalidJobSpec(f"millicpus must be 0..{MAX_MILLICPUS}, got {self.millicpus}")
        if not isinstance(self.network, bool):
            raise InvalidJobSpec(f"network must be true or false, got {shown(self.network)}")

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
        check_id("pool_id", self.pool_id, InvalidOffer)
        where = f"pool {self.pool_id!r}"
        if not accelerators.is_known(self.accelerator):
            raise InvalidOffer(
                f"{where}: accelerator {shown(self.accelerator)} is not in the catalogue"
            )
        if not 0 <= self.devices_total <= MAX_POOL_DEVICES:
            raise InvalidOffer(
                f"{where}: devices_total must be 0..{MAX_POOL_DEVICES}, got {self.devices_total}"
            )
        if not 0 <= self.devices_free <= self.devices_total:
            raise InvalidOffer(
                f"{where}: devices_free must be 0..devices_total ({self.devices_total}), "
                f"got {self.devices_free}"
            )
        for name, most in (
            ("memory_gb", MAX_MEMORY_GB),
            ("fp16_tflops", MAX_FP16_TFLOPS),
            ("power_w", MAX_POWER_W),
        ):
            value = getattr(self, name)
            if value <= 0:
                raise InvalidOffer(f"{where}: {name} must be positive, got {value}")
            if value > most:
                raise InvalidOffer(f"{where}: {name} must be at most {most}, got {value}")
        if not 0 <= self.price_minor_per_device_hour <= MAX_PRICE_MINOR_PER_DEVICE_HOUR:
            raise InvalidOffer(
                f"{where}: price_minor_per_device_hour must be "
                f"0..{MAX_PRICE_MINOR_PER_DEVICE_HOUR}, "
                f"got {self.price_minor_per_device_hour}"
            )


def _check_site(where: str, pue_milli: int, grid_g_co2_per_kwh: int) -> None:
    if not MIN_PUE_MILLI <= pue_milli <= MAX_PUE_MILLI:
        raise InvalidOffer(
            f"{where}: pue_milli must be {MIN_PUE_MILLI}..{MAX_PUE_MILLI}, got {pue_milli}"
        )
    if not 0 <= grid_g_co2_per_kwh <= MAX_GRID_G_CO2_PER_KWH:
        raise InvalidOffer(
            f"{where}: grid_g_co2_per_kwh must be 0..{MAX_GRID_G_CO2_PER_KWH}, "
            f"got {grid_g_co2_per_kwh}"
        )


def _check_pools(where: str, pools: tuple[Pool, ...]) -> None:
    if len(pools) > MAX_POOLS:
        raise InvalidOffer(f"{where}: at most {MAX_POOLS} pools, got {len(pools)}")
    seen: set[str] = set()
    for pool in pools:
        if pool.pool_id in seen:
            raise InvalidOffer(f"{where}: pool ids must be unique, got {pool.pool_id!r} twice")
        seen.add(pool.pool_id)


def _check_images(where: str, images: tuple[str, ...]) -> None:
    if len(images) > MAX_IMAGES:
        raise InvalidOffer(f"{where}: at most {MAX_IMAGES} images, got {len(images)}")
    for i, image in enumerate(images):
        check_image(f"{where}: images[{i}]", image, InvalidOffer)
    if len(set(images)) != len(images):
        twice = next(i for i in images if images.count(i) > 1)
        raise InvalidOffer(f"{where}: images must be unique, got {twice!r} twice")


def accepts_image(images: tuple[str, ...], image: str) -> bool:
    """Whether a center that runs `images` runs a job naming `image`: a container center
    (some images) runs only jobs naming one of them; any other runs only jobs naming
    none."""
    return image in images if image else not images


def _check_time(where: str, name: str, at_ms: int) -> None:
    if not 0 <= at_ms <= MAX_TIME_MS:
        raise InvalidOffer(f"{where}: {name} must be 0..{MAX_TIME_MS}, got {at_ms}")


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
    # The container images the center runs jobs in. Empty: it runs no containers, only
    # jobs that name no image; else it runs only jobs that name one of these.
    images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.center_id:
            raise InvalidOffer("center_id must not be empty")
        check_id("center_id", self.center_id, InvalidOffer)
        where = f"center {self.center_id}"
        check_name(f"{where}: name", self.name, InvalidOffer)
        if not self.region:
            raise InvalidOffer(f"{where}: region must not be empty")
        check_name(f"{where}: region", self.region, InvalidOffer)
        # `not <=` also refuses NaN, which compares false with everything.
        if not (math.isfinite(self.latitude) and -90.0 <= self.latitude <= 90.0):
            raise InvalidOffer(f"{where}: latitude must be -90..90, got {self.latitude}")
        if not (math.isfinite(self.longitude) and -180.0 <= self.longitude <= 180.0):
            raise InvalidOffer(f"{where}: longitude must be -180..180, got {self.longitude}")
        _check_site(f"center {self.center_id}", self.pue_milli, self.grid_g_co2_per_kwh)
        _check_pools(f"center {self.center_id}", self.pools)
        _check_images(where, self.images)


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
        check_id("offer center_id", self.center_id, InvalidOffer)
        where = f"offer from {self.center_id} seq {self.seq}"
        if not 1 <= self.seq <= MAX_SEQ:
            raise InvalidOffer(
                f"offer from {self.center_id}: seq must be 1..{MAX_SEQ}, got {self.seq}"
            )
        _check_time(where, "issued_at_ms", self.issued_at_ms)
        _check_time(where, "expires_at_ms", self.expires_at_ms)
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
    # Federation: the peer broker whose center runs it ("" for this broker's own), and,
    # at that peer, the broker the user submitted it to ("" when submitted here).
    broker: str = ""
    home: str = ""

    def __post_init__(self) -> None:
        check_id("job_id", self.job_id, InvalidArgument)
        check_id("tenant", self.tenant, InvalidArgument)


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
