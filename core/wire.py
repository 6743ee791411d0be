"""Protocol messages <-> domain values, in one place. Only service code and the CLI
import this module; libraries never see a protobuf.

proto3 zero values: an empty string means "not set" for ids and regions; optional
fields (max_price_minor, deadline_ms, exit_code) use presence. A *_UNSPECIFIED enum
value is refused.
"""

from __future__ import annotations

from core.errors import InvalidArgument, InvalidJobSpec
from core.states import JobState
from core.types import (
    CenterDescriptor,
    CenterId,
    Job,
    JobEvent,
    JobSpec,
    LogChunk,
    Offer,
    Pool,
    PoolId,
)
from icx.v1 import types_pb2 as pb

_STATE_TO_PB = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.CLAIMED: pb.JOB_STATE_CLAIMED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_STREAM_TO_PB = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}
_STREAM_FROM_PB = {v: k for k, v in _STREAM_TO_PB.items()}


def state_to_proto(state: JobState) -> pb.JobState:
    return _STATE_TO_PB[state]


def state_from_proto(value: int) -> JobState:
    try:
        return _STATE_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"state must be a known job state, got {value}") from None


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    msg = pb.JobSpec(
        name=spec.name,
        accelerator=spec.accelerator,
        devices=spec.devices,
        estimated_seconds=spec.estimated_s,
        allowed_regions=list(spec.allowed_regions),
        priority=spec.priority,
        data_region=spec.data_region,
        data_mb=spec.data_mb,
        command=list(spec.command),
        env=dict(spec.env),
    )
    if spec.max_price_minor is not None:
        msg.max_price_minor = spec.max_price_minor
    if spec.deadline_ms is not None:
        msg.deadline_ms = spec.deadline_ms
    return msg


def spec_from_proto(msg: pb.JobSpec) -> JobSpec:
    """Raises InvalidJobSpec naming the first bad field."""
    for key in msg.env:
        if not key or "=" in key:
            raise InvalidJobSpec(f"env names must be non-empty without '=', got {key!r}")
    return JobSpec(
        name=msg.name,
        accelerator=msg.accelerator,
        devices=msg.devices,
        estimated_s=msg.estimated_seconds,
        allowed_regions=tuple(msg.allowed_regions),
        max_price_minor=msg.max_price_minor if msg.HasField("max_price_minor") else None,
        deadline_ms=msg.deadline_ms if msg.HasField("deadline_ms") else None,
        priority=msg.priority,
        data_region=msg.data_region,
        data_mb=msg.data_mb,
        command=tuple(msg.command),
        env=tuple(sorted(msg.env.items())),
    )


def pool_to_proto(pool: Pool) -> pb.Pool:
    return pb.Pool(
        pool_id=pool.pool_id,
        accelerator=pool.accelerator,
        devices_total=pool.devices_total,
        devices_free=pool.devices_free,
        memory_gb_per_device=pool.memory_gb,
        fp16_tflops_per_device=pool.fp16_tflops,
        power_w_per_device=pool.power_w,
        price_minor_per_device_hour=pool.price_minor_per_device_hour,
    )


def pool_from_proto(msg: pb.Pool) -> Pool:
    return Pool(
        pool_id=PoolId(msg.pool_id),
        accelerator=msg.accelerator,
        devices_total=msg.devices_total,
        devices_free=msg.devices_free,
        memory_gb=msg.memory_gb_per_device,
        fp16_tflops=msg.fp16_tflops_per_device,
        power_w=msg.power_w_per_device,
        price_minor_per_device_hour=msg.price_minor_per_device_hour,
    )


def center_to_proto(center: CenterDescriptor) -> pb.CenterDescriptor:
    return pb.CenterDescriptor(
        center_id=center.center_id,
        name=center.name,
        region=center.region,
        latitude=center.latitude,
        longitude=center.longitude,
        pue_milli=center.pue_milli,
        grid_g_co2_per_kwh=center.grid_g_co2_per_kwh,
        pools=[pool_to_proto(p) for p in center.pools],
    )


def center_from_proto(msg: pb.CenterDescriptor) -> CenterDescriptor:
    return CenterDescriptor(
        center_id=CenterId(msg.center_id),
        name=msg.name,
        region=msg.region,
        latitude=msg.latitude,
        longitude=msg.longitude,
        pue_milli=msg.pue_milli,
        grid_g_co2_per_kwh=msg.grid_g_co2_per_kwh,
        pools=tuple(pool_from_proto(p) for p in msg.pools),
    )


def offer_to_proto(offer: Offer) -> pb.Offer:
    return pb.Offer(
        center_id=offer.center_id,
        seq=offer.seq,
        issued_at_ms=offer.issued_at_ms,
        expires_at_ms=offer.expires_at_ms,
        pue_milli=offer.pue_milli,
        grid_g_co2_per_kwh=offer.grid_g_co2_per_kwh,
        pools=[pool_to_proto(p) for p in offer.pools],
    )


def offer_from_proto(msg: pb.Offer) -> Offer:
    return Offer(
        center_id=CenterId(msg.center_id),
        seq=msg.seq,
        issued_at_ms=msg.issued_at_ms,
        expires_at_ms=msg.expires_at_ms,
        pue_milli=msg.pue_milli,
        grid_g_co2_per_kwh=msg.grid_g_co2_per_kwh,
        pools=tuple(pool_from_proto(p) for p in msg.pools),
    )


def job_to_proto(job: Job) -> pb.Job:
    msg = pb.Job(
        job_id=job.job_id,
        tenant=job.tenant,
        spec=spec_to_proto(job.spec),
        state=state_to_proto(job.state),
        submitted_at_ms=job.submitted_at_ms,
        updated_at_ms=job.updated_at_ms,
        center_id=job.center_id or "",
        pool_id=job.pool_id or "",
        device_indices=list(job.device_indices),
        attempts=job.attempts,
        reason=job.reason,
        explanation=job.explanation,
    )
    if job.exit_code is not None:
        msg.exit_code = job.exit_code
    return msg


def event_to_proto(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(
        job_id=event.job_id,
        seq=event.seq,
        at_ms=event.at_ms,
        state=state_to_proto(event.state),
        center_id=event.center_id or "",
        message=event.message,
    )


def log_to_proto(chunk: LogChunk) -> pb.LogChunk:
    return pb.LogChunk(
        job_id=chunk.job_id,
        seq=chunk.seq,
        stream=_STREAM_TO_PB[chunk.stream],
        data=chunk.data,
    )


def log_stream_from_proto(value: int) -> str:
    try:
        return _STREAM_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(f"stream must be stdout or stderr, got {value}") from None
