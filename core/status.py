"""The one table between the error tree and gRPC status codes, read both ways.

The broker answers an IcxError with `status_for(exc)` and its message; a client turns
the status it receives back into the error with `error_for(code, details)`. A class
maps through its nearest listed ancestor, so a library's own errors (the ledger's
EntryNotFound is a NotFound) need no row of their own.
"""

from __future__ import annotations

import grpc

from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    VerificationFailed,
)

STATUS: dict[type[IcxError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A signature, proof or note that does not verify is bad input.
    VerificationFailed: grpc.StatusCode.INVALID_ARGUMENT,
}

# The inverse: the first class listed for a code is the one a client raises. A deadline
# that passed means the same to a caller as a peer that is not there.
_ERROR: dict[grpc.StatusCode, type[IcxError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}
for _cls, _code in STATUS.items():
    _ERROR.setdefault(_code, _cls)


def status_for(exc: IcxError) -> grpc.StatusCode:
    """The status code that answers `exc`: its nearest class in STATUS, else INTERNAL."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode, details: str | None) -> IcxError:
    """The error a status stands for, carrying the server's message (or the code's name
    when it sent none). A code outside the table is a bare IcxError naming the code."""
    cls = _ERROR.get(code)
    if cls is None:
        return IcxError(f"{code.name}: {details}" if details else code.name)
    return cls(details or code.name)
