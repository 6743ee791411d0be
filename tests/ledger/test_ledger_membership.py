"""Key admissions bound to membership certificates: the entry shapes, and an audit that
checks every admission against the federation's root, through the API and `icx ledger
audit --root`."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cli.main import main
from identity import Authority, init_member
from identity import Role as MemberRole
from identity.certs import certificate_pem
from ledger import LedgerStore, Log, SignerKey, TrustPolicy, canonical, verify_bundle
from ledger.errors import AuditError, InvalidRecord
from ledger.keyring import MAX_CERT_CHARS, KeyEvent, Role
from ledger.signing import sign_records
from tests.conftest import run_icx
from tests.ledger.conftest import ORIGIN, seeded_key, usage

WUHAN = seeded_key("wuhan-1", 2)
GUIZHOU = seeded_key("guizhou-1", 3)
LAB = seeded_key("lab", 4)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("fed"), "test")


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("other"), "other")


_made = itertools.count()


def member_cert(
    authority: Authority,
    name: str,
    usage_key: str,
    role: MemberRole = MemberRole.CENTER,
) -> str:
    """The PEM of a membership certificate `authority` admits for `name`."""
    folder = authority.folder / f"member-{next(_made)}"
    init_member(folder, name, usage_key=usage_key)
    authority.admit_into(folder, role=role, region="R", days=1)
    return (folder / "cert.pem").read_text()


def root_file(authority: Authority) -> Path:
    return authority.folder / "root.pem"


def _text(key: SignerKey) -> str:
    return key.verifier.text()


@pytest.fixture
def certified(tmp_path: Path, fed: Authority) -> Iterator[Log]:
    """A ledger whose two center keys are admitted with certificates from `fed`, with
    a record of each center and a checkpoint."""
    store = LedgerStore(tmp_path / "certified.db")
    log = Log.create(store, seeded_key(ORIGIN, 1))
    for key in (WUHAN, GUIZHOU):
        log.admit(key.name, Role.CENTER, key.verifier, cert=member_cert(fed, key.name, _text(key)))
    for key in (WUHAN, GUIZHOU):
        log.append(sign_records([usage(f"{key.name}/u1", producer=key.name)], key))
    log.checkpoint()
    try:
        yield log
    finally:
        store.close()


# ------------------------------------------------------------------ entry shapes


def test_an_admission_without_cert_keeps_the_old_bytes() -> None:
    event = KeyEvent.admit("wuhan-1", Role.CENTER, WUHAN.verifier)
    assert event.entry() == canonical.encode(
        {"type": "key", "action": "admit", "party": "wuhan-1", "role": "center",
         "key": _text(WUHAN)}
    )  # fmt: skip
    assert KeyEvent.from_json(canonical.decode(event.entry())) == event
    revoke = KeyEvent.revoke(WUHAN.key_id)
    assert revoke.entry() == canonical.encode(
        {"type": "key", "action": "revoke", "key": WUHAN.key_id}
    )
    assert KeyEvent.from_json(canonical.decode(revoke.entry())) == revoke


def test_cert_and_reason_round_trip(fed: Authority) -> None:
    pem = member_cert(fed, "wuhan-1", _text(WUHAN))
    event = KeyEvent.admit("wuhan-1", Role.CENTER, WUHAN.verifier, cert=pem)
    data = canonical.decode(event.entry())
    assert isinstance(data, dict) and data["cert"] == pem
    assert KeyEvent.from_json(data) == event
    revoke = KeyEvent.revoke(WUHAN.key_id, reason="certificate 1a2b revoked, revocation list 3")
    data = canonical.decode(revoke.entry())
    assert isinstance(data, dict) and data["reason"] == revoke.reason
    assert KeyEvent.from_json(data) == revoke


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cert": ""}, r"admit: cert, when present, must be a non-empty PEM text"),
        ({"cert": 7}, r"admit: cert, when present, must be a non-empty PEM text"),
        ({"cert": "x" * (MAX_CERT_CHARS + 1)}, r"cert must be at most 16384 characters"),
        ({"reason": "why"}, r"malformed 'admit' entry"),
        ({"certs": "x"}, r"malformed 'admit' entry"),
    ],
)
def test_from_json_refuses_other_admission_shapes(extra: dict[str, object], message: str) -> None:
    data = canonical.decode(KeyEvent.admit("wuhan-1", Role.CENTER, WUHAN.verifier).entry())
    assert isinstance(data, dict)
    with pytest.raises(InvalidRecord, match=message):
        KeyEvent.from_json({**data, **extra})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"reason": ""}, r"revoke: reason, when present, must be a non-empty text"),
        ({"reason": ["x"]}, r"revoke: reason, when present, must be a non-empty text"),
        ({"reason": "a\nb"}, r"reason must not contain control or format characters"),
        ({"reason": "x" * 129}, r"reason must be at most 128 characters"),
        ({"cert": "x"}, r"malformed 'revoke' entry"),
    ],
)
def test_from_json_refuses_other_revocation_shapes(extra: dict[str, object], message: str) -> None:
    data = {"type": "key", "action": "revoke", "key": WUHAN.key_id}
    with pytest.raises(InvalidRecord, match=message):
        KeyEvent.from_json({**data, **extra})


# ------------------------------------------------------------------ the audit, through the API


def test_certified_admissions_audit_with_the_root(certified: Log, fed: Authority) -> None:
    report = certified.audit(root=fed.root)
    assert (report.size, report.key_events, report.records) == (5, 3, 2)
    assert certified.audit() == report
    # A revocation with its reason, and the rotated key certified anew.
    rotated = seeded_key("wuhan-1", 9)
    certified.revoke(WUHAN.key_id, reason="certificate 1a2b revoked, revocation list 3")
    pem = member_cert(fed, "wuhan-1", _text(rotated))
    certified.admit("wuhan-1", Role.CENTER, rotated.verifier, cert=pem)
    certified.append(sign_records([usage("wuhan-1/u2", producer="wuhan-1")], rotated))
    certified.checkpoint()
    reopened = Log(LedgerStore(certified.store.path))
    assert reopened.audit(root=fed.root).key_events == 5
    revocation = reopened.store.entry(5).leaf
    assert b'"reason":"certificate 1a2b revoked, revocation list 3"' in revocation
    # A proof bundle carries the admission, certificate and all.
    bundle = reopened.prove(record_id="wuhan-1/u2")
    assert bundle.key_leaf is not None and b"BEGIN CERTIFICATE" in bundle.key_leaf
    assert verify_bundle(bundle, TrustPolicy(log=reopened.log_key)).index == 7


def _bad_admission(
    tmp_path: Path, fed: Authority, other_fed: Authority, case: str
) -> tuple[Path, str]:
    """A ledger whose entry 1 admits Guizhou properly and entry 2 admits a key as
    `case` says; returns its path and what the audit with `fed`'s root should say."""
    path = tmp_path / "bad.db"
    store = LedgerStore(path)
    log = Log.create(store, seeded_key(ORIGIN, 1))
    log.admit("guizhou-1", Role.CENTER, GUIZHOU.verifier,
              cert=member_cert(fed, "guizhou-1", _text(GUIZHOU)))  # fmt: skip
    party, role, key = "wuhan-1", Role.CENTER, WUHAN
    cert = member_cert(fed, "wuhan-1", _text(WUHAN))
    if case == "another root":
        cert = member_cert(other_fed, "wuhan-1", _text(WUHAN))
        message = "the membership certificate is not issued by the federation root"
    elif case == "another center":
        cert = member_cert(fed, "guizhou-1", _text(WUHAN))
        message = "the membership certificate names 'guizhou-1'"
    elif case == "another usage key":
        cert = member_cert(fed, "wuhan-1", _text(GUIZHOU))
        message = f"the membership certificate binds usage key {GUIZHOU.key_id}"
    elif case == "no cert":
        cert = ""
        message = "admitted without a membership certificate"
    elif case == "not a certificate":
        cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        message = "its membership certificate is not PEM X.509"
    elif case == "a broker's certificate":
        cert = member_cert(fed, "wuhan-1", _text(WUHAN), role=MemberRole.BROKER)
        message = "the membership certificate is for a broker, not a center"
    else:
        assert case == "a tenant key"
        party, role, key = "lab", Role.TENANT, LAB
        message = "no membership role certifies a tenant key"
    log.admit(party, role, key.verifier, cert=cert)
    log.append(sign_records([usage("guizhou-1/u1", producer="guizhou-1")], GUIZHOU))
    log.checkpoint()
    store.close()
    sep = " " if case == "no cert" else ": "
    return path, f"entry 2: key {key.key_id} of '{party}'{sep}{message}"


