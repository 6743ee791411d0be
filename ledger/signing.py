"""Signed usage records: the producer signs, the broker countersigns.

Signatures cover a *batch*: the RFC 6962 Merkle tree whose leaves are the canonical
bytes of the records. A single record is a batch of one (its root is its leaf hash), so
one code path serves both, and a center that signs a thousand records at once verifies
in one Ed25519 check plus a short inclusion proof per record.

    producer signs  PRODUCER_PREFIX || uint64 batch size || batch root
    broker signs    BROKER_PREFIX   || uint64 batch size || batch root || producer sig

The prefixes separate these messages from every other thing the keys sign (checkpoint
notes, statements). A signed record travels and is logged as the canonical JSON entry

    {"type": "usage", "record": {...}, "batch": {"size", "index", "proof"},
     "producer": {"key", "sig"}, "broker": {"key", "sig"}}

with keys named by key id (`<name>+<hex id>`) and bytes in standard base64.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ledger import canonical, merkle
from ledger.errors import InvalidRecord, ProofError, SignatureError
from ledger.keys import SignerKey, VerifierKey
from ledger.records import UsageRecord

__all__ = [
    "BROKER_PREFIX",
    "PRODUCER_PREFIX",
    "SignatureCache",
    "SignedRecord",
    "countersign",
    "sign_records",
]

PRODUCER_PREFIX = b"icx/ledger/v1 usage-producer\n"
BROKER_PREFIX = b"icx/ledger/v1 usage-broker\n"
MAX_BATCH = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be a base64 string, got {value!r}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"{what} is not standard base64") from exc


def producer_message(size: int, batch_root: bytes) -> bytes:
    return PRODUCER_PREFIX + size.to_bytes(8, "big") + batch_root


def broker_message(size: int, batch_root: bytes, producer_sig: bytes) -> bytes:
    return BROKER_PREFIX + size.to_bytes(8, "big") + batch_root + producer_sig


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRecord:
    """A record with its place in a signed batch and the signatures over that batch."""

    record: UsageRecord
    batch_size: int = 1
    batch_index: int = 0
    batch_proof: tuple[bytes, ...] = ()
    producer_key: str
    producer_sig: bytes
    broker_key: str = ""
    broker_sig: bytes = b""

    def __post_init__(self) -> None:
        where = f"record {self.record.record_id!r}"
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidRecord(
                f"{where}: batch size must be 1..{MAX_BATCH}, got {self.batch_size}"
            )
        if not 0 <= self.batch_index < self.batch_size:
            raise InvalidRecord(
                f"{where}: batch index must be 0..{self.batch_size - 1}, got {self.batch_index}"
            )
        if len(self.producer_sig) != 64:
            raise InvalidRecord(f"{where}: producer signature must be 64 bytes")
        if self.broker_key and len(self.broker_sig) != 64:
            raise InvalidRecord(f"{where}: broker signature must be 64 bytes")

    def digest(self) -> bytes:
        """The record's leaf hash in its batch."""
        return merkle.hash_leaf(self.record.canonical())

    def batch_root(self) -> bytes:
        try:
            return merkle.root_from_inclusion_proof(
                self.digest(), self.batch_index, self.batch_size, self.batch_proof
            )
        except ProofError as exc:
            raise SignatureError(f"record {self.record.record_id!r}: batch proof: {exc}") from exc

    def to_json(self) -> dict[str, canonical.JsonValue]:
        data: dict[str, canonical.JsonValue] = {
            "type": "usage",
            "record": self.record.to_json(),
            "batch": {
                "size": self.batch_size,
                "index": self.batch_index,
                "proof": [_b64(h) for h in self.batch_proof],
            },
            "producer": {"key": self.producer_key, "sig": _b64(self.producer_sig)},
        }
        if self.broker_key:
            data["broker"] = {"key": self.broker_key, "sig": _b64(self.broker_sig)}
        return data

    def entry(self) -> bytes:
        """The canonical bytes the log stores as this record's leaf."""
        return canonical.encode(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> SignedRecord:
        if not isinstance(data, dict) or data.get("type") != "usage":
            raise InvalidRecord("entry is not a usage record")
        extra = set(data) - {"type", "record", "batch", "producer", "broker"}
        if extra:
            raise InvalidRecord(f"usage entry has unknown members {sorted(extra)}")
        try:
            batch, producer = data["batch"], data["producer"]
            broker = data.get("broker", {"key": "", "sig": ""})
            proof = batch["proof"]
            if not isinstance(proof, list):
                raise InvalidRecord("batch proof must be a list")
            return cls(
                record=UsageRecord.from_json(data["record"]),
                batch_size=batch["size"],
                batch_index=batch["index"],
                batch_proof=tuple(_unb64(h, "batch proof hash") for h in proof),
                producer_key=producer["key"],
                producer_sig=_unb64(producer["sig"], "producer signature"),
                broker_key=broker["key"],
                broker_sig=_unb64(broker["sig"], "broker signature"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidRecord(f"usage entry is missing {exc}") from exc

    @classmethod
    def from_entry(cls, data: bytes) -> SignedRecord:
        return cls.from_json(canonical.decode(data))


def sign_records(records: Sequence[UsageRecord], producer: SignerKey) -> list[SignedRecord]:
    """Sign `records` as one batch with one Ed25519 signature (one record: a batch of
    one). Record ids must be distinct."""
    if not records:
        return []
    ids = [r.record_id for r in records]
    if len(set(ids)) != len(ids):
        raise InvalidRecord("a batch must not hold one record id twice")
    leaves = [merkle.hash_leaf(r.canonical()) for r in records]
    size = len(leaves)
    proofs = _batch_proofs(leaves)
    sig = producer.sign(producer_message(size, merkle.root(leaves)))
    return [
        SignedRecord(
            record=r,
            batch_size=size,
            batch_index=i,
            batch_proof=tuple(proofs[i]),
            producer_key=producer.key_id,
            producer_sig=sig,
        )
        for i, r in enumerate(records)
    ]


def _batch_proofs(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every leaf's inclusion proof, from one tree build."""
    size = len(leaves)
    levels: list[list[bytes]] = [list(leaves)]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append(
            [merkle.hash_children(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        )

    def node(level: int, index: int) -> bytes:
        return levels[level][index]

    return [
        [merkle.hash_range(b, e, node) for b, e in merkle.inclusion_plan(i, size)]
        for i in range(size)
    ]


def countersign(signed: Sequence[SignedRecord], broker: SignerKey) -> list[SignedRecord]:
    """Add the broker's signature, once per producer batch. The caller verifies the
    producer's signature first (see `SignatureCache.check_producer`)."""
    done: dict[tuple[bytes, bytes], bytes] = {}
    out = []
    for sr in signed:
        root = sr.batch_root()
        ident = (root, sr.producer_sig)
        if ident not in done:
            done[ident] = broker.sign(broker_message(sr.batch_size, root, sr.producer_sig))
        out.append(replace(sr, broker_key=broker.key_id, broker_sig=done[ident]))
    return out


class SignatureCache:
    """Verifies batch signatures, each (key, message, signature) once: a batch of n
    records costs one Ed25519 verification, not n."""

    def __init__(self, limit: int = 65536) -> None:
        self._seen: dict[tuple[str, bytes, bytes], None] = {}
        self._limit = limit

    def _verify(self, key: VerifierKey, message: bytes, sig: bytes) -> bool:
        ident = (key.key_id, message, sig)
        if ident in self._seen:
            return True
        if not key.verify(message, sig):
            return False
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[ident] = None
        return True

    def check_producer(self, sr: SignedRecord, key: VerifierKey) -> None:
        where = f"record {sr.record.record_id!r}"
        if key.key_id != sr.producer_key:
            raise SignatureError(f"{where}: producer key is {sr.producer_key}, not {key.key_id}")
        message = producer_message(sr.batch_size, sr.batch_root())
        if not self._verify(key, message, sr.producer_sig):
            raise SignatureError(f"{where}: producer signature by {key.key_id} does not verify")

    def check_broker(self, sr: SignedRecord, key: VerifierKey) -> None:
        where = f"record {sr.record.record_id!r}"
        if not sr.broker_key:
            raise SignatureError(f"{where}: no broker countersignature")
        if key.key_id != sr.broker_key:
            raise SignatureError(f"{where}: broker key is {sr.broker_key}, not {key.key_id}")
        message = broker_message(sr.batch_size, sr.batch_root(), sr.producer_sig)
        if not self._verify(key, message, sr.broker_sig):
            raise SignatureError(
                f"{where}: broker countersignature by {key.key_id} does not verify"
            )
