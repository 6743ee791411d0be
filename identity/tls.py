"""Mutual TLS for gRPC with membership certificates: the credentials a server and a
client present, and the one check that turns a verified peer into a Member.

The TLS layer requires a client certificate chained to the federation's root (grpcio
can request a client certificate only by requiring one), so a connection without one,
or with one from another root or expired at connection time, fails in the handshake.
What TLS cannot know is checked here on every call: a certificate that expired while
its connection stayed open, one revoked since, and the tenant administrator's rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from cryptography import x509

from core.errors import PermissionDenied, Unauthenticated
from identity.certs import Member, load_certificates, verify_chain
from identity.files import Credentials
from identity.revocation import EMPTY, Revocations, verify_revocations

__all__ = ["Trust", "aio_channel", "channel", "channel_credentials", "server_credentials"]


# Distinct peer chains remembered (verified once, then checked for expiry and revocation
# per call); past it the memory starts over.
MAX_CACHED_PEERS = 10_000


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(creds.key_pem, creds.chain_pem)],
        root_certificates=creds.root_pem,
        require_client_auth=True,
    )


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(creds.root_pem, creds.key_pem, creds.chain_pem)


Options = Sequence[tuple[str, Any]]


def channel(address: str, creds: Credentials | None, options: Options = ()) -> grpc.Channel:
    """A blocking channel to `address`, mutually authenticated with `creds` (plaintext
    when None: a broker that runs --insecure)."""
    if creds is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(creds), options=options)


def aio_channel(address: str, creds: Credentials | None, options: Options = ()) -> grpc.aio.Channel:
    """`channel` for asyncio."""
    if creds is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(creds), options=options)


class Trust:
    """The root a server trusts and the revocation list it holds now; `member(context)`
    is who is calling."""

    def __init__(
        self,
        root: x509.Certificate,
        revocations: Revocations = EMPTY,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.root = root
        self.revocations = revocations
        self.now = now
        self._peers: dict[bytes, Member | PermissionDenied] = {}

    def update(self, data: bytes) -> Revocations:
        """Take a newer signed revocation list; refuse one not signed by the root or not
        newer than the one held (an old list must not un-revoke anyone)."""
        new = verify_revocations(data, self.root)
        if new.number <= self.revocations.number:
            raise PermissionDenied(
                f"revocation list {new.number} is not newer than the one held"
                f" ({self.revocations.number})"
            )
        self.revocations = new
        return new

    def check(self, member: Member, now: dt.datetime | None = None) -> Member:
        """Raise Unauthenticated if `member` has expired or been revoked by `now`."""
        now = now or self.now()
        if now > member.not_after:
            raise Unauthenticated(
                f"certificate of {member.describe()} expired at"
                f" {member.not_after:%Y-%m-%d %H:%M:%S} UTC"
            )
        if self.revocations.revoked(member.chain_serials):
            raise Unauthenticated(
                f"certificate of {member.describe()} is revoked"
                f" (revocation list {self.revocations.number})"
            )
        return member

    def member_of_chain(self, chain_pem: bytes) -> Member:
        known = self._peers.get(chain_pem)
        if known is None:
            try:
                known = verify_chain(load_certificates(chain_pem), self.root, self.now())
            except PermissionDenied as exc:
                known = exc
            except Exception as exc:  # an unreadable chain is a refusal, not a crash
                known = PermissionDenied(f"unreadable certificate: {exc}")
            if len(self._peers) >= MAX_CACHED_PEERS:
                self._peers.clear()
            self._peers[chain_pem] = known
        if isinstance(known, PermissionDenied):
            raise Unauthenticated(str(known))
        return self.check(known)

    def member(self, context: Any) -> Member:
        """The verified member on the other end of a call (grpc.aio or sync context)."""
        auth = context.auth_context() or {}
        leaf = b"".join(auth.get("x509_pem_cert") or ())
        if not leaf:
            raise Unauthenticated("no client certificate: connect with a membership certificate")
        # The server's view of the peer's chain holds the intermediates (BoringSSL leaves
        # the leaf out on a server; keep it first either way).
        rest = [c for c in auth.get("x509_pem_cert_chain") or () if c.strip() != leaf.strip()]
        return self.member_of_chain(leaf + b"".join(rest))