BAD_CASES = [
    "another root",
    "another center",
    "another usage key",
    "no cert",
    "not a certificate",
    "a broker's certificate",
    "a tenant key",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_the_audit_names_an_admission_the_root_does_not_certify(
    tmp_path: Path, fed: Authority, other_fed: Authority, case: str
) -> None:
    path, message = _bad_admission(tmp_path, fed, other_fed, case)
    log = Log(LedgerStore(path))
    with pytest.raises(AuditError, match=re.escape(message)) as caught:
        log.audit(root=fed.root)
    assert caught.value.index == 2
    assert log.audit().key_events == 3  # without the root, only the keyring's rules


def test_a_chain_in_cert_is_refused(tmp_path: Path, fed: Authority) -> None:
    store = LedgerStore(tmp_path / "chain.db")
    log = Log.create(store, seeded_key(ORIGIN, 1))
    pem = member_cert(fed, "wuhan-1", _text(WUHAN))
    log.admit("wuhan-1", Role.CENTER, WUHAN.verifier, cert=pem + certificate_pem(fed.root).decode())
    with pytest.raises(AuditError, match=r"entry 1: .*: cert must hold one certificate, found 2"):
        log.audit(root=fed.root)


# ------------------------------------------------------------------ icx ledger audit --root


def test_cli_audits_with_the_root(certified: Log, fed: Authority) -> None:
    db = str(certified.store.path)
    result = run_icx("ledger", "audit", "--db", db, "--root", str(root_file(fed)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 5 entries (2 records, 3 key events)")
    assert result.stdout.rstrip().endswith("key admissions certified by the federation root")
    result = run_icx("ledger", "audit", "--db", db, "--root", str(root_file(fed)), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key_events"] == 3


@pytest.mark.parametrize("case", ["another root", "no cert"])
def test_cli_names_the_uncertified_admission(
    tmp_path: Path, fed: Authority, other_fed: Authority, case: str
) -> None:
    path, message = _bad_admission(tmp_path, fed, other_fed, case)
    result = run_icx("ledger", "audit", "--db", str(path), "--root", str(root_file(fed)), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["first_bad_index"] == 2
    assert result.stderr.startswith(f"icx: error: audit failed: {message}")
    assert len(result.stderr.splitlines()) == 1
    assert run_icx("ledger", "audit", "--db", str(path)).returncode == 0


def test_an_old_shape_ledger_audits_without_the_root(
    tmp_path: Path, fed: Authority, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "old.db"
    assert main(["ledger", "sample", "--db", str(db), "--records", "20", "--centers", "2",
                 "--tenants", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["ledger", "audit", "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("ok: 25 entries (20 records, 5 key events)")
    assert main(["ledger", "audit", "--db", str(db), "--root", str(root_file(fed))]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"icx: error: audit failed: entry 1: key center/[a-z]+-1\+[0-9a-f]{8} of "
        r"'center/[a-z]+-1' admitted without a membership certificate\n",
        err,
    ), err


def test_cli_refuses_a_root_file_it_cannot_use(
    certified: Log, fed: Authority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(certified.store.path)
    binary = tmp_path / "root.der"
    binary.write_bytes(fed.root.public_bytes(Encoding.DER))
    two = tmp_path / "two.pem"
    two.write_bytes(certificate_pem(fed.root, fed.root))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (tmp_path / "none.pem", f"no federation root certificate at {tmp_path / 'none.pem'}"),
        (tmp_path, f"cannot read federation root certificate {tmp_path}: Is a directory"),
        (binary, f"federation root certificate {binary} is not UTF-8 text"),
        (junk, f"federation root certificate {junk} is not PEM X.509"),
        (two, f"federation root certificate {two} must hold one certificate, found 2"),
    ]
    for path, message in cases:
        capsys.readouterr()
        assert main(["ledger", "audit", "--db", db, "--root", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"icx: error: {message}"), err
        assert len(err.splitlines()) == 1
