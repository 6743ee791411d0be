"""Signed notes, checkpoints, cosignatures, witnesses and equivocation.

Interop is checked two ways: against golang.org/x/mod/sumdb/note's own test vectors
(note_test.go: the PeterNeumann and EnochRoot keys and signatures), and with a second,
independent signed-note verifier below, written from the C2SP specs (signed-note,
tlog-checkpoint, tlog-cosignature) using `cryptography` directly and none of ledger's
code."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import merkle
from ledger.checkpoint import (
    Checkpoint,
    TrustPolicy,
    Witness,
    check_equivocation,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.errors import EquivocationError, InvalidRecord, NoteError, ProofError
from ledger.keys import ALG_COSIGNATURE_V1, SignerKey, VerifierKey
from ledger.note import open_note, sign_note
from tests.ledger.conftest import ORIGIN, seeded_key

# golang.org/x/mod/sumdb/note, note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    "ngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)


# ---------------------------------------------------------------- independent verifier


def spec_parse_vkey(vkey: str) -> tuple[str, int, int, bytes]:
    """c2sp.org/signed-note#verifier-keys: name+hex(id)+base64(type||key)."""
    name, hex_id, rest = vkey.split("+", 2)
    raw = base64.b64decode(rest, validate=True)
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    assert key_id.hex() == hex_id, "key id must be SHA-256(name || 0x0A || type || key)[:4]"
    return name, int(hex_id, 16), raw[0], raw[1:]


def spec_open(note: str, vkeys: list[str]) -> list[str]:
    """Return the names whose signatures verify; raise on anything the spec rejects."""
    data = note.encode("utf-8")
    assert data.endswith(b"\n")
    assert all(b >= 0x20 or b == 0x0A for b in data), "no control characters but newline"
    cut = data.rindex(b"\n\n")
    text, sig_block = data[: cut + 1], data[cut + 2 :]
    keys = {}
    for v in vkeys:
        name, key_id, sig_type, raw_key = spec_parse_vkey(v)
        keys[(name, key_id)] = (sig_type, Ed25519PublicKey.from_public_bytes(raw_key))
    verified = []
    for line in sig_block.decode().split("\n")[:-1]:
        assert line.startswith("\u2014 "), "signature lines start with an em dash and a space"
        name, b64 = line[2:].split(" ")
        blob = base64.b64decode(b64, validate=True)
        key_id, signature = int.from_bytes(blob[:4], "big"), blob[4:]
        if (name, key_id) not in keys:
            continue
        sig_type, public = keys[(name, key_id)]
        if sig_type == 0x01:
            message = text
        else:
            assert sig_type == 0x04
            timestamp = int.from_bytes(signature[:8], "big")
            message = b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + text
            signature = signature[8:]
        try:
            public.verify(signature, message)
        except InvalidSignature as exc:
            raise AssertionError(f"signature of {name} does not verify") from exc
        verified.append(name)
    return verified


def spec_checkpoint(note: str) -> tuple[str, int, bytes]:
    """c2sp.org/tlog-checkpoint: origin, decimal size, base64 root."""
    text = note[: note.rindex("\n\n") + 1]
    origin, size, root = text.split("\n")[:3]
    assert size == "0" or not size.startswith("0")
    return origin, int(size), base64.b64decode(root, validate=True)


# ---------------------------------------------------------------- Go vectors


def test_go_signer_key_signs_byte_exact() -> None:
    signer = SignerKey.parse(PETER_SKEY)
    assert signer.verifier.text() == PETER_VKEY
    assert signer.text() == PETER_SKEY
    assert sign_note(GO_TEXT, [signer]) == GO_TEXT + "\n" + PETER_SIG


def test_go_notes_open() -> None:
    peter, enoch = VerifierKey.parse(PETER_VKEY), VerifierKey.parse(ENOCH_VKEY)
    note, verified = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter])
    assert note.text == GO_TEXT
    assert verified == ["PeterNeumann+c74f20a3"]
    _, both = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter, enoch])
    assert both == ["PeterNeumann+c74f20a3", "EnochRoot+af0cfe78"]
    with pytest.raises(NoteError, match="note has no verifiable signatures"):
        open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    bad = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        open_note(bad, [peter])
    with pytest.raises(NoteError, match="malformed note"):
        open_note(GO_TEXT + "\n" + PETER_SIG * 101, [peter])


@pytest.mark.parametrize(
    "msg",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1"
        "FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ],
)
def test_go_malformed_notes(msg: str) -> None:
    with pytest.raises(NoteError, match="malformed note"):
        open_note(msg, [VerifierKey.parse(PETER_VKEY)])


def test_go_vkey_manglings_are_refused() -> None:
    b = bytearray(PETER_VKEY.encode())
    for i in range(len(b)):
        b[i] += 1
        with pytest.raises(InvalidRecord):
            VerifierKey.parse(b.decode("latin-1"))
        b[i] -= 1
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        with pytest.raises(InvalidRecord):
            VerifierKey.parse(bad)


# ---------------------------------------------------------------- checkpoints


def _tree(n: int) -> list[bytes]:
    return [merkle.hash_leaf(f"entry {i}".encode()) for i in range(n)]


