"""Membership certificates: who a party is, in the federation's own X.509.

The federation's root (the coordinator's key) signs one certificate per admitted party.
A certificate binds the party's name, its role, its region (brokers, centers) or tenant
(users), its P-256 key and its validity; a center's certificate also binds the Ed25519
key that signs its usage records. These facts travel as one URI among the subject's
alternative names (`icx:member?name=...&role=...`, see `identity_uri`) beside its host
names, as SPIFFE carries a workload's id: every X.509 parser reads it (Go's refuses an
extension OID with an arc beyond 31 bits, which a registration-free 2.25.<UUID> OID has),
and TLS host-name checks look only at the DNS and IP names.

Keys are ECDSA P-256: the pinned gRPC's TLS (BoringSSL) negotiates no signature
algorithm for Ed25519 certificates (docs/security.md).

A tenant's administrator holds an intermediate certificate (role `tenant-admin`, path
length 0) and may admit only users of its own tenant: `verify_chain` enforces that rule,
which X.509 path validation alone does not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import InvalidArgument, PermissionDenied
from core.ids import check_id, shown

__all__ = [
    "IDENTITY_URI",
    "Member",
    "Role",
    "admit",
    "certificate_pem",
    "identity_uri",
    "key_pem",
    "load_certificates",
    "load_key",
    "load_request",
    "member_of",
    "new_key",
    "new_root",
    "request",
    "request_pem",
    "verify_chain",
]

# The scheme and path of the alternative name that states a member's identity.
IDENTITY_URI = "icx:member"
ROOT_DAYS = 3650
MAX_DAYS = 3650


_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


class Role(enum.StrEnum):
    COORDINATOR = "coordinator"
    BROKER = "broker"
    CENTER = "center"
    USER = "user"
    TENANT_ADMIN = "tenant-admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """A party as its certificate (and the chain above it) says."""

    name: str
    role: Role
    region: str = ""
    tenant: str = ""
    usage_key: str = ""  # a center's Ed25519 verifier key (ledger text form)
    serial: int = 0
    # Every serial on the chain up to the root: revoking any of them revokes this party.
    chain_serials: tuple[int, ...] = ()
    not_before: dt.datetime = _EARLIEST
    not_after: dt.datetime = _LATEST
    issuer: str = ""

    def describe(self) -> str:
        scope = f" of tenant {self.tenant}" if self.tenant else ""
        scope += f" in region {self.region}" if self.region else ""
        return f"{self.role} {self.name}{scope}"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(data: bytes, what: str = "key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{what} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidArgument(f"{what} is not a P-256 key")
    return key


def certificate_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_certificates(data: bytes, what: str = "certificate") -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not PEM X.509: {exc}") from exc
    return certs


def request_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def load_request(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise InvalidArgument("the request's signature does not verify")
    return csr


def identity_uri(data: dict[str, str]) -> x509.UniformResourceIdentifier:
    """The alternative name stating an identity: its non-empty fields, sorted, as the
    query of `icx:member` (percent-encoded, so plain ASCII as X.509 requires)."""
    query = urllib.parse.urlencode(sorted((k, v) for k, v in data.items() if v))
    return x509.UniformResourceIdentifier(f"{IDENTITY_URI}?{query}")


def _alt_names(
    data: dict[str, str], hosts: Iterable[x509.GeneralName] = ()
) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([identity_uri(data), *hosts])


def _read_identity(ext: x509.Extensions, what: str) -> dict[str, str]:
    try:
        names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    prefix = IDENTITY_URI + "?"
    stated = [
        u[len(prefix) :]
        for u in names.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(prefix)
    ]
    if not stated:
        raise PermissionDenied(f"{what} is not an icx membership certificate")
    if len(stated) > 1:
        raise PermissionDenied(f"{what} states {len(stated)} identities")
    try:
        pairs = urllib.parse.parse_qsl(stated[0], strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermissionDenied(f"{what}: unreadable identity: {exc}") from exc
    data = dict(pairs)
    if len(data) != len(pairs):
        raise PermissionDenied(f"{what}: a field of its identity is stated twice")
    return data


def _hosts_of(ext: x509.Extensions) -> list[x509.GeneralName]:
    """The DNS and IP names among a request's alternative names."""
    try:
        names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n for n in names if isinstance(n, x509.DNSName | x509.IPAddress)]


# The DNS name under which a broker's certificate names the broker itself.
BROKER_HOST_SUFFIX = ".broker.icx.internal"


def broker_host(name: str) -> str | None:
    """The host name a broker's certificate carries for the broker itself; None for a
    name that is not a DNS label (its peers then check only that it is a member)."""
    label = name.lower()
    if re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) is None:
        return None
    return label + BROKER_HOST_SUFFIX


