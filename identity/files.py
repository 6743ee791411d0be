"""Where identities live on disk.

A member's folder (made by `icx user init`, `icx agent init`, `icx broker init`):

    key.pem       the member's P-256 key (mode 0600; never leaves the folder)
    request.pem   the signing request to hand to the coordinator
    cert.pem      the membership certificate as admitted (leaf, then any intermediate)
    root.pem      the federation's root certificate
    config.toml   a user's broker address (user folders only)

The federation's folder (made by `icx admin init-federation`, kept by the coordinator):

    root-key.pem  the root key: it admits and revokes (mode 0600)
    root.pem      the root certificate, handed to every member
    revocations.pem  the current signed revocation list
    issued/       a copy of every certificate admitted, named by serial
    coordinator/  the coordinator's own member folder
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from identity.certs import (
    Member,
    Role,
    admit,
    certificate_pem,
    key_pem,
    load_certificates,
    load_key,
    load_request,
    member_of,
    new_key,
    new_root,
    request,
    request_pem,
    verify_chain,
)
from identity.revocation import EMPTY, Revocations, sign_revocations, verify_revocations

__all__ = ["Authority", "Credentials", "init_member", "write_private"]

KEY = "key.pem"
REQUEST = "request.pem"
CERT = "cert.pem"
ROOT = "root.pem"
ROOT_KEY = "root-key.pem"
REVOCATIONS = "revocations.pem"


def write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only; never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read(path: Path, missing: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidArgument(missing) from exc


def init_member(
    folder: Path, name: str, *, hosts: tuple[str, ...] = (), usage_key: str = ""
) -> Path:
    """Make a key and a signing request in `folder` (kept if there already: a second
    init hands the same request again). Returns the request's path."""
    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / KEY
    if key_path.exists():
        key = load_key(key_path.read_bytes(), str(key_path))
    else:
        key = new_key()
        write_private(key_path, key_pem(key))
    (folder / REQUEST).write_bytes(
        request_pem(request(key, name, hosts=hosts, usage_key=usage_key))
    )
    return folder / REQUEST


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a member presents: its key, its chain (leaf first) and the root it trusts,
    as PEM bytes for TLS, with the member its certificate names."""

    key_pem: bytes
    chain_pem: bytes
    root_pem: bytes
    member: Member
    root: x509.Certificate

    @classmethod
    def load(cls, folder: Path, now: dt.datetime | None = None) -> Credentials:
        """The member folder's credentials, checked as a broker would check them, so that
        a user hears what is wrong before dialling: not set up, not admitted yet,
        a certificate for another key or another federation, expired."""
        if not folder.is_dir():
            raise InvalidArgument(
                f"no identity at {folder}: run `icx user init` (or agent/broker init)"
            )
        key_data = _read(folder / KEY, f"no key in {folder}: run the matching `init` first")
        cert_data = _read(
            folder / CERT,
            f"not admitted yet: hand {folder / REQUEST} to the coordinator and put the"
            f" certificate it gives you at {folder / CERT}",
        )
        root_data = _read(folder / ROOT, f"no federation root at {folder / ROOT}")
        return cls.from_pem(key_data, cert_data, root_data, where=folder, now=now)

    @classmethod
    def from_pem(
        cls,
        key_data: bytes,
        cert_data: bytes,
        root_data: bytes,
        *,
        where: Path,
        now: dt.datetime | None = None,
    ) -> Credentials:
        """Credentials from their PEM bytes, checked: the certificate is for the key and
        a member of the root's federation now. `where` names them in errors."""
        key = load_key(key_data, str(where / KEY))
        chain = load_certificates(cert_data, str(where / CERT))
        roots = load_certificates(root_data, str(where / ROOT))
        if not chain or len(roots) != 1:
            raise InvalidArgument(f"{where}: cert.pem needs a certificate, root.pem exactly one")
        if chain[0].public_key() != key.public_key():
            raise InvalidArgument(f"{where / CERT} was issued for another key than {where / KEY}")
        try:
            member = verify_chain(chain, roots[0], now or dt.datetime.now(dt.UTC))
        except PermissionDenied as exc:
            raise Unauthenticated(f"{where / CERT} (root {where / ROOT}): {exc}") from exc
        return cls(
            key_pem=key_data,
            chain_pem=cert_data,
            root_pem=root_data,
            member=member,
            root=roots[0],
        )


class Authority:
    """The coordinator's federation folder: the root, what it issued, what it revoked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls, folder: Path, federation: str, now: dt.datetime | None = None) -> Authority:
        """A new federation: the root key and certificate, an empty revocation list and
        the coordinator's own membership. Refuses a folder that holds a root already."""
        now = now or dt.datetime.now(dt.UTC)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / ROOT_KEY).exists():
            raise InvalidArgument(f"{folder} holds a federation already ({ROOT_KEY})")
        key = new_key()
        root = new_root(key, federation, now)
        write_private(folder / ROOT_KEY, key_pem(key))
        (folder / ROOT).write_bytes(certificate_pem(root))
        (folder / "issued").mkdir(exist_ok=True)
        authority = cls(folder)
        first = sign_revocations(EMPTY, (), root_key=key, root=root, now=now)
        (folder / REVOCATIONS).write_bytes(first.pem)
        coordinator = folder / "coordinator"
        init_member(coordinator, "coordinator")
        authority.admit_into(coordinator, role=Role.COORDINATOR, days=365, now=now)
        return authority

    @functools.cached_property
    def root(self) -> x509.Certificate:
        return load_certificates(_read(self.folder / ROOT, f"no {ROOT} in {self.folder}"))[0]

    def _key(self) -> ec.EllipticCurvePrivateKey:
        return load_key(
            _read(
                self.folder / ROOT_KEY,
                f"{self.folder} is not a federation folder: run `icx admin init-federation`",
            ),
            str(self.folder / ROOT_KEY),
        )

    def admit(
        self,
        request_data: bytes,
        *,
        role: Role,
        region: str = "",
        tenant: str = "",
        days: int = 365,
        now: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, Member]:
        cert = admit(
            load_request(request_data),
            issuer_key=self._key(),
            issuer=self.root,
            role=role,
            region=region,
            tenant=tenant,
            days=days,
            now=now or dt.datetime.now(dt.UTC),
        )
        (self.folder / "issued" / f"{cert.serial_number:x}.pem").write_bytes(certificate_pem(cert))
        return cert, member_of(cert)

    def admit_into(self, folder: Path, **how: object) -> Member:
        """Admit the request in a member folder and install certificate and root there."""
        cert, member = self.admit((folder / REQUEST).read_bytes(), **how)  # type: ignore[arg-type]
        (folder / CERT).write_bytes(certificate_pem(cert))
        (folder / ROOT).write_bytes(certificate_pem(self.root))
        return member

    def revocations(self) -> Revocations:
        data = _read(self.folder / REVOCATIONS, f"no {REVOCATIONS} in {self.folder}")
        return verify_revocations(data, self.root)

    def revoke(self, serials: list[int], now: dt.datetime | None = None) -> Revocations:
        """The next revocation list, with `serials` added, written to the folder."""
        now = now or dt.datetime.now(dt.UTC)
        current = self.revocations()
        new = sign_revocations(current, serials, root_key=self._key(), root=self.root, now=now)
        tmp = self.folder / (REVOCATIONS + ".tmp")
        tmp.write_bytes(new.pem)
        tmp.replace(self.folder / REVOCATIONS)
        return new

    def issued(self, serial: int) -> Member | None:
        path = self.folder / "issued" / f"{serial:x}.pem"
        return member_of(load_certificates(path.read_bytes())[0]) if path.exists() else None
