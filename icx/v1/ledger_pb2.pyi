from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetLogKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLogKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("note",)
    NOTE_FIELD_NUMBER: _ClassVar[int]
    note: str
    def __init__(self, note: _Optional[str] = ...) -> None: ...

class ProveRecordRequest(_message.Message):
    __slots__ = ("record_id", "index")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    index: int
    def __init__(self, record_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ProveRecordResponse(_message.Message):
    __slots__ = ("bundle_json",)
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    bundle_json: str
    def __init__(self, bundle_json: _Optional[str] = ...) -> None: ...

class GetStatementRequest(_message.Message):
    __slots__ = ("period", "party")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    period: str
    party: str
    def __init__(self, period: _Optional[str] = ..., party: _Optional[str] = ...) -> None: ...

class GetStatementResponse(_message.Message):
    __slots__ = ("statement",)
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    statement: bytes
    def __init__(self, statement: _Optional[bytes] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("size1", "size2")
    SIZE1_FIELD_NUMBER: _ClassVar[int]
    SIZE2_FIELD_NUMBER: _ClassVar[int]
    size1: int
    size2: int
    def __init__(self, size1: _Optional[int] = ..., size2: _Optional[int] = ...) -> None: ...

class GetConsistencyProofResponse(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AddCosignatureRequest(_message.Message):
    __slots__ = ("note",)
    NOTE_FIELD_NUMBER: _ClassVar[int]
    note: str
    def __init__(self, note: _Optional[str] = ...) -> None: ...

class AddCosignatureResponse(_message.Message):
    __slots__ = ("kept",)
    KEPT_FIELD_NUMBER: _ClassVar[int]
    kept: int
    def __init__(self, kept: _Optional[int] = ...) -> None: ...

class ListJobRecordsRequest(_message.Message):
    __slots__ = ("job_id", "after_index")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_index: int
    def __init__(self, job_id: _Optional[str] = ..., after_index: _Optional[int] = ...) -> None: ...

class JobRecord(_message.Message):
    __slots__ = ("index", "entry")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    index: int
    entry: bytes
    def __init__(self, index: _Optional[int] = ..., entry: _Optional[bytes] = ...) -> None: ...

class ListJobRecordsResponse(_message.Message):
    __slots__ = ("records", "next_after_index")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[JobRecord]
    next_after_index: int
    def __init__(self, records: _Optional[_Iterable[_Union[JobRecord, _Mapping]]] = ..., next_after_index: _Optional[int] = ...) -> None: ...

class GetTenantBillRequest(_message.Message):
    __slots__ = ("period", "tenant")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    period: str
    tenant: str
    def __init__(self, period: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class JobBill(_message.Message):
    __slots__ = ("job_id", "records", "device_s", "energy_wh", "carbon_g", "charge_minor")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    CARBON_G_FIELD_NUMBER: _ClassVar[int]
    CHARGE_MINOR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    records: int
    device_s: int
    energy_wh: int
    carbon_g: int
    charge_minor: int
    def __init__(self, job_id: _Optional[str] = ..., records: _Optional[int] = ..., device_s: _Optional[int] = ..., energy_wh: _Optional[int] = ..., carbon_g: _Optional[int] = ..., charge_minor: _Optional[int] = ...) -> None: ...

class GetTenantBillResponse(_message.Message):
    __slots__ = ("tenant", "period", "currency", "checkpoint_size", "jobs")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    period: str
    currency: str
    checkpoint_size: int
    jobs: _containers.RepeatedCompositeFieldContainer[JobBill]
    def __init__(self, tenant: _Optional[str] = ..., period: _Optional[str] = ..., currency: _Optional[str] = ..., checkpoint_size: _Optional[int] = ..., jobs: _Optional[_Iterable[_Union[JobBill, _Mapping]]] = ...) -> None: ...
