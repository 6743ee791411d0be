"""The exchange's error tree. Libraries raise these; only the service edge maps them to
gRPC status codes, and the CLI to exit codes.

* IcxError
  + InvalidArgument        bad input: a field out of range, unparseable, unknown
    x InvalidJobSpec
    x InvalidOffer
    x InvalidConfig
  + NotFound               no such job, center or claim
  + Unauthenticated        no valid membership (expired, revoked, not admitted)
  + PermissionDenied       a party acting outside its own name
  + FailedPrecondition     valid request, wrong state (cancel a finished job)
  + Unavailable            the other side is not there (yet)
  + VerificationFailed     something signed or proven does not check out (the ledger's
                           VerificationError); answered as bad input
"""

from __future__ import annotations


class IcxError(Exception):
    """Base of every error the exchange raises on purpose."""


class InvalidArgument(IcxError):
    """Input that can never be accepted as it is."""


class InvalidJobSpec(InvalidArgument):
    """A job spec with a field out of range or unparseable."""


class InvalidOffer(InvalidArgument):
    """An offer or center descriptor with impossible capacity or attributes."""


class InvalidConfig(InvalidArgument):
    """A configuration file that cannot be used."""


class NotFound(IcxError):
    """The named job, center or claim does not exist."""


class Unauthenticated(IcxError):
    """The caller is not (or no longer) an admitted member: its certificate is missing,
    expired, revoked or from another federation."""


class PermissionDenied(IcxError):
    """The caller may not act on this object."""


class FailedPrecondition(IcxError):
    """The request is well-formed but the object's state forbids it."""


class Unavailable(IcxError):
    """A party the request needs is not reachable."""


class VerificationFailed(IcxError):
    """Signed or proven data that does not check out. Not an InvalidArgument: the input is
    well-formed, and a failed check is an outcome (exit 1), not a usage error."""
