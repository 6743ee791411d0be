"""What a center signs to prove, on each new stream, that it holds its admitted key.

The broker sends a fresh random nonce (a Challenge); the agent signs these bytes with the
center's usage key (a HelloProof). Domain-separated so that the signature can never pass
for a usage record or a checkpoint, and bound to the center id so that a proof for one
center cannot be replayed for another. Membership certificates will replace this.
"""

from __future__ import annotations

NONCE_BYTES = 32
_CONTEXT = b"icx.v1/hello-proof\n"


def proof_message(center_id: str, nonce: bytes) -> bytes:
    """The bytes the center signs. Requires len(nonce) == NONCE_BYTES."""
    return _CONTEXT + center_id.encode() + b"\n" + nonce
