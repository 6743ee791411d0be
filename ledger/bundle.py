"""Proof bundles: everything needed to check one entry offline, in one JSON file.

    {
      "format": "icx-ledger-proof/v1",
      "index": 41,                        the entry's index in the log
      "leaf": "<base64>",                 the entry's exact leaf bytes (canonical JSON)
      "proof": ["<base64>", ...],         RFC 9162 inclusion proof under the checkpoint
      "checkpoint": "<signed note>",      the cosigned checkpoint, byte-exact
      "key": {"index", "leaf", "proof"}   for a usage record: the entry that admitted
                                          the producer's key, proven the same way
    }

`verify_bundle` checks the checkpoint under a trust policy, both inclusion proofs, and
for a usage record that the admitted key belongs to the producer and signed it, and that
the log (the accepting broker) countersigned it. Revocation cannot be proven from one
entry: whether a key was revoked before this entry is what `icx ledger audit` checks on
the whole log.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ledger import canonical, merkle
from ledger.checkpoint import Checkpoint, TrustPolicy, verify_checkpoint
from ledger.errors import InvalidRecord, ProofError, SignatureError
from ledger.keyring import KeyEvent, Role
from ledger.signing import SignatureCache, SignedRecord

__all__ = ["FORMAT", "ProofBundle", "VerifiedEntry", "verify_bundle"]

FORMAT = "icx-ledger-proof/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRecord(f"bundle: {what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"bundle: {what} is not standard base64") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class ProofBundle:
    index: int
    leaf: bytes
    proof: tuple[bytes, ...]
    checkpoint: str
    key_index: int | None = None
    key_leaf: bytes | None = None
    key_proof: tuple[bytes, ...] = ()

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT,
            "index": self.index,
            "leaf": _b64(self.leaf),
            "proof": [_b64(h) for h in self.proof],
            "checkpoint": self.checkpoint,
        }
        if self.key_index is not None and self.key_leaf is not None:
            data["key"] = {
                "index": self.key_index,
                "leaf": _b64(self.key_leaf),
                "proof": [_b64(h) for h in self.key_proof],
            }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ProofBundle:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRecord(f"bundle: not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidRecord(f"bundle: format must be {FORMAT!r}")
        try:
            key = data.get("key")
            index = data["index"]
            if not isinstance(index, int) or not isinstance(data["checkpoint"], str):
                raise InvalidRecord("bundle: index must be an integer, checkpoint a string")
            return cls(
                index=index,
                leaf=_unb64(data["leaf"], "leaf"),
                proof=tuple(_unb64(h, "proof hash") for h in data["proof"]),
                checkpoint=data["checkpoint"],
                key_index=None if key is None else int(key["index"]),
                key_leaf=None if key is None else _unb64(key["leaf"], "key leaf"),
                key_proof=()
                if key is None
                else tuple(_unb64(h, "key proof hash") for h in key["proof"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRecord(f"bundle: missing or malformed {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedEntry:
    checkpoint: Checkpoint
    index: int
    entry: canonical.JsonValue


def verify_bundle(bundle: ProofBundle, policy: TrustPolicy) -> VerifiedEntry:
    """Check a bundle offline under `policy`; raises a VerificationError saying what
    failed, or InvalidRecord when the bundle is malformed."""
    checkpoint = verify_checkpoint(bundle.checkpoint, policy)
    merkle.verify_inclusion(
        merkle.hash_leaf(bundle.leaf),
        bundle.index,
        checkpoint.size,
        list(bundle.proof),
        checkpoint.root,
    )
    entry = canonical.decode(bundle.leaf)
    if isinstance(entry, dict) and entry.get("type") == "usage":
        signed = SignedRecord.from_json(entry)
        if bundle.key_index is None or bundle.key_leaf is None:
            raise SignatureError("bundle: a usage record needs the entry that admitted its key")
        if bundle.key_index >= bundle.index:
            raise SignatureError("bundle: the key must be admitted before the record")
        merkle.verify_inclusion(
            merkle.hash_leaf(bundle.key_leaf),
            bundle.key_index,
            checkpoint.size,
            list(bundle.key_proof),
            checkpoint.root,
        )
        event = KeyEvent.from_json(canonical.decode(bundle.key_leaf))
        if event.action != "admit" or event.key is None or event.key_id != signed.producer_key:
            raise SignatureError(f"bundle: key entry does not admit {signed.producer_key}")
        if event.party != signed.record.producer:
            raise SignatureError(
                f"bundle: key {event.key_id} belongs to {event.party!r}, "
                f"not the producer {signed.record.producer!r}"
            )
        wanted = Role.TENANT if signed.record.kind in ("ack", "dispute") else Role.CENTER
        if event.role != wanted:
            raise SignatureError(f"bundle: key {event.key_id} is a {event.role} key, not {wanted}")
        cache = SignatureCache()
        cache.check_producer(signed, event.key)
        cache.check_broker(signed, policy.log)
    elif bundle.key_index is not None:
        raise ProofError("bundle: only a usage record carries a key entry")
    return VerifiedEntry(checkpoint=checkpoint, index=bundle.index, entry=entry)
