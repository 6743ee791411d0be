"""Membership in the federation: certificates, revocation, the files that hold them and
mutual TLS. `certs`, `revocation` and `files` are plain libraries; `tls` is the gRPC edge."""

from identity.certs import Member, Role, member_of, verify_chain
from identity.files import Authority, Credentials, init_member
from identity.revocation import Revocations

__all__ = [
    "Authority",
    "Credentials",
    "Member",
    "Revocations",
    "Role",
    "init_member",
    "member_of",
    "verify_chain",
]
