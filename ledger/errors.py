"""The ledger's error tree. Each error also derives from the core category that says how
the edge should answer it (bad input, permission, conflict), so the broker and the CLI map
them without knowing the ledger.

* LedgerError (core.IcxError)
  + VerificationError          (also core.VerificationFailed) something signed or proven
                               does not check out
    x ProofError               a Merkle inclusion or consistency proof is wrong or malformed
    x SignatureError           a signature does not verify, or its key is unknown or revoked
    x NoteError                a signed note or checkpoint is malformed or unverified
    x EquivocationError        two checkpoints for one origin and size with different roots
    x AuditError               a stored log fails replay; names the first bad index
  + InvalidRecord              (also core.InvalidArgument) a malformed record or envelope
  + RefusedRecord              (also core.PermissionDenied) well-formed, but not acceptable
                               from this signer: key not admitted, producer mismatch
  + ConflictingRecord          (also core.FailedPrecondition) a record id already in the
                               log with different bytes; the new bytes are kept as evidence
  + EntryNotFound              (also core.NotFound) no entry with that id or index
"""

from __future__ import annotations

from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    VerificationFailed,
)


class LedgerError(IcxError):
    """Base of every error the ledger raises on purpose."""


class VerificationError(LedgerError, VerificationFailed):
    """Signed or proven data that does not check out."""


class ProofError(VerificationError):
    """A Merkle proof that does not verify, or is malformed."""


class SignatureError(VerificationError):
    """A signature that does not verify, or whose key is unknown or revoked."""


class NoteError(VerificationError):
    """A signed note or checkpoint that is malformed or carries no trusted signature."""


class EquivocationError(VerificationError):
    """The log showed two different trees of one size: both notes are the evidence."""

    def __init__(self, message: str, *, note_a: str, note_b: str) -> None:
        super().__init__(message)
        self.note_a = note_a
        self.note_b = note_b


class AuditError(VerificationError):
    """Replaying a stored log failed at `index` (the first bad entry)."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(f"entry {index}: {message}")
        self.index = index


class InvalidRecord(LedgerError, InvalidArgument):
    """A record, envelope or canonical encoding that can never be accepted as it is."""


class RefusedRecord(LedgerError, PermissionDenied):
    """A well-formed record the log refuses from this signer."""


class ConflictingRecord(LedgerError, FailedPrecondition):
    """A record id already in the log with different bytes."""


class EntryNotFound(LedgerError, NotFound):
    """No entry with that record id or index."""
