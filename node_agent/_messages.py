"""What the agent and its broker say to each other, as domain values. Only the link
(`node_agent._link`) turns these into the stream's messages and back."""

from __future__ import annotations

from dataclasses import dataclass

from core.states import JobState
from core.types import JobSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    heartbeat_interval_ms: int
    center_expiry_ms: int
    stale_claim_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveOrder:
    claim_id: str
    job_id: str
    pool_id: str
    devices: int
    lease_expires_at_ms: int
    image: str = ""  # the container image the job names, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimAnswer:
    claim_id: str
    accepted: bool
    device_indices: tuple[int, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchOrder:
    claim_id: str
    job_id: str
    spec: JobSpec
    tenant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRefusal:
    """A launch the link could not read (its spec does not check): `reason` says why."""

    claim_id: str
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder:
    claim_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageAck:
    record_id: str
    accepted: bool
    index: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdate:
    claim_id: str
    job_id: str
    state: JobState
    at_ms: int
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldClaim:
    """A claim the agent holds, for its Hello: CLAIMED, RUNNING, or the final state of
    a job that ended while the broker may not have heard."""

    claim_id: str
    job_id: str
    state: JobState
    exit_code: int | None = None
