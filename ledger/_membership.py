"""Key admissions bound to membership certificates (`identity.certs`).

An admission may carry the PEM of the membership certificate that certifies its key.
Checked against the federation's root, the certificate must be signed by that root and
name the admitted party, a role of the same name as the key's and, as its usage key,
the admitted key itself. A keyring role without a membership role of its name (a
tenant's key) cannot be certified, and a broker's certificate binds no usage key, so
with a root only centers' keys pass.

Validity dates are not checked: a log entry carries no wall time of its admission, so
nothing in the log says when the certificate had to be valid.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from core.errors import InvalidArgument, PermissionDenied
from core.ids import shown
from identity.certs import Role as MemberRole
from identity.certs import load_certificates, member_of
from ledger.errors import InvalidRecord, VerificationError
from ledger.keyring import KeyEvent
from ledger.keys import VerifierKey

__all__ = ["check_admission"]


def check_admission(event: KeyEvent, root: x509.Certificate) -> None:
    """Raise VerificationError, naming the key and party, unless the admission `event`
    carries one certificate that `root` issued directly for its party, role and key."""
    assert event.key is not None and event.role is not None
    what = f"key {event.key_id} of {event.party!r}"
    if not event.cert:
        raise VerificationError(f"{what} admitted without a membership certificate")
    try:
        certs = load_certificates(event.cert.encode(), "its membership certificate")
    except InvalidArgument as exc:
        raise VerificationError(f"{what}: {exc}") from exc
    if len(certs) != 1:
        raise VerificationError(f"{what}: cert must hold one certificate, found {len(certs)}")
    cert = certs[0]
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(
            f"{what}: the membership certificate is not issued by the federation root"
        ) from exc
    try:
        member = member_of(cert)
    except PermissionDenied as exc:
        raise VerificationError(f"{what}: {exc}") from exc
    try:
        wanted = MemberRole(str(event.role))
    except ValueError as exc:
        raise VerificationError(f"{what}: no membership role certifies a {event.role} key") from exc
    if member.name != event.party:
        raise VerificationError(f"{what}: the membership certificate names {shown(member.name)}")
    if member.role is not wanted:
        raise VerificationError(
            f"{what}: the membership certificate is for a {member.role}, not a {wanted}"
        )
    if member.usage_key != event.key.text():
        raise VerificationError(
            f"{what}: the membership certificate binds {_usage_key(member.usage_key)}"
        )


def _usage_key(text: str) -> str:
    """A certificate's usage key as a message names it: by key id where it parses."""
    if not text:
        return "no usage key"
    try:
        return f"usage key {VerifierKey.parse(text).key_id}"
    except InvalidRecord:
        return f"usage key {shown(text)}"
