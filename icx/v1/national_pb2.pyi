from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolFigures(_message.Message):
    __slots__ = ("pool_id", "accelerator", "devices_total", "devices_busy", "price_minor_per_device_hour", "power_w")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_BUSY_FIELD_NUMBER: _ClassVar[int]
    PRICE_MINOR_PER_DEVICE_HOUR_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    accelerator: str
    devices_total: int
    devices_busy: int
    price_minor_per_device_hour: int
    power_w: int
    def __init__(self, pool_id: _Optional[str] = ..., accelerator: _Optional[str] = ..., devices_total: _Optional[int] = ..., devices_busy: _Optional[int] = ..., price_minor_per_device_hour: _Optional[int] = ..., power_w: _Optional[int] = ...) -> None: ...

class Figures(_message.Message):
    __slots__ = ("centers", "centers_live", "devices_total", "devices_busy", "queue_length", "jobs_running", "jobs_done", "device_seconds", "utilisation", "energy_wh", "carbon_g", "spend_minor")
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    CENTERS_LIVE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    CARBON_G_FIELD_NUMBER: _ClassVar[int]
    SPEND_MINOR_FIELD_NUMBER: _ClassVar[int]
    centers: int
    centers_live: int
    devices_total: int
    devices_busy: int
    queue_length: int
    jobs_running: int
    jobs_done: int
    device_seconds: int
    utilisation: float
    energy_wh: int
    carbon_g: int
    spend_minor: int
    def __init__(self, centers: _Optional[int] = ..., centers_live: _Optional[int] = ..., devices_total: _Optional[int] = ..., devices_busy: _Optional[int] = ..., queue_length: _Optional[int] = ..., jobs_running: _Optional[int] = ..., jobs_done: _Optional[int] = ..., device_seconds: _Optional[int] = ..., utilisation: _Optional[float] = ..., energy_wh: _Optional[int] = ..., carbon_g: _Optional[int] = ..., spend_minor: _Optional[int] = ...) -> None: ...

class CenterFigures(_message.Message):
    __slots__ = ("center_id", "name", "region", "latitude", "longitude", "broker", "live", "pools", "price_minor_per_device_hour", "pue_milli", "grid_g_co2_per_kwh", "figures")
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    PRICE_MINOR_PER_DEVICE_HOUR_FIELD_NUMBER: _ClassVar[int]
    PUE_MILLI_FIELD_NUMBER: _ClassVar[int]
    GRID_G_CO2_PER_KWH_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    center_id: str
    name: str
    region: str
    latitude: float
    longitude: float
    broker: str
    live: bool
    pools: _containers.RepeatedCompositeFieldContainer[PoolFigures]
    price_minor_per_device_hour: int
    pue_milli: int
    grid_g_co2_per_kwh: int
    figures: Figures
    def __init__(self, center_id: _Optional[str] = ..., name: _Optional[str] = ..., region: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., broker: _Optional[str] = ..., live: bool = ..., pools: _Optional[_Iterable[_Union[PoolFigures, _Mapping]]] = ..., price_minor_per_device_hour: _Optional[int] = ..., pue_milli: _Optional[int] = ..., grid_g_co2_per_kwh: _Optional[int] = ..., figures: _Optional[_Union[Figures, _Mapping]] = ...) -> None: ...

