"""The ledger: signed, verifiable usage with witnessed checkpoints and settlement.

A pure library (no gRPC, no asyncio, no clock reads); SQLite lives in `ledger.store`
alone. `ledger.merkle` is usable on its own by outside auditors. See docs/ledger.md.
"""

from ledger.accepted import AcceptedRecord
from ledger.bundle import ProofBundle, verify_bundle
from ledger.checkpoint import (
    Checkpoint,
    TrustPolicy,
    Witness,
    check_equivocation,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.errors import (
    AuditError,
    ConflictingRecord,
    EntryNotFound,
    EquivocationError,
    InvalidRecord,
    LedgerError,
    NoteError,
    ProofError,
    RefusedRecord,
    SignatureError,
    VerificationError,
)
from ledger.keyring import Role
from ledger.keys import ALG_COSIGNATURE_V1, ALG_ED25519, SignerKey, VerifierKey
from ledger.log import AuditReport, Log
from ledger.records import RecordKind, UsageRecord
from ledger.settlement import (
    AcceptedRef,
    FederationView,
    RegionLog,
    Settlement,
    federation_view,
    settle,
    sign_statement,
    verify_statement,
)
from ledger.signing import SignedRecord, countersign, sign_records
from ledger.store import LedgerStore, LogStore

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "AcceptedRecord",
    "AcceptedRef",
    "AuditError",
    "AuditReport",
    "Checkpoint",
    "ConflictingRecord",
    "EntryNotFound",
    "EquivocationError",
    "FederationView",
    "InvalidRecord",
    "LedgerError",
    "LedgerStore",
    "Log",
    "LogStore",
    "NoteError",
    "ProofBundle",
    "ProofError",
    "RecordKind",
    "RefusedRecord",
    "RegionLog",
    "Role",
    "Settlement",
    "SignatureError",
    "SignedRecord",
    "SignerKey",
    "TrustPolicy",
    "UsageRecord",
    "VerificationError",
    "VerifierKey",
    "Witness",
    "check_equivocation",
    "countersign",
    "federation_view",
    "settle",
    "sign_checkpoint",
    "sign_records",
    "sign_statement",
    "verify_bundle",
    "verify_checkpoint",
    "verify_statement",
]
