"""Protocol messages <-> domain values, in one place. Only service code and the CLI
import this module; libraries never see a protobuf.

proto3 zero values: an empty string means "not set" for ids, regions and a job's image
(no container), 0 "not stated" for a job's memory_mb and millicpus; optional
fields (max_price_minor, deadline_ms, exit_code, a center's offer) use presence. A
*_UNSPECIFIED enum value is refused. A ListJobsResponse total below the jobs it carries
(0 from a broker that predates the field) is read as the number of jobs carried.
"""

from __future__ import annotations

from core.errors import InvalidArgument
from core.ids import check_id
from core.states import JobState
from core.types import (
    CenterDescriptor,
    CenterId,
    Job,
    JobEvent,
    JobId,
    JobSpec,
    LogChunk,
    Offer,
    Pool,
    PoolId,
)
from core.views import CenterStatus, JobPage, QuoteLine, RoundDump
from icx.v1 import admin_pb2, broker_pb2
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


def id_from_proto(field: str, value: str) -> str:
    """An id a caller sent (a job id, a request id, a tenant): raises InvalidArgument
    naming `field` unless it follows the id grammar (`core.ids`), quoting at most a short
    prefix of it."""
    check_id(field, value, InvalidArgument)
    return value


def job_id_from_proto(value: str) -> JobId:
    """A request's job id; unlike a missing job (NOT_FOUND), a malformed one is refused
    as INVALID_ARGUMENT without echoing it."""
    return JobId(id_from_proto("job_id", value))


def request_id_from_proto(value: str) -> str:
    """A SubmitJob request id: empty (none) or an id."""
    return value and id_from_proto("request_id", value)


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
        image=spec.image,
        memory_mb=spec.memory_mb,
        millicpus=spec.millicpus,
        network=spec.network,
    )
    if spec.max_price_minor is not None:
        msg.max_price_minor = spec.max_price_minor
    if spec.deadline_ms is not None:
        msg.deadline_ms = spec.deadline_ms
    return msg


def spec_from_proto(msg: pb.JobSpec) -> JobSpec:
    """Raises InvalidJobSpec naming the first bad field (`JobSpec` checks them all)."""
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
        image=msg.image,
        memory_mb=msg.memory_mb,
        millicpus=msg.millicpus,
        network=msg.network,
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
        images=list(center.images),
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
        images=tuple(msg.images),
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
        broker=job.broker,
        home=job.home,
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


def job_from_proto(msg: pb.Job) -> Job:
    return Job(
        job_id=JobId(msg.job_id),
        tenant=msg.tenant,
        spec=spec_from_proto(msg.spec),
        state=state_from_proto(msg.state),
        submitted_at_ms=msg.submitted_at_ms,
        updated_at_ms=msg.updated_at_ms,
        center_id=CenterId(msg.center_id) if msg.center_id else None,
        pool_id=PoolId(msg.pool_id) if msg.pool_id else None,
        device_indices=tuple(msg.device_indices),
        attempts=msg.attempts,
        exit_code=msg.exit_code if msg.HasField("exit_code") else None,
        reason=msg.reason,
        explanation=msg.explanation,
        broker=msg.broker,
        home=msg.home,
    )


def event_from_proto(msg: pb.JobEvent) -> JobEvent:
    return JobEvent(
        job_id=JobId(msg.job_id),
        seq=msg.seq,
        at_ms=msg.at_ms,
        state=state_from_proto(msg.state),
        center_id=CenterId(msg.center_id) if msg.center_id else None,
        message=msg.message,
    )


def log_from_proto(msg: pb.LogChunk) -> LogChunk:
    return LogChunk(
        job_id=JobId(msg.job_id),
        seq=msg.seq,
        stream=log_stream_from_proto(msg.stream),
        data=msg.data,
    )


def job_page_to_proto(page: JobPage) -> broker_pb2.ListJobsResponse:
    return broker_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in page.jobs], total=page.total)


def job_page_from_proto(msg: broker_pb2.ListJobsResponse) -> JobPage:
    jobs = tuple(job_from_proto(j) for j in msg.jobs)
    return JobPage(jobs=jobs, total=max(msg.total, len(jobs)))


def center_status_to_proto(status: CenterStatus) -> broker_pb2.CenterStatus:
    msg = broker_pb2.CenterStatus(
        center=center_to_proto(status.center),
        connected=status.connected,
        last_seen_ms=status.last_seen_ms,
        jobs_running=status.jobs_running,
    )
    if status.offer is not None:
        msg.offer.CopyFrom(offer_to_proto(status.offer))
    return msg


def center_status_from_proto(msg: broker_pb2.CenterStatus) -> CenterStatus:
    return CenterStatus(
        center=center_from_proto(msg.center),
        offer=offer_from_proto(msg.offer) if msg.HasField("offer") else None,
        connected=msg.connected,
        last_seen_ms=msg.last_seen_ms,
        jobs_running=msg.jobs_running,
    )


def quote_line_to_proto(line: QuoteLine) -> broker_pb2.QuoteLine:
    return broker_pb2.QuoteLine(
        rank=line.rank,
        center_id=line.center_id,
        pool_id=line.pool_id,
        region=line.region,
        accelerator=line.accelerator,
        price_minor_per_device_hour=line.price_minor_per_device_hour,
        charge_minor=line.charge_minor,
        rtt_ms=line.rtt_ms,
        transfer_ms=line.transfer_ms,
        energy_wh=line.energy_wh,
        carbon_g=line.carbon_g,
        has_capacity=line.has_capacity,
        feasible=line.feasible,
        reason=line.reason,
    )


def quote_line_from_proto(msg: broker_pb2.QuoteLine) -> QuoteLine:
    return QuoteLine(
        rank=msg.rank,
        center_id=CenterId(msg.center_id),
        pool_id=PoolId(msg.pool_id),
        region=msg.region,
        accelerator=msg.accelerator,
        price_minor_per_device_hour=msg.price_minor_per_device_hour,
        charge_minor=msg.charge_minor,
        rtt_ms=msg.rtt_ms,
        transfer_ms=msg.transfer_ms,
        energy_wh=msg.energy_wh,
        carbon_g=msg.carbon_g,
        has_capacity=msg.has_capacity,
        feasible=msg.feasible,
        reason=msg.reason,
    )


def round_dump_to_proto(dump: RoundDump) -> admin_pb2.DumpRoundResponse:
    return admin_pb2.DumpRoundResponse(
        round=dump.number,
        at_ms=dump.at_ms,
        problem_json=dump.problem_json,
        solution_json=dump.solution_json,
    )


def round_dump_from_proto(msg: admin_pb2.DumpRoundResponse) -> RoundDump:
    return RoundDump(
        number=msg.round,
        at_ms=msg.at_ms,
        problem_json=msg.problem_json,
        solution_json=msg.solution_json,
    )
