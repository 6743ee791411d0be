"""The federation's revocation list: an X.509 CRL signed by the root, versioned by its
CRL number. A newer list replaces an older one; a list with a number at or below the one
a broker holds is refused, so an old list cannot be replayed to un-revoke a party.

Serials are 159-bit random numbers drawn by whoever issued the certificate, so a serial
names one certificate across the federation whatever its issuer (root or tenant
administrator); the list names the serials, and a chain with any listed serial is
refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import InvalidArgument, PermissionDenied

__all__ = ["Revocations", "sign_revocations", "verify_revocations"]

# How long a list stays current: a coordinator re-signs before then (icx admin revoke
# re-signs whatever it adds). Past it a broker keeps the list and logs a warning.
NEXT_UPDATE_DAYS = 30


@dataclass(frozen=True, slots=True)
class Revocations:
    number: int
    serials: frozenset[int]
    issued_at: dt.datetime
    pem: bytes = b""

    def revoked(self, serials: Iterable[int]) -> bool:
        return any(s in self.serials for s in serials)


EMPTY = Revocations(
    number=-1, serials=frozenset(), issued_at=dt.datetime.min.replace(tzinfo=dt.UTC)
)


def sign_revocations(
    previous: Revocations,
    add: Iterable[int],
    *,
    root_key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    now: dt.datetime,
) -> Revocations:
    """The next list: the previous serials and `add`, numbered one higher."""
    serials = previous.serials | frozenset(add)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=NEXT_UPDATE_DAYS))
        .add_extension(x509.CRLNumber(previous.number + 1), critical=False)
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(root_key, hashes.SHA256())
    return _read(crl)


def verify_revocations(data: bytes, root: x509.Certificate) -> Revocations:
    """The list in `data` if the federation's root signed it."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM revocation list: {exc}") from exc
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    if crl.issuer != root.subject or not crl.is_signature_valid(public):
        raise PermissionDenied("the revocation list is not signed by this federation's root")
    return _read(crl)


def _read(crl: x509.CertificateRevocationList) -> Revocations:
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound as exc:
        raise InvalidArgument("the revocation list has no number") from exc
    return Revocations(
        number=number,
        serials=frozenset(r.serial_number for r in crl),
        issued_at=crl.last_update_utc,
        pem=crl.public_bytes(serialization.Encoding.PEM),
    )
