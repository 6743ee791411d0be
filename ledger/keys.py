"""Ed25519 keys in the C2SP signed-note formats.

A verifier key is `<name>+<hex key id>+<base64(type || public key)>`, a signer key
`PRIVATE+KEY+<name>+<hex key id>+<base64(type || seed)>`, where the key id is
`SHA-256(name || 0x0A || type || public key)[:4]` (c2sp.org/signed-note). Type 0x01 is a
plain Ed25519 note signature (log keys, party keys); type 0x04 a timestamped
`cosignature/v1` (c2sp.org/tlog-cosignature, witness keys).

Everywhere else a key is named by its `key_id`, `<name>+<hex key id>`: unique enough to
find the key, and the signature check settles the rest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.ids import shown
from ledger.errors import InvalidRecord

__all__ = ["ALG_COSIGNATURE_V1", "ALG_ED25519", "SignerKey", "VerifierKey", "key_hash"]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_ALGS = (ALG_ED25519, ALG_COSIGNATURE_V1)


def check_name(name: str) -> str:
    """Key names are non-empty and hold no Unicode space and no plus."""
    if not name or "+" in name or any(ch.isspace() for ch in name):
        raise InvalidRecord(f"key name must be non-empty without spaces or '+', got {shown(name)}")
    if any(ord(ch) < 0x20 for ch in name):
        raise InvalidRecord(f"key name must not hold control characters, got {shown(name)}")
    return name


def key_hash(name: str, alg: int, public: bytes) -> int:
    """The 32-bit key id: SHA-256(name || 0x0A || alg || public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidRecord(f"{what}: not standard base64") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierKey:
    """A public key with its note name, signature type and key id."""

    name: str
    alg: int
    public: bytes
    hash: int = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.alg not in _ALGS:
            raise InvalidRecord(f"key {self.name}: unknown signature type 0x{self.alg:02x}")
        if len(self.public) != 32:
            raise InvalidRecord(f"key {self.name}: public key must be 32 bytes")
        object.__setattr__(self, "hash", key_hash(self.name, self.alg, self.public))
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public))

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Read `<name>+<hex id>+<base64(type || key)>`; the id must match the key."""
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise InvalidRecord(f"verifier key must be <name>+<hash>+<base64>, got {shown(text)}")
        name, hex_id, b64 = parts
        if len(hex_id) != 8 or hex_id != hex_id.lower():
            raise InvalidRecord(f"verifier key {name}: hash must be 8 lowercase hex digits")
        raw = _b64decode(b64, f"verifier key {name}")
        if len(raw) != 33:
            raise InvalidRecord(f"verifier key {name}: key must be 1+32 bytes, got {len(raw)}")
        key = cls(name=name, alg=raw[0], public=raw[1:])
        if f"{key.hash:08x}" != hex_id:
            raise InvalidRecord(f"verifier key {name}: hash {hex_id} does not match the key")
        return key

    @property
    def key_id(self) -> str:
        return f"{self.name}+{self.hash:08x}"

    def text(self) -> str:
        raw = base64.b64encode(bytes([self.alg]) + self.public).decode("ascii")
        return f"{self.key_id}+{raw}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class SignerKey:
    """A private key with its note name and signature type."""

    name: str
    alg: int
    seed: bytes = field(repr=False)
    verifier: VerifierKey = field(init=False)
    _key: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise InvalidRecord(f"signer key {self.name}: seed must be 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        object.__setattr__(self, "_key", key)
        object.__setattr__(
            self, "verifier", VerifierKey(name=self.name, alg=self.alg, public=public)
        )

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> SignerKey:
        """A fresh key from the operating system's random source."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name=name, alg=alg, seed=seed)

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        """Read `PRIVATE+KEY+<name>+<hex id>+<base64(type || seed)>`."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise InvalidRecord("signer key must be PRIVATE+KEY+<name>+<hash>+<base64>")
        _, _, name, hex_id, b64 = parts
        raw = _b64decode(b64, f"signer key {name}")
        if len(raw) != 33:
            raise InvalidRecord(f"signer key {name}: key must be 1+32 bytes, got {len(raw)}")
        key = cls(name=name, alg=raw[0], seed=raw[1:])
        if f"{key.verifier.hash:08x}" != hex_id:
            raise InvalidRecord(f"signer key {name}: hash {hex_id} does not match the key")
        return key

    @property
    def key_id(self) -> str:
        return self.verifier.key_id

    def text(self) -> str:
        raw = base64.b64encode(bytes([self.alg]) + self.seed).decode("ascii")
        return f"PRIVATE+KEY+{self.key_id}+{raw}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)
