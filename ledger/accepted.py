"""Accepted records: another region's usage that this log took on for its tenant.

A job submitted at broker H (home) may run at a center of broker O (owner). O's log
records the run as usual (producer = the center, consumer = the tenant) and settles it
with the center. H's log records that it accepted that record for its tenant, as an
entry that carries O's proof bundle (`ledger.bundle`) whole:

    {"type": "accepted", "owner": "<O's broker name>", "bundle": {<the proof bundle>}}

The bundle names O's log (its checkpoint's origin), the record's index there and the
checkpoint that covers it, and holds the record's exact leaf bytes and the entry that
admitted the center's key. The entry is stored under the id `<origin>#<index>` (no usage
record id holds `#`), so one record of one log is accepted once.

`verify` checks a bundle under O's log key before the log takes it: the checkpoint
signature, both inclusion proofs, the center's key admission and signature, and O's
countersignature. `check_structure` checks what needs no outside key (everything but
O's two signatures): what an auditor of H's log alone can check.

Only usage records and corrections are accepted: acks and disputes carry no charge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.ids import shown
from ledger import canonical, merkle
from ledger.bundle import ProofBundle, verify_bundle
from ledger.checkpoint import Checkpoint, TrustPolicy
from ledger.errors import InvalidRecord, LedgerError, SignatureError
from ledger.keyring import KeyEvent, Role
from ledger.keys import VerifierKey
from ledger.note import parse_note
from ledger.records import CHARGING_KINDS, ID_PATTERN, UsageRecord
from ledger.signing import MAX_ENTRY_BYTES, SignatureCache, SignedRecord

__all__ = ["MAX_ACCEPTED_BYTES", "AcceptedRecord"]

# A usage leaf is at most 64 KiB (about 87 KiB in base64), a key admission with its
# certificate about 22 KiB, a checkpoint with 100 cosignatures about 10 KiB.
MAX_ACCEPTED_BYTES = 256 << 10
_FIELDS = frozenset({"type", "owner", "bundle"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedRecord:
    """Another log's usage record, proven by `bundle`, accepted from broker `owner`.

    Construction checks the shape (the owner's name, the checkpoint note's syntax, the
    leaf a usage record or correction); `verify` or `check_structure` check the proofs.
    """

    owner: str
    bundle: ProofBundle
    _signed: SignedRecord = field(init=False, repr=False, compare=False)
    _checkpoint: Checkpoint = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.owner, str) or not ID_PATTERN.fullmatch(self.owner):
            raise InvalidRecord(
                f"accepted: owner must be 1..128 of [A-Za-z0-9._:/@-], got {shown(self.owner)}"
            )
        checkpoint = Checkpoint.from_text(parse_note(self.bundle.checkpoint).text)
        where = f"accepted {checkpoint.origin}#{self.bundle.index}"
        if not 0 <= self.bundle.index < checkpoint.size:
            raise InvalidRecord(
                f"{where}: index must be 0..{checkpoint.size - 1} (the checkpoint's size "
                f"is {checkpoint.size})"
            )
        entry = canonical.decode(self.bundle.leaf, max_bytes=MAX_ENTRY_BYTES)
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind != "usage":
            what = "a key event" if kind == "key" else f"an entry of type {shown(kind)}"
            raise InvalidRecord(f"{where}: the owner's entry is {what}, not a usage record")
        signed = SignedRecord.from_json(entry)
        if signed.record.kind not in CHARGING_KINDS:
            raise InvalidRecord(
                f"{where}: record {signed.record.record_id!r} ({signed.record.kind}) carries "
                "no charge; only usage and corrections are accepted"
            )
        object.__setattr__(self, "_signed", signed)
        object.__setattr__(self, "_checkpoint", checkpoint)

    @property
    def origin(self) -> str:
        """The owner's log: the origin of the checkpoint in the bundle."""
        return self._checkpoint.origin

    @property
    def index(self) -> int:
        """The record's index in the owner's log."""
        return self.bundle.index

    @property
    def checkpoint(self) -> Checkpoint:
        """The owner's checkpoint the bundle carries (its signature checked by `verify`)."""
        return self._checkpoint

    @property
    def signed(self) -> SignedRecord:
        """The record as the owner's log holds it, with the center's and owner's signatures."""
        return self._signed

    @property
    def record(self) -> UsageRecord:
        return self._signed.record

    @property
    def accepted_id(self) -> str:
        """The id this entry is stored under: `<origin>#<index>`."""
        return f"{self.origin}#{self.index}"

    # Encoding.

    def to_json(self) -> dict[str, canonical.JsonValue]:
        bundle: dict[str, canonical.JsonValue] = json.loads(self.bundle.to_json())
        return {"type": "accepted", "owner": self.owner, "bundle": bundle}

    def entry(self) -> bytes:
        """The canonical bytes the log stores as this entry's leaf."""
        # Checked on construction, but for the note (its syntax only): encode_checked
        # falls back to the full encoder, naming the bad string, when it must.
        return canonical.encode_checked(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> AcceptedRecord:
        if not isinstance(data, dict) or data.get("type") != "accepted":
            raise InvalidRecord("entry is not an accepted record")
        if set(data) != _FIELDS:
            raise InvalidRecord(
                f"accepted entry must have members {sorted(_FIELDS)}, got {sorted(data)}"
            )
        if not isinstance(data["bundle"], dict):
            raise InvalidRecord("accepted entry: bundle must be an object")
        return cls(owner=data["owner"], bundle=ProofBundle.from_json(json.dumps(data["bundle"])))

    @classmethod
    def from_entry(cls, leaf: bytes) -> AcceptedRecord:
        """An accepted entry's leaf bytes: canonical, at most MAX_ACCEPTED_BYTES, and
        exactly the bytes `entry` writes (one accepted entry has one encoding)."""
        accepted = cls.from_json(canonical.decode(leaf, max_bytes=MAX_ACCEPTED_BYTES))
        if accepted.entry() != leaf:
            raise InvalidRecord(
                f"accepted {accepted.accepted_id}: the entry is not in its one canonical form"
            )
        return accepted

    @classmethod
    def parse(cls, owner: str, bundle_json: str) -> AcceptedRecord:
        """The record a peer's proof bundle (`ProofBundle.to_json`) proves, accepted from
        `owner`; refuses a bundle of more than MAX_ACCEPTED_BYTES before parsing it."""
        if len(bundle_json) > MAX_ACCEPTED_BYTES:
            raise InvalidRecord(
                f"accepted: bundle must be at most {MAX_ACCEPTED_BYTES} characters, "
                f"got {len(bundle_json)}"
            )
        return cls(owner=owner, bundle=ProofBundle.from_json(bundle_json))

    # Checks.

    def verify(self, owner_log_key: VerifierKey) -> None:
        """Check the bundle under the owner's log key (`verify_bundle` with no witnesses):
        its checkpoint signature, the record's and the key admission's inclusion, the
        center's key and signature, the owner's countersignature. Raises a
        VerificationError saying what failed."""
        if owner_log_key.name != self.origin:
            raise SignatureError(
                f"accepted {self.accepted_id}: the owner's log key is named "
                f"{owner_log_key.name!r}, not after the bundle's log {self.origin!r}"
            )
        verify_bundle(self.bundle, TrustPolicy(log=owner_log_key, witnesses=(), quorum=0))

    def check_structure(self, cache: SignatureCache | None = None) -> None:
        """Check what needs no outside key: both inclusion proofs against the root of the
        checkpoint the bundle carries (its signature unchecked), the key entry before the
        record admitting the producer's key as a center key, and the producer's
        signature under that key. Raises a VerificationError saying what failed."""
        where = f"accepted {self.accepted_id}"
        bundle, checkpoint, signed = self.bundle, self._checkpoint, self._signed
        merkle.verify_inclusion(
            merkle.hash_leaf(bundle.leaf),
            bundle.index,
            checkpoint.size,
            list(bundle.proof),
            checkpoint.root,
        )
        if bundle.key_index is None or bundle.key_leaf is None:
            raise SignatureError(f"{where}: the bundle lacks the entry that admitted its key")
        if bundle.key_index >= bundle.index:
            raise SignatureError(f"{where}: the key must be admitted before the record")
        merkle.verify_inclusion(
            merkle.hash_leaf(bundle.key_leaf),
            bundle.key_index,
            checkpoint.size,
            list(bundle.key_proof),
            checkpoint.root,
        )
        try:
            event = KeyEvent.from_json(canonical.decode(bundle.key_leaf))
        except LedgerError as exc:
            raise SignatureError(f"{where}: key entry: {exc}") from exc
        if event.action != "admit" or event.key is None or event.key_id != signed.producer_key:
            raise SignatureError(f"{where}: the key entry does not admit {signed.producer_key}")
        if event.party != signed.record.producer or event.role != Role.CENTER:
            raise SignatureError(
                f"{where}: key {event.key_id} is a {event.role} key of {event.party!r}, "
                f"not a center key of the producer {signed.record.producer!r}"
            )
        (cache or SignatureCache()).check_producer(signed, event.key)
