from icx.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: _types_pb2.JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[_types_pb2.JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_types_pb2.JobState]
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_types_pb2.JobState, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "total", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Job]
    total: int
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_types_pb2.Job, _Mapping]]] = ..., total: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "include_logs", "snapshot")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    include_logs: bool
    snapshot: bool
    def __init__(self, job_id: _Optional[str] = ..., include_logs: bool = ..., snapshot: bool = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event", "log")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    event: _types_pb2.JobEvent
    log: _types_pb2.LogChunk
    def __init__(self, event: _Optional[_Union[_types_pb2.JobEvent, _Mapping]] = ..., log: _Optional[_Union[_types_pb2.LogChunk, _Mapping]] = ...) -> None: ...

class ListCentersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CenterStatus(_message.Message):
    __slots__ = ("center", "offer", "connected", "last_seen_ms", "jobs_running")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    center: _types_pb2.CenterDescriptor
    offer: _types_pb2.Offer
    connected: bool
    last_seen_ms: int
    jobs_running: int
    def __init__(self, center: _Optional[_Union[_types_pb2.CenterDescriptor, _Mapping]] = ..., offer: _Optional[_Union[_types_pb2.Offer, _Mapping]] = ..., connected: bool = ..., last_seen_ms: _Optional[int] = ..., jobs_running: _Optional[int] = ...) -> None: ...

class ListCentersResponse(_message.Message):
    __slots__ = ("centers",)
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    centers: _containers.RepeatedCompositeFieldContainer[CenterStatus]
    def __init__(self, centers: _Optional[_Iterable[_Union[CenterStatus, _Mapping]]] = ...) -> None: ...

class QuoteJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _types_pb2.JobSpec
    def __init__(self, spec: _Optional[_Union[_types_pb2.JobSpec, _Mapping]] = ...) -> None: ...

class QuoteLine(_message.Message):
    __slots__ = ("rank", "center_id", "pool_id", "region", "accelerator", "price_minor_per_device_hour", "charge_minor", "rtt_ms", "transfer_ms", "energy_wh", "carbon_g", "has_capacity", "feasible", "reason")
    RANK_FIELD_NUMBER: _ClassVar[int]
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    PRICE_MINOR_PER_DEVICE_HOUR_FIELD_NUMBER: _ClassVar[int]
    CHARGE_MINOR_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    CARBON_G_FIELD_NUMBER: _ClassVar[int]
    HAS_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rank: int
    center_id: str
    pool_id: str
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
    reason: str
    def __init__(self, rank: _Optional[int] = ..., center_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., region: _Optional[str] = ..., accelerator: _Optional[str] = ..., price_minor_per_device_hour: _Optional[int] = ..., charge_minor: _Optional[int] = ..., rtt_ms: _Optional[int] = ..., transfer_ms: _Optional[int] = ..., energy_wh: _Optional[int] = ..., carbon_g: _Optional[int] = ..., has_capacity: bool = ..., feasible: bool = ..., reason: _Optional[str] = ...) -> None: ...

class QuoteJobResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[QuoteLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[QuoteLine, _Mapping]]] = ...) -> None: ...
