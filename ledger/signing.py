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
from dataclasses import dataclass, field, replace
from typing import Any

from core.ids import shown
from ledger import canonical, merkle
from ledger.errors import InvalidRecord, ProofError, SignatureError
from ledger.keys import SignerKey, VerifierKey
from ledger.records import UsageRecord

__all__ = [
    "BROKER_PREFIX",
    "PRODUCER_PREFIX",
    "SignatureCache",
    "SignedRecord",
    "cache_batch_roots",
    "countersign",
    "sign_records",
]

PRODUCER_PREFIX = b"icx/ledger/v1 usage-producer\n"
BROKER_PREFIX = b"icx/ledger/v1 usage-broker\n"
MAX_BATCH = 1 << 20
# A usage entry's bytes at most: a record of ids of at most 128 characters, its batch
# proof (20 hashes at MAX_BATCH) and two signatures take under 4 KiB.
MAX_ENTRY_BYTES = 64 << 10


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be a base64 string, got {shown(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"{what} is not standard base64") from exc


_json_string = canonical.encode_string


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
    # Derived once and kept: the record's leaf hash, the batch root its proof leads to,
    # the entry bytes.
    _digest: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _root: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _entry: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"record {self.record.record_id!r}"
        for name in ("batch_size", "batch_index"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRecord(f"{where}: {name} must be an integer, got {shown(value)}")
        for name in ("producer_key", "broker_key"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRecord(f"{where}: {name} must be a key id string")
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
        digest = self._digest
        if digest is None:
            digest = merkle.hash_leaf(self.record.canonical())
            object.__setattr__(self, "_digest", digest)
        return digest

    def batch_root(self) -> bytes:
        """The root that the record's batch proof leads to (what the producer signed)."""
        root = self._root
        if root is None:
            try:
                root = merkle.root_from_inclusion_proof(
                    self.digest(), self.batch_index, self.batch_size, self.batch_proof
                )
            except ProofError as exc:
                raise SignatureError(
                    f"record {self.record.record_id!r}: batch proof: {exc}"
                ) from exc
            object.__setattr__(self, "_root", root)
        return root

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
        data = self._entry
        if data is None:
            data = self._encode()
            object.__setattr__(self, "_entry", data)
        return data

    def _encode(self) -> bytes:
        # `to_json` through the canonical encoder, written out: member names in sorted
        # order (batch, broker, producer, record, type; index, proof, size; key, sig),
        # the record's own canonical bytes reused. Tests hold it to `canonical.encode`.
        proof = ",".join(f'"{_b64(h)}"' for h in self.batch_proof)
        parts = [
            f'{{"batch":{{"index":{self.batch_index},"proof":[{proof}],"size":{self.batch_size}}},'
        ]
        if self.broker_key:
            parts.append(f'"broker":{{"key":{_json_string(self.broker_key)},')
            parts.append(f'"sig":"{_b64(self.broker_sig)}"}},')
        parts.append(f'"producer":{{"key":{_json_string(self.producer_key)},')
        parts.append(f'"sig":"{_b64(self.producer_sig)}"}},"record":')
        try:
            head = "".join(parts).encode("utf-8")
        except UnicodeEncodeError:
            return canonical.encode(self.to_json())  # raises, naming the bad string
        return head + self.record.canonical() + b',"type":"usage"}'

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
        """A usage entry's bytes; refuses more than MAX_ENTRY_BYTES before parsing."""
        return cls.from_json(canonical.decode(data, max_bytes=MAX_ENTRY_BYTES))


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
    levels = _batch_levels(leaves)
    root = levels[-1][0]
    sig = producer.sign(producer_message(size, root))
    out = []
    for i, r in enumerate(records):
        sr = SignedRecord(
            record=r,
            batch_size=size,
            batch_index=i,
            batch_proof=_batch_proof(levels, i),
            producer_key=producer.key_id,
            producer_sig=sig,
        )
        object.__setattr__(sr, "_digest", leaves[i])
        object.__setattr__(sr, "_root", root)
        out.append(sr)
    return out


def _batch_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """The batch tree level by level, leaves first, root last. A level of odd length
    carries its last node up unchanged: that is the RFC 6962 tree, whose right edge
    holds the smaller subtrees (n = 3: H(H(a, b), c))."""
    levels: list[list[bytes]] = [list(leaves)]
    hash_children = merkle.hash_children
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [hash_children(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def _batch_proof(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    """The RFC 9162 inclusion proof of leaf `index`, deepest first: the sibling on each
    level, none where the node was carried up."""
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index >>= 1
    return tuple(proof)


def cache_batch_roots(signed: Sequence[SignedRecord]) -> None:
    """Work out the batch roots of many records at once, as `SignedRecord.batch_root`
    would one by one: for each batch whose every record is here, build its tree once
    (n - 1 hashes instead of n log n) and keep the root on each record whose proof is
    exactly that tree's proof. Any other record keeps computing its own, so results and
    errors are the same as without this call."""
    groups: dict[tuple[str, bytes, int], list[SignedRecord]] = {}
    for sr in signed:
        if sr._root is None and sr.batch_size > 1:
            groups.setdefault((sr.producer_key, sr.producer_sig, sr.batch_size), []).append(sr)
    for (_, _, size), members in groups.items():
        if len(members) != size:
            continue
        ordered: list[SignedRecord | None] = [None] * size
        for sr in members:
            ordered[sr.batch_index] = sr
        complete = [sr for sr in ordered if sr is not None]
        if len(complete) != size:
            continue
        levels = _batch_levels([sr.digest() for sr in complete])
        root = levels[-1][0]
        for i, sr in enumerate(complete):
            if sr.batch_proof == _batch_proof(levels, i):
                object.__setattr__(sr, "_root", root)


def countersign(signed: Sequence[SignedRecord], broker: SignerKey) -> list[SignedRecord]:
    """Add the broker's signature, once per producer batch. The caller verifies the
    producer's signature first (see `SignatureCache.check_producer`)."""
    cache_batch_roots(signed)
    done: dict[tuple[bytes, bytes], bytes] = {}
    out = []
    for sr in signed:
        root = sr.batch_root()
        ident = (root, sr.producer_sig)
        if ident not in done:
            done[ident] = broker.sign(broker_message(sr.batch_size, root, sr.producer_sig))
        signed_again = replace(sr, broker_key=broker.key_id, broker_sig=done[ident])
        object.__setattr__(signed_again, "_digest", sr._digest)
        object.__setattr__(signed_again, "_root", root)
        out.append(signed_again)
    return out


class SignatureCache:
    """Verifies batch signatures, each (key, message, signature) once: a batch of n
    records costs one Ed25519 verification, not n."""

    def __init__(self, limit: int = 65536) -> None:
        # Keyed by the public key itself, not its id: ids are short enough to collide.
        self._seen: dict[tuple[bytes, bytes, bytes], None] = {}
        self._limit = limit

    def unseen(
        self, items: Sequence[tuple[VerifierKey, bytes, bytes]]
    ) -> list[tuple[bytes, bytes, bytes]]:
        """The distinct (public key, message, signature) among `items` not yet verified,
        to verify in bulk (perhaps in other processes) and pass to `remember`."""
        todo: dict[tuple[bytes, bytes, bytes], None] = {}
        for key, message, sig in items:
            ident = (key.public, message, sig)
            if ident not in self._seen:
                todo[ident] = None
        return list(todo)

    def remember(self, items: Sequence[tuple[bytes, bytes, bytes]], ok: Sequence[bool]) -> None:
        """Keep the items that verified. The `check_*` calls that follow still decide:
        they re-verify, and refuse, whatever did not verify here."""
        if len(self._seen) + len(items) > self._limit:
            self._seen.clear()
        for ident, good in zip(items, ok, strict=True):
            if good:
                self._seen[ident] = None

    def warm(self, items: Sequence[tuple[VerifierKey, bytes, bytes]]) -> None:
        """Verify many (key, message, signature) in this process, each distinct one once."""
        keys = {key.public: key for key, _, _ in items}
        todo = self.unseen(items)
        self.remember(todo, [keys[p].verify(m, s) for p, m, s in todo])

    def _verify(self, key: VerifierKey, message: bytes, sig: bytes) -> bool:
        ident = (key.public, message, sig)
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
