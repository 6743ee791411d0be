from icx.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "offer", "heartbeat", "claim_reply", "job_update", "log", "usage", "proof")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CLAIM_REPLY_FIELD_NUMBER: _ClassVar[int]
    JOB_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    offer: _types_pb2.Offer
    heartbeat: Heartbeat
    claim_reply: ClaimReply
    job_update: JobUpdate
    log: _types_pb2.LogChunk
    usage: UsageReport
    proof: HelloProof
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., offer: _Optional[_Union[_types_pb2.Offer, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., claim_reply: _Optional[_Union[ClaimReply, _Mapping]] = ..., job_update: _Optional[_Union[JobUpdate, _Mapping]] = ..., log: _Optional[_Union[_types_pb2.LogChunk, _Mapping]] = ..., usage: _Optional[_Union[UsageReport, _Mapping]] = ..., proof: _Optional[_Union[HelloProof, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "reserve", "launch", "cancel", "heartbeat", "usage_ack", "challenge")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    USAGE_ACK_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    reserve: Reserve
    launch: Launch
    cancel: Cancel
    heartbeat: Heartbeat
    usage_ack: UsageAck
    challenge: Challenge
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., reserve: _Optional[_Union[Reserve, _Mapping]] = ..., launch: _Optional[_Union[Launch, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., usage_ack: _Optional[_Union[UsageAck, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("center", "agent_version", "held", "usage_key")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    USAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    center: _types_pb2.CenterDescriptor
    agent_version: str
    held: _containers.RepeatedCompositeFieldContainer[HeldClaim]
    usage_key: str
    def __init__(self, center: _Optional[_Union[_types_pb2.CenterDescriptor, _Mapping]] = ..., agent_version: _Optional[str] = ..., held: _Optional[_Iterable[_Union[HeldClaim, _Mapping]]] = ..., usage_key: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class HelloProof(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class HeldClaim(_message.Message):
    __slots__ = ("claim_id", "job_id", "state", "exit_code")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    job_id: str
    state: _types_pb2.JobState
    exit_code: int
    def __init__(self, claim_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.JobState, str]] = ..., exit_code: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "center_expiry_ms", "stale_claim_ids")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CENTER_EXPIRY_MS_FIELD_NUMBER: _ClassVar[int]
    STALE_CLAIM_IDS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    center_expiry_ms: int
    stale_claim_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., center_expiry_ms: _Optional[int] = ..., stale_claim_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at_ms",)
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sent_at_ms: int
    def __init__(self, sent_at_ms: _Optional[int] = ...) -> None: ...

class Reserve(_message.Message):
    __slots__ = ("claim_id", "job_id", "pool_id", "devices", "lease_expires_at_ms", "image")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    job_id: str
    pool_id: str
    devices: int
    lease_expires_at_ms: int
    image: str
    def __init__(self, claim_id: _Optional[str] = ..., job_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., devices: _Optional[int] = ..., lease_expires_at_ms: _Optional[int] = ..., image: _Optional[str] = ...) -> None: ...

class ClaimReply(_message.Message):
    __slots__ = ("claim_id", "accepted", "reason", "device_indices")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDICES_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    accepted: bool
    reason: str
    device_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, claim_id: _Optional[str] = ..., accepted: bool = ..., reason: _Optional[str] = ..., device_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class Launch(_message.Message):
    __slots__ = ("claim_id", "job_id", "spec", "tenant")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    job_id: str
    spec: _types_pb2.JobSpec
    tenant: str
    def __init__(self, claim_id: _Optional[str] = ..., job_id: _Optional[str] = ..., spec: _Optional[_Union[_types_pb2.JobSpec, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("claim_id", "job_id", "reason")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    job_id: str
    reason: str
    def __init__(self, claim_id: _Optional[str] = ..., job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class JobUpdate(_message.Message):
    __slots__ = ("claim_id", "job_id", "state", "exit_code", "message", "at_ms")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    job_id: str
    state: _types_pb2.JobState
    exit_code: int
    message: str
    at_ms: int
    def __init__(self, claim_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.JobState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    def __init__(self, entry: _Optional[bytes] = ...) -> None: ...

class UsageAck(_message.Message):
    __slots__ = ("record_id", "accepted", "index", "reason")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    accepted: bool
    index: int
    reason: str
    def __init__(self, record_id: _Optional[str] = ..., accepted: bool = ..., index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
