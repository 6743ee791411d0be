from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DumpRoundRequest(_message.Message):
    __slots__ = ("current",)
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    current: bool
    def __init__(self, current: bool = ...) -> None: ...

class DumpRoundResponse(_message.Message):
    __slots__ = ("round", "at_ms", "problem_json", "solution_json")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_JSON_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_JSON_FIELD_NUMBER: _ClassVar[int]
    round: int
    at_ms: int
    problem_json: str
    solution_json: str
    def __init__(self, round: _Optional[int] = ..., at_ms: _Optional[int] = ..., problem_json: _Optional[str] = ..., solution_json: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("name", "role", "region", "tenant", "serial", "issuer", "not_after_ms", "authenticated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    region: str
    tenant: str
    serial: str
    issuer: str
    not_after_ms: int
    authenticated: bool
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., region: _Optional[str] = ..., tenant: _Optional[str] = ..., serial: _Optional[str] = ..., issuer: _Optional[str] = ..., not_after_ms: _Optional[int] = ..., authenticated: bool = ...) -> None: ...

class UpdateRevocationsRequest(_message.Message):
    __slots__ = ("revocation_list",)
    REVOCATION_LIST_FIELD_NUMBER: _ClassVar[int]
    revocation_list: bytes
    def __init__(self, revocation_list: _Optional[bytes] = ...) -> None: ...

class UpdateRevocationsResponse(_message.Message):
    __slots__ = ("number", "revoked")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    number: int
    revoked: int
    def __init__(self, number: _Optional[int] = ..., revoked: _Optional[int] = ...) -> None: ...
