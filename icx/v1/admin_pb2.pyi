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
