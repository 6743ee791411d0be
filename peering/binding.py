"""A broker's proof that a libp2p peer id is its own.

The libp2p key (Ed25519, the peer id's key, proven by the Noise handshake) is not the
membership key (P-256, in the certificate the coordinator signed). The binding joins
them: "libp2p peer id P belongs to broker B of region R until T", signed with B's
membership key and sent with B's certificate chain. A peer that checks it against the
federation's root (and its revocation list) knows which admitted broker stands behind P.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import Unauthenticated
from identity.certs import Member, Role, load_certificates, load_key
from identity.files import Credentials
from identity.tls import Trust
from ledger.canonical import encode
from peering._codec import b64, read_object, take_bytes, take_int, take_str
from peering.errors import DropReason, Refused

__all__ = ["Binding", "sign_binding", "verify_binding"]

# Domain separation: these signatures can never pass for a usage record or a checkpoint.
_CONTEXT = "icx.v1/peering-binding"
_FIELDS = frozenset({"broker", "chain", "expires_at_ms", "peer_id", "region", "signature"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    peer_id: str  # base58, as libp2p prints it
    broker: str
    region: str
    expires_at_ms: int
    chain_pem: bytes  # the broker's membership certificate (leaf first)
    signature: bytes  # ECDSA P-256 / SHA-256 over `signed_bytes()`

    def signed_bytes(self) -> bytes:
        return encode(
            {
                "context": _CONTEXT,
                "peer_id": self.peer_id,
                "broker": self.broker,
                "region": self.region,
                "expires_at_ms": self.expires_at_ms,
            }
        )

    def encode(self) -> bytes:
        return encode(
            {
                "peer_id": self.peer_id,
                "broker": self.broker,
                "region": self.region,
                "expires_at_ms": self.expires_at_ms,
                "chain": b64(self.chain_pem),
                "signature": b64(self.signature),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Binding:
        """Raises Refused(MALFORMED) unless `data` is an encoded binding."""
        obj = read_object(data, "binding", _FIELDS)
        return cls(
            peer_id=take_str(obj, "peer_id", "binding"),
            broker=take_str(obj, "broker", "binding"),
            region=take_str(obj, "region", "binding"),
            expires_at_ms=take_int(obj, "expires_at_ms", "binding"),
            chain_pem=take_bytes(obj, "chain", "binding"),
            signature=take_bytes(obj, "signature", "binding"),
        )


def sign_binding(credentials: Credentials, peer_id: str, expires_at_ms: int) -> Binding:
    """The binding of `peer_id` to the broker `credentials` name. Requires a broker."""
    member = credentials.member
    if member.role is not Role.BROKER:
        raise Refused(DropReason.NON_MEMBER, f"only a broker peers, not {member.describe()}")
    unsigned = Binding(
        peer_id=peer_id,
        broker=member.name,
        region=member.region,
        expires_at_ms=expires_at_ms,
        chain_pem=credentials.chain_pem,
        signature=b"",
    )
    key = load_key(credentials.key_pem)
    signature = key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return Binding(
        peer_id=peer_id,
        broker=member.name,
        region=member.region,
        expires_at_ms=expires_at_ms,
        chain_pem=credentials.chain_pem,
        signature=signature,
    )


def verify_binding(
    binding: Binding, trust: Trust, now_ms: int
) -> tuple[Member, ec.EllipticCurvePublicKey]:
    """The broker behind the binding and its membership key, if the chain leads to the
    trusted root (not expired, not revoked), names a broker as the binding does, the
    binding has not expired and its signature verifies. Raises Refused."""
    try:
        member = trust.member_of_chain(binding.chain_pem)
    except Unauthenticated as exc:
        raise Refused(DropReason.NON_MEMBER, f"peer {binding.peer_id}: {exc}") from exc
    if member.role is not Role.BROKER:
        raise Refused(
            DropReason.NON_MEMBER, f"peer {binding.peer_id} is {member.describe()}, not a broker"
        )
    if (member.name, member.region) != (binding.broker, binding.region):
        raise Refused(
            DropReason.ORIGIN_MISMATCH,
            f"binding names broker {binding.broker} of region {binding.region}, its"
            f" certificate {member.describe()}",
        )
    if binding.expires_at_ms < now_ms:
        raise Refused(
            DropReason.NON_MEMBER,
            f"binding of peer {binding.peer_id} expired at {binding.expires_at_ms} ms",
        )
    public = load_certificates(binding.chain_pem)[0].public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise Refused(DropReason.NON_MEMBER, f"{member.describe()} has no P-256 key")
    try:
        public.verify(binding.signature, binding.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise Refused(
            DropReason.BAD_SIGNATURE,
            f"binding of peer {binding.peer_id} is not signed by {member.describe()}",
        ) from exc
    return member, public