def served_hosts(cert_pem: bytes) -> list[str]:
    """The host names and addresses a member's (leaf) certificate lets it serve as."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return [str(n.value) for n in _hosts_of(cert.extensions)]


def _hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def request(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    *,
    hosts: Sequence[str] = (),
    usage_key: str = "",
) -> x509.CertificateSigningRequest:
    """A signing request for `name` (the id the party will act as), with the host names
    it serves on and, for a center, its usage verifier key."""
    check_id("name", name, InvalidArgument)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    identity = {"name": name, "usage_key": usage_key}
    builder = builder.add_extension(_alt_names(identity, _hosts(hosts)), False)
    return builder.sign(key, hashes.SHA256())


def new_root(
    key: ec.EllipticCurvePrivateKey, federation: str, now: dt.datetime
) -> x509.Certificate:
    """The federation's self-signed root: a CA that may sign one level of intermediates
    (tenant administrators)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "icx"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} federation root"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_alt_names({"name": federation, "role": "root"}), False)
        .sign(key, hashes.SHA256())
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def admit(
    csr: x509.CertificateSigningRequest,
    *,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    role: Role,
    region: str = "",
    tenant: str = "",
    days: int,
    now: dt.datetime,
) -> x509.Certificate:
    """The membership certificate for a request. The issuer is the root, or a tenant
    administrator admitting a user of its own tenant. A broker or center needs a region,
    a user or tenant administrator a tenant; validity ends no later than the issuer's."""
    if not csr.is_signature_valid:
        raise InvalidArgument("the request's signature does not verify")
    asked = _read_identity(csr.extensions, "the request")
    name = asked.get("name", "")
    check_id("name", name, InvalidArgument)
    role = Role(role)
    if role in (Role.BROKER, Role.CENTER):
        if not region:
            raise InvalidArgument(f"a {role} needs a region (--region)")
        if tenant:
            raise InvalidArgument(f"a {role} has no tenant")
    elif role in (Role.USER, Role.TENANT_ADMIN):
        check_id("tenant", tenant, InvalidArgument)
        if region:
            raise InvalidArgument(f"a {role} has no region")
    elif region or tenant:
        raise InvalidArgument("a coordinator has neither region nor tenant")
    usage_key = asked.get("usage_key", "")
    if role is not Role.CENTER:
        usage_key = ""
    elif not usage_key:
        raise InvalidArgument("a center's request must carry its usage key (icx agent init)")
    if not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(f"days must be 1..{MAX_DAYS}, got {days}")
    by = _read_identity(issuer.extensions, "the issuer")
    if by.get("role") == Role.TENANT_ADMIN:
        if role is not Role.USER or tenant != by.get("tenant"):
            raise PermissionDenied(
                f"a tenant administrator of {by.get('tenant')} admits only users of that tenant"
            )
    elif by.get("role") != "root":
        raise PermissionDenied("only the federation root or a tenant administrator admits")
    not_after = min(now + dt.timedelta(days=days), issuer.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    identity = {
        "name": name,
        "role": str(role),
        "region": region,
        "tenant": tenant,
        "usage_key": usage_key,
    }
    # Brokers, centers and coordinators serve: their host names come from the request. A
    # broker's certificate also names it as a host (`broker_host`), so that a peer broker
    # can demand that very broker at whatever address it dials.
    serves = role in (Role.BROKER, Role.CENTER, Role.COORDINATOR)
    hosts = _hosts_of(csr.extensions) if serves else []
    own = broker_host(name) if role is Role.BROKER else None
    if own is not None and own not in {str(h.value) for h in hosts}:
        hosts.append(x509.DNSName(own))
    builder = builder.add_extension(_alt_names(identity, hosts), critical=False)
    if role is Role.TENANT_ADMIN:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(_CA_USAGE, critical=True)
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
    return builder.sign(issuer_key, hashes.SHA256())


def member_of(cert: x509.Certificate, chain_serials: tuple[int, ...] = ()) -> Member:
    """The identity a certificate states (not checked against any root: see verify_chain)."""
    data = _read_identity(cert.extensions, "the certificate")
    try:
        role = Role(data.get("role", ""))
    except ValueError as exc:
        raise PermissionDenied(f"the certificate names no known role: {exc}") from exc
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Member(
        name=data.get("name", ""),
        role=role,
        region=data.get("region", ""),
        tenant=data.get("tenant", ""),
        usage_key=data.get("usage_key", ""),
        serial=cert.serial_number,
        chain_serials=chain_serials or (cert.serial_number,),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=str(issuer[0].value) if issuer else "",
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate], root: x509.Certificate, now: dt.datetime
) -> Member:
    """The member a presented chain (leaf first, then at most one tenant administrator)
    proves, checked against the federation's root at `now`: signatures, validity, and
    that a tenant administrator vouches only for users of its own tenant. Raises
    PermissionDenied saying what is wrong."""
    certs = [c for c in chain if c != root]
    if not certs:
        raise PermissionDenied("no certificate presented")
    if len(certs) > 2:
        raise PermissionDenied("a chain has at most one intermediate (a tenant administrator)")
    leaf = certs[0]
    for cert in certs:
        if now < cert.not_valid_before_utc:
            raise PermissionDenied(
                f"certificate {shown(_cn(cert))} is not valid before {cert.not_valid_before_utc}"
            )
        if now > cert.not_valid_after_utc:
            raise PermissionDenied(
                f"certificate {shown(_cn(cert))} expired at"
                f" {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
    if len(certs) == 1:
        if not _issued_by(leaf, root):
            raise PermissionDenied("the certificate is not signed by this federation's root")
        member = member_of(leaf)
        if member.role is Role.TENANT_ADMIN:
            raise PermissionDenied("a tenant administrator's certificate only admits users")
        return member
    admin_cert = certs[1]
    if not _issued_by(admin_cert, root) or not _issued_by(leaf, admin_cert):
        raise PermissionDenied("the chain does not lead to this federation's root")
    admin = member_of(admin_cert)
    member = member_of(leaf, (leaf.serial_number, admin_cert.serial_number))
    member = dataclasses.replace(
        member, not_after=min(member.not_after, admin_cert.not_valid_after_utc)
    )
    if admin.role is not Role.TENANT_ADMIN:
        raise PermissionDenied(f"{admin.describe()} cannot admit members")
    if member.role is not Role.USER or member.tenant != admin.tenant:
        raise PermissionDenied(
            f"{admin.describe()} admits only users of tenant {admin.tenant},"
            f" not {member.describe()}"
        )
    return member


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"
