from icx.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardJobRequest(_message.Message):
    __slots__ = ("job", "center_id", "pool_id", "explanation")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CENTER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    center_id: str
    pool_id: str
    explanation: str
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., center_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., explanation: _Optional[str] = ...) -> None: ...

class ForwardJobResponse(_message.Message):
    __slots__ = ("accepted", "reason", "job")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    job: _types_pb2.Job
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ..., job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class FollowJobRequest(_message.Message):
    __slots__ = ("job_id", "after_event_seq", "after_log_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_event_seq: int
    after_log_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_event_seq: _Optional[int] = ..., after_log_seq: _Optional[int] = ...) -> None: ...

class FollowJobResponse(_message.Message):
    __slots__ = ("event", "log", "job")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    event: _types_pb2.JobEvent
    log: _types_pb2.LogChunk
    job: _types_pb2.Job
    def __init__(self, event: _Optional[_Union[_types_pb2.JobEvent, _Mapping]] = ..., log: _Optional[_Union[_types_pb2.LogChunk, _Mapping]] = ..., job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class CancelForwardedRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelForwardedResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class JobRecordsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobRecordsResponse(_message.Message):
    __slots__ = ("bundles_json",)
    BUNDLES_JSON_FIELD_NUMBER: _ClassVar[int]
    bundles_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundles_json: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("broker", "region", "address", "version", "age_ms", "centers", "devices_free", "live", "witness_key")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FREE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    WITNESS_KEY_FIELD_NUMBER: _ClassVar[int]
    broker: str
    region: str
    address: str
    version: int
    age_ms: int
    centers: int
    devices_free: int
    live: bool
    witness_key: str
    def __init__(self, broker: _Optional[str] = ..., region: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[int] = ..., age_ms: _Optional[int] = ..., centers: _Optional[int] = ..., devices_free: _Optional[int] = ..., live: bool = ..., witness_key: _Optional[str] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("broker", "region", "peer_address", "peers", "published", "received", "pulls", "pull_failures", "dropped", "forwarded_out", "forwarded_in", "witness_key")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BROKER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    PULL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_OUT_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_IN_FIELD_NUMBER: _ClassVar[int]
    WITNESS_KEY_FIELD_NUMBER: _ClassVar[int]
    broker: str
    region: str
    peer_address: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    published: int
    received: int
    pulls: int
    pull_failures: int
    dropped: _containers.ScalarMap[str, int]
    forwarded_out: int
    forwarded_in: int
    witness_key: str
    def __init__(self, broker: _Optional[str] = ..., region: _Optional[str] = ..., peer_address: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., published: _Optional[int] = ..., received: _Optional[int] = ..., pulls: _Optional[int] = ..., pull_failures: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ..., forwarded_out: _Optional[int] = ..., forwarded_in: _Optional[int] = ..., witness_key: _Optional[str] = ...) -> None: ...
