from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_CLAIMED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_CLAIMED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream

class Pool(_message.Message):
    __slots__ = ("pool_id", "accelerator", "devices_total", "devices_free", "memory_gb_per_device", "fp16_tflops_per_device", "power_w_per_device", "price_minor_per_device_hour")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FREE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_GB_PER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    FP16_TFLOPS_PER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    POWER_W_PER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_MINOR_PER_DEVICE_HOUR_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    accelerator: str
    devices_total: int
    devices_free: int
    memory_gb_per_device: int
    fp16_tflops_per_device: int
    power_w_per_device: int
    price_minor_per_device_hour: int
    def __init__(self, pool_id: _Optional[str] = ..., accelerator: _Optional[str] = ..., devices_total: _Optional[int] = ..., devices_free: _Optional[int] = ..., memory_gb_per_device: _Optional[int] = ..., fp16_tflops_per_device: _Optional[int] = ..., power_w_per_device: _Optional[int] = ..., price_minor_per_device_hour: _Optional[int] = ...) -> None: ...

class CenterDescriptor(_message.Message):
    __slots__ = ("center_id", "name", "region", "latitude", "longitude", "pue_milli", "grid_g_co2_per_kwh", "pools", "images")
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    PUE_MILLI_FIELD_NUMBER: _ClassVar[int]
    GRID_G_CO2_PER_KWH_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    center_id: str
    name: str
    region: str
    latitude: float
    longitude: float
    pue_milli: int
    grid_g_co2_per_kwh: int
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, center_id: _Optional[str] = ..., name: _Optional[str] = ..., region: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., pue_milli: _Optional[int] = ..., grid_g_co2_per_kwh: _Optional[int] = ..., pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ..., images: _Optional[_Iterable[str]] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("center_id", "seq", "issued_at_ms", "expires_at_ms", "pue_milli", "grid_g_co2_per_kwh", "pools")
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PUE_MILLI_FIELD_NUMBER: _ClassVar[int]
    GRID_G_CO2_PER_KWH_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    center_id: str
    seq: int
    issued_at_ms: int
    expires_at_ms: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    def __init__(self, center_id: _Optional[str] = ..., seq: _Optional[int] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., pue_milli: _Optional[int] = ..., grid_g_co2_per_kwh: _Optional[int] = ..., pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "accelerator", "devices", "estimated_seconds", "allowed_regions", "max_price_minor", "deadline_ms", "priority", "data_region", "data_mb", "command", "env", "image", "memory_mb", "millicpus", "network")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_MINOR_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DATA_REGION_FIELD_NUMBER: _ClassVar[int]
    DATA_MB_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MILLICPUS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    accelerator: str
    devices: int
    estimated_seconds: int
    allowed_regions: _containers.RepeatedScalarFieldContainer[str]
    max_price_minor: int
    deadline_ms: int
    priority: int
    data_region: str
    data_mb: int
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    image: str
    memory_mb: int
    millicpus: int
    network: bool
    def __init__(self, name: _Optional[str] = ..., accelerator: _Optional[str] = ..., devices: _Optional[int] = ..., estimated_seconds: _Optional[int] = ..., allowed_regions: _Optional[_Iterable[str]] = ..., max_price_minor: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., priority: _Optional[int] = ..., data_region: _Optional[str] = ..., data_mb: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., image: _Optional[str] = ..., memory_mb: _Optional[int] = ..., millicpus: _Optional[int] = ..., network: bool = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "tenant", "spec", "state", "submitted_at_ms", "updated_at_ms", "center_id", "pool_id", "device_indices", "attempts", "exit_code", "reason", "explanation", "broker", "home")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDICES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant: str
    spec: JobSpec
    state: JobState
    submitted_at_ms: int
    updated_at_ms: int
    center_id: str
    pool_id: str
    device_indices: _containers.RepeatedScalarFieldContainer[int]
    attempts: int
    exit_code: int
    reason: str
    explanation: str
    broker: str
    home: str
    def __init__(self, job_id: _Optional[str] = ..., tenant: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., submitted_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., center_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., device_indices: _Optional[_Iterable[int]] = ..., attempts: _Optional[int] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., explanation: _Optional[str] = ..., broker: _Optional[str] = ..., home: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "at_ms", "state", "center_id", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    at_ms: int
    state: JobState
    center_id: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., at_ms: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., center_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("job_id", "seq", "stream", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    stream: LogStream
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...
