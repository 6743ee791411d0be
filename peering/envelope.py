"""What every gossiped message is: an envelope signed by its origin broker.

An envelope carries one topic's payload from one origin at one version (monotonic per
origin; the latest wins), the time the origin signed it, the versions the origin holds
of the other origins on the topic (its `heads`, so that receivers see what they miss),
and the origin's binding (peer id and certificate chain), so that any receiver can check
it alone, whoever relayed it. The origin's membership key signs all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import Unauthenticated
from identity.certs import Member
from identity.tls import Trust
from ledger.canonical import JsonValue, encode
from peering._codec import b64, read_object, take_bytes, take_int, take_str
from peering.binding import Binding, verify_binding
from peering.errors import DropReason, Refused

__all__ = ["Envelope", "Verifier", "sign_envelope"]

_CONTEXT = "icx.v1/peering-envelope"
_FIELDS = frozenset(
    {"binding", "heads", "issued_at_ms", "origin", "payload", "signature", "topic", "version"}
)
MAX_HEADS = 1024

Heads = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    topic: str
    origin: str  # the broker's name, as its certificate states it
    version: int
    issued_at_ms: int
    payload: bytes
    heads: Heads  # (origin, version) the origin held of others, sorted
    binding: bytes  # the origin's encoded Binding
    signature: bytes

    def _body(self) -> dict[str, JsonValue]:
        return {
            "topic": self.topic,
            "origin": self.origin,
            "version": self.version,
            "issued_at_ms": self.issued_at_ms,
            "payload": b64(self.payload),
            "heads": [[o, v] for o, v in self.heads],
            "binding": b64(self.binding),
        }

    def signed_bytes(self) -> bytes:
        return encode({"context": _CONTEXT, **self._body()})

    def encode(self) -> bytes:
        return encode({**self._body(), "signature": b64(self.signature)})

    @property
    def key(self) -> tuple[int, int]:
        """What orders two envelopes of one origin: version, then signing time (a
        republished version is re-signed later)."""
        return (self.version, self.issued_at_ms)

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Raises Refused(MALFORMED) unless `data` is an encoded envelope."""
        obj = read_object(data, "envelope", _FIELDS)
        raw_heads = obj["heads"]
        if not isinstance(raw_heads, list) or len(raw_heads) > MAX_HEADS:
            raise Refused(DropReason.MALFORMED, f"envelope.heads must be a list of <= {MAX_HEADS}")
        heads: list[tuple[str, int]] = []
        for item in raw_heads:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
            ):
                raise Refused(DropReason.MALFORMED, "envelope.heads holds [origin, version] pairs")
            heads.append((item[0], item[1]))
        return cls(
            topic=take_str(obj, "topic", "envelope"),
            origin=take_str(obj, "origin", "envelope"),
            version=take_int(obj, "version", "envelope"),
            issued_at_ms=take_int(obj, "issued_at_ms", "envelope"),
            payload=take_bytes(obj, "payload", "envelope"),
            heads=tuple(heads),
            binding=take_bytes(obj, "binding", "envelope"),
            signature=take_bytes(obj, "signature", "envelope"),
        )


def sign_envelope(
    key: ec.EllipticCurvePrivateKey,
    *,
    topic: str,
    origin: str,
    version: int,
    issued_at_ms: int,
    payload: bytes,
    heads: Heads,
    binding: Binding,
) -> Envelope:
    unsigned = Envelope(
        topic=topic,
        origin=origin,
        version=version,
        issued_at_ms=issued_at_ms,
        payload=payload,
        heads=tuple(sorted(heads)),
        binding=binding.encode(),
        signature=b"",
    )
    signature = key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return Envelope(
        topic=unsigned.topic,
        origin=unsigned.origin,
        version=unsigned.version,
        issued_at_ms=unsigned.issued_at_ms,
        payload=unsigned.payload,
        heads=unsigned.heads,
        binding=unsigned.binding,
        signature=signature,
    )


# Distinct bindings remembered once verified (each still checked for expiry and
# revocation on use); past it the memory starts over.
MAX_CACHED_BINDINGS = 1024


class Verifier:
    """Checks bindings and envelopes against the federation's root (through `trust`, which
    holds the revocation list), remembering the bindings it has verified."""

    def __init__(self, trust: Trust, now_ms: Callable[[], int]) -> None:
        self.trust = trust
        self.now_ms = now_ms
        self._bindings: dict[bytes, tuple[Binding, Member, ec.EllipticCurvePublicKey]] = {}

    def binding(self, data: bytes) -> tuple[Binding, Member, ec.EllipticCurvePublicKey]:
        """The binding in `data`, its broker and membership key. Raises Refused."""
        now_ms = self.now_ms()
        known = self._bindings.get(data)
        if known is not None:
            binding, member, public = known
            if binding.expires_at_ms < now_ms:
                raise Refused(DropReason.NON_MEMBER, f"binding of {member.describe()} expired")
            try:
                self.trust.check(member)
            except Unauthenticated as exc:
                raise Refused(DropReason.NON_MEMBER, str(exc)) from exc
            return known
        binding = Binding.decode(data)
        member, public = verify_binding(binding, self.trust, now_ms)
        if len(self._bindings) >= MAX_CACHED_BINDINGS:
            self._bindings.clear()
        self._bindings[data] = (binding, member, public)
        return binding, member, public

    def envelope(self, data: bytes, *, topic: str, sender: str | None) -> Envelope:
        """The envelope in `data` if it is of `topic`, its origin is the admitted broker
        its binding names and that broker signed it; when `sender` (the peer id that
        published it on gossip) is given, it must be the origin's own peer. Raises
        Refused with the reason it counts under."""
        envelope = Envelope.decode(data)
        if envelope.topic != topic:
            raise Refused(
                DropReason.MALFORMED, f"envelope of topic {envelope.topic} sent on {topic}"
            )
        binding, member, public = self.binding(envelope.binding)
        if member.name != envelope.origin:
            raise Refused(
                DropReason.ORIGIN_MISMATCH,
                f"{member.describe()} signs for origin {envelope.origin}",
            )
        try:
            public.verify(envelope.signature, envelope.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise Refused(
                DropReason.BAD_SIGNATURE,
                f"envelope of {envelope.origin} v{envelope.version} is not signed by it",
            ) from exc
        if sender is not None and sender != binding.peer_id:
            raise Refused(
                DropReason.ORIGIN_MISMATCH,
                f"peer {sender} publishes the envelope of {envelope.origin}, whose peer is"
                f" {binding.peer_id}",
            )
        return envelope