class HubFigures(_message.Message):
    __slots__ = ("region", "figures")
    REGION_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    region: str
    figures: Figures
    def __init__(self, region: _Optional[str] = ..., figures: _Optional[_Union[Figures, _Mapping]] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("from_region", "to_region", "jobs", "device_seconds")
    FROM_REGION_FIELD_NUMBER: _ClassVar[int]
    TO_REGION_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    from_region: str
    to_region: str
    jobs: int
    device_seconds: int
    def __init__(self, from_region: _Optional[str] = ..., to_region: _Optional[str] = ..., jobs: _Optional[int] = ..., device_seconds: _Optional[int] = ...) -> None: ...

class GetOverviewRequest(_message.Message):
    __slots__ = ("period_ms",)
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    period_ms: int
    def __init__(self, period_ms: _Optional[int] = ...) -> None: ...

class GetOverviewResponse(_message.Message):
    __slots__ = ("as_of_ms", "period_ms", "centers", "hubs", "totals", "flows")
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    HUBS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    as_of_ms: int
    period_ms: int
    centers: _containers.RepeatedCompositeFieldContainer[CenterFigures]
    hubs: _containers.RepeatedCompositeFieldContainer[HubFigures]
    totals: Figures
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    def __init__(self, as_of_ms: _Optional[int] = ..., period_ms: _Optional[int] = ..., centers: _Optional[_Iterable[_Union[CenterFigures, _Mapping]]] = ..., hubs: _Optional[_Iterable[_Union[HubFigures, _Mapping]]] = ..., totals: _Optional[_Union[Figures, _Mapping]] = ..., flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ...) -> None: ...

class RunningJob(_message.Message):
    __slots__ = ("job_id", "tenant", "pool_id", "accelerator", "devices", "started_at_ms", "home_region", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HOME_REGION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant: str
    pool_id: str
    accelerator: str
    devices: int
    started_at_ms: int
    home_region: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., tenant: _Optional[str] = ..., pool_id: _Optional[str] = ..., accelerator: _Optional[str] = ..., devices: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., home_region: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetCenterRequest(_message.Message):
    __slots__ = ("center_id", "period_ms")
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    center_id: str
    period_ms: int
    def __init__(self, center_id: _Optional[str] = ..., period_ms: _Optional[int] = ...) -> None: ...

class GetCenterResponse(_message.Message):
    __slots__ = ("as_of_ms", "period_ms", "center", "running")
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    as_of_ms: int
    period_ms: int
    center: CenterFigures
    running: _containers.RepeatedCompositeFieldContainer[RunningJob]
    def __init__(self, as_of_ms: _Optional[int] = ..., period_ms: _Optional[int] = ..., center: _Optional[_Union[CenterFigures, _Mapping]] = ..., running: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ...) -> None: ...

class GetTimeSeriesRequest(_message.Message):
    __slots__ = ("window_ms", "step_ms")
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    window_ms: int
    step_ms: int
    def __init__(self, window_ms: _Optional[int] = ..., step_ms: _Optional[int] = ...) -> None: ...

class TimeStep(_message.Message):
    __slots__ = ("start_ms", "device_seconds", "utilisation", "queue_length", "jobs_started", "jobs_finished", "energy_wh", "carbon_g", "spend_minor")
    START_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_STARTED_FIELD_NUMBER: _ClassVar[int]
    JOBS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    CARBON_G_FIELD_NUMBER: _ClassVar[int]
    SPEND_MINOR_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    device_seconds: int
    utilisation: float
    queue_length: int
    jobs_started: int
    jobs_finished: int
    energy_wh: int
    carbon_g: int
    spend_minor: int
    def __init__(self, start_ms: _Optional[int] = ..., device_seconds: _Optional[int] = ..., utilisation: _Optional[float] = ..., queue_length: _Optional[int] = ..., jobs_started: _Optional[int] = ..., jobs_finished: _Optional[int] = ..., energy_wh: _Optional[int] = ..., carbon_g: _Optional[int] = ..., spend_minor: _Optional[int] = ...) -> None: ...

class GetTimeSeriesResponse(_message.Message):
    __slots__ = ("as_of_ms", "step_ms", "devices_total", "steps")
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    as_of_ms: int
    step_ms: int
    devices_total: int
    steps: _containers.RepeatedCompositeFieldContainer[TimeStep]
    def __init__(self, as_of_ms: _Optional[int] = ..., step_ms: _Optional[int] = ..., devices_total: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[TimeStep, _Mapping]]] = ...) -> None: ...

class ReasonCount(_message.Message):
    __slots__ = ("reason", "example", "jobs")
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    example: str
    jobs: int
    def __init__(self, reason: _Optional[str] = ..., example: _Optional[str] = ..., jobs: _Optional[int] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("number", "at_ms", "objective", "bound", "gap", "solver", "solve_seconds", "jobs_considered", "jobs_placed", "jobs_waiting", "waiting", "pools")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    SOLVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOBS_CONSIDERED_FIELD_NUMBER: _ClassVar[int]
    JOBS_PLACED_FIELD_NUMBER: _ClassVar[int]
    JOBS_WAITING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    number: int
    at_ms: int
    objective: float
    bound: float
    gap: float
    solver: str
    solve_seconds: float
    jobs_considered: int
    jobs_placed: int
    jobs_waiting: int
    waiting: _containers.RepeatedCompositeFieldContainer[ReasonCount]
    pools: int
    def __init__(self, number: _Optional[int] = ..., at_ms: _Optional[int] = ..., objective: _Optional[float] = ..., bound: _Optional[float] = ..., gap: _Optional[float] = ..., solver: _Optional[str] = ..., solve_seconds: _Optional[float] = ..., jobs_considered: _Optional[int] = ..., jobs_placed: _Optional[int] = ..., jobs_waiting: _Optional[int] = ..., waiting: _Optional[_Iterable[_Union[ReasonCount, _Mapping]]] = ..., pools: _Optional[int] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "policy_json", "set_by", "set_at_ms", "comment")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy_json: str
    set_by: str
    set_at_ms: int
    comment: str
    def __init__(self, version: _Optional[int] = ..., policy_json: _Optional[str] = ..., set_by: _Optional[str] = ..., set_at_ms: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("policy_json", "comment")
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    policy_json: str
    comment: str
    def __init__(self, policy_json: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class SetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPolicyChangesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListPolicyChangesResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, changes: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...