def test_checkpoint_note_passes_the_independent_verifier() -> None:
    log_key = seeded_key(ORIGIN, 1)
    cp = Checkpoint(origin=ORIGIN, size=5, root=merkle.root(_tree(5)))
    note = sign_checkpoint(cp, log_key)
    assert spec_open(note, [log_key.verifier.text()]) == [ORIGIN]
    assert spec_checkpoint(note) == (ORIGIN, 5, cp.root)
    assert note.startswith(f"{ORIGIN}\n5\n{base64.b64encode(cp.root).decode()}\n\n\u2014 {ORIGIN} ")
    assert verify_checkpoint(note, TrustPolicy(log=log_key.verifier)) == cp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ORIGIN}\n012\n{base64.b64encode(bytes(32)).decode()}\n", "invalid log size"),
        (f"{ORIGIN}\n-1\n{base64.b64encode(bytes(32)).decode()}\n", "invalid log size"),
        (f"{ORIGIN}\n12\nNOTBASE64!\n", "invalid root hash"),
        (f"{ORIGIN}\n12\n", "needs origin, size and root"),
        (f"{ORIGIN}\n12\n{base64.b64encode(bytes(31)).decode()}\n", "root must be 32 bytes"),
    ],
)
def test_checkpoint_text_is_checked(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Checkpoint.from_text(text)


def test_witness_cosigns_consistent_checkpoints_only() -> None:
    log_key = seeded_key(ORIGIN, 1)
    witness_key = seeded_key("witness.test/w1", 7, alg=ALG_COSIGNATURE_V1)
    witness = Witness(key=witness_key, logs={ORIGIN: log_key.verifier})
    leaves = _tree(20)

    note5 = sign_checkpoint(
        Checkpoint(origin=ORIGIN, size=5, root=merkle.root(leaves[:5])), log_key
    )
    cosigned5 = witness.cosign(note5, [], time_s=1_793_500_000)
    assert spec_open(cosigned5, [log_key.verifier.text(), witness_key.verifier.text()]) == [
        ORIGIN,
        "witness.test/w1",
    ]
    policy = TrustPolicy(log=log_key.verifier, witnesses=(witness_key.verifier,), quorum=1)
    assert verify_checkpoint(cosigned5, policy).size == 5
    with pytest.raises(NoteError, match=r"0 trusted cosignatures, policy needs 1"):
        verify_checkpoint(note5, policy)

    note20 = sign_checkpoint(Checkpoint(origin=ORIGIN, size=20, root=merkle.root(leaves)), log_key)
    with pytest.raises(ProofError):
        witness.cosign(note20, [], time_s=1_793_500_060)
    proof = merkle.consistency_proof(5, leaves)
    cosigned20 = witness.cosign(note20, proof, time_s=1_793_500_060)
    assert verify_checkpoint(cosigned20, policy).size == 20

    # A fork: a different 25-leaf tree that does not extend the 20 the witness saw.
    forked = [*_tree(19), merkle.hash_leaf(b"rewritten"), *_tree(25)[20:]]
    note25 = sign_checkpoint(Checkpoint(origin=ORIGIN, size=25, root=merkle.root(forked)), log_key)
    with pytest.raises(ProofError):
        witness.cosign(note25, merkle.consistency_proof(20, forked), time_s=1_793_500_120)


def test_equivocation_is_reported_with_both_notes() -> None:
    log_key = seeded_key(ORIGIN, 1)
    honest = sign_checkpoint(Checkpoint(origin=ORIGIN, size=8, root=merkle.root(_tree(8))), log_key)
    other = [merkle.hash_leaf(b"x"), *_tree(8)[1:]]
    forked = sign_checkpoint(Checkpoint(origin=ORIGIN, size=8, root=merkle.root(other)), log_key)
    with pytest.raises(EquivocationError, match=r"signed two roots for size 8") as caught:
        check_equivocation(honest, forked, log_key.verifier)
    assert (caught.value.note_a, caught.value.note_b) == (honest, forked)
    check_equivocation(honest, honest, log_key.verifier)

    witness = Witness(
        key=seeded_key("witness.test/w1", 7, alg=ALG_COSIGNATURE_V1),
        logs={ORIGIN: log_key.verifier},
    )
    witness.cosign(honest, [], time_s=1)
    with pytest.raises(EquivocationError):
        witness.cosign(forked, [], time_s=2)


def test_policy_round_trips_and_checks_key_types() -> None:
    log_key = seeded_key(ORIGIN, 1)
    w = seeded_key("witness.test/w1", 7, alg=ALG_COSIGNATURE_V1)
    policy = TrustPolicy(log=log_key.verifier, witnesses=(w.verifier,), quorum=1)
    assert TrustPolicy.from_json(policy.to_json()) == policy
    with pytest.raises(InvalidRecord, match=r"quorum must be 0..1 witnesses, got 2"):
        TrustPolicy(log=log_key.verifier, witnesses=(w.verifier,), quorum=2)
    with pytest.raises(InvalidRecord, match=r"witness keys must be cosignature/v1"):
        TrustPolicy(log=log_key.verifier, witnesses=(log_key.verifier,), quorum=1)
