"""Checkpoints (c2sp.org/tlog-checkpoint), witnesses and trust policies.

A checkpoint is the note text `<origin>\\n<size>\\n<base64 root>\\n`, signed by the log
key (type 0x01, named after the origin) and cosigned by witnesses (`cosignature/v1`).
A witness cosigns a checkpoint only after checking a consistency proof from the last one
it cosigned for that origin, so no two cosigned checkpoints can disagree. A verifier's
`TrustPolicy` names the log key, the witness keys and how many cosignatures it needs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.ids import shown
from ledger import merkle
from ledger.errors import EquivocationError, InvalidRecord, NoteError, ProofError
from ledger.keys import ALG_COSIGNATURE_V1, ALG_ED25519, SignerKey, VerifierKey
from ledger.note import Note, open_note, parse_note, sign_note, signature_for

__all__ = [
    "Checkpoint",
    "TrustPolicy",
    "Witness",
    "check_equivocation",
    "sign_checkpoint",
    "verify_checkpoint",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A log's tree head: origin, size and root hash."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError(
                f"checkpoint origin must be one non-empty line, got {shown(self.origin)}"
            )
        if not 0 <= self.size <= merkle.MAX_SIZE:
            raise NoteError(f"checkpoint size must be 0..2**64-1, got {self.size}")
        if len(self.root) != merkle.HASH_SIZE:
            raise NoteError(f"checkpoint root must be 32 bytes, got {len(self.root)}")
        if any(not line or "\n" in line for line in self.extensions):
            raise NoteError("checkpoint extension lines must be non-empty single lines")

    def text(self) -> str:
        root = base64.b64encode(self.root).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Read a checkpoint body; refuses a size with leading zeroes or a bad root."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint needs origin, size and root lines, got {len(lines)}")
        origin, size_text, root_text, *extensions = lines
        if (
            not size_text.isascii()
            or not size_text.isdigit()
            or (size_text != "0" and size_text.startswith("0"))
        ):
            raise NoteError(f"invalid log size {shown(size_text)}")
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise NoteError(f"invalid root hash {root_text!r}") from exc
        return cls(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, log_key: SignerKey) -> str:
    """The checkpoint as a signed note from the log's key, whose name must be the origin."""
    if log_key.name != checkpoint.origin:
        raise NoteError(f"log key {log_key.name!r} must be named after {checkpoint.origin!r}")
    if log_key.alg != ALG_ED25519:
        raise NoteError("a log signs with an Ed25519 (type 0x01) key")
    return sign_note(checkpoint.text(), [log_key])


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustPolicy:
    """Which log key to trust, which witnesses, and how many cosignatures are enough."""

    log: VerifierKey
    witnesses: tuple[VerifierKey, ...] = ()
    quorum: int = 0

    def __post_init__(self) -> None:
        if self.log.alg != ALG_ED25519:
            raise InvalidRecord("policy: the log key must be an Ed25519 (type 0x01) key")
        if any(w.alg != ALG_COSIGNATURE_V1 for w in self.witnesses):
            raise InvalidRecord("policy: witness keys must be cosignature/v1 (type 0x04) keys")
        if not 0 <= self.quorum <= len(self.witnesses):
            raise InvalidRecord(
                f"policy: quorum must be 0..{len(self.witnesses)} witnesses, got {self.quorum}"
            )

    @classmethod
    def from_json(cls, text: str) -> TrustPolicy:
        """Read `{"log": vkey, "witnesses": [vkey, ...], "quorum": n}`."""
        try:
            data = json.loads(text)
            log = VerifierKey.parse(data["log"])
            witnesses = tuple(VerifierKey.parse(w) for w in data.get("witnesses", []))
            quorum = data.get("quorum", len(witnesses))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidRecord(f"policy: {exc}") from exc
        if not isinstance(quorum, int):
            raise InvalidRecord(f"policy: quorum must be an integer, got {quorum!r}")
        return cls(log=log, witnesses=witnesses, quorum=quorum)

    def to_json(self) -> str:
        data = {
            "log": self.log.text(),
            "witnesses": [w.text() for w in self.witnesses],
            "quorum": self.quorum,
        }
        return json.dumps(data, indent=2) + "\n"


def verify_checkpoint(note: str, policy: TrustPolicy) -> Checkpoint:
    """Open a checkpoint note under `policy`: the log's signature and at least `quorum`
    witness cosignatures must verify. Raises NoteError saying which is missing."""
    opened, verified = open_note(note, [policy.log, *policy.witnesses])
    if policy.log.key_id not in verified:
        raise NoteError(f"checkpoint is not signed by the log key {policy.log.key_id}")
    cosigned = sum(1 for w in policy.witnesses if w.key_id in verified)
    if cosigned < policy.quorum:
        raise NoteError(
            f"checkpoint has {cosigned} trusted cosignatures, policy needs {policy.quorum}"
        )
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != policy.log.name:
        raise NoteError(
            f"checkpoint origin {checkpoint.origin!r} is not the log {policy.log.name!r}"
        )
    return checkpoint


def check_equivocation(note_a: str, note_b: str, log_key: VerifierKey) -> None:
    """Raise EquivocationError, holding both notes, if two notes validly signed by the log
    show the same origin and size with different roots."""
    a = Checkpoint.from_text(open_note(note_a, [log_key])[0].text)
    b = Checkpoint.from_text(open_note(note_b, [log_key])[0].text)
    if a.origin == b.origin and a.size == b.size and a.root != b.root:
        raise EquivocationError(
            f"log {a.origin} signed two roots for size {a.size}: {a.root.hex()} and {b.root.hex()}",
            note_a=note_a,
            note_b=note_b,
        )


@dataclass(slots=True, kw_only=True)
class Witness:
    """A cosigner: remembers the latest checkpoint it cosigned per log and cosigns a new
    one only when a consistency proof links them."""

    key: SignerKey
    logs: dict[str, VerifierKey]
    latest: dict[str, tuple[Checkpoint, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key.alg != ALG_COSIGNATURE_V1:
            raise InvalidRecord("a witness signs with a cosignature/v1 (type 0x04) key")

    def cosign(self, note: str, proof: Sequence[bytes], time_s: int) -> str:
        """Check `note` against the last checkpoint seen for its log and return the note
        with this witness's cosignature added. `proof` is the consistency proof from the
        last cosigned size; the first checkpoint of a log needs none."""
        origin = Checkpoint.from_text(parse_note(note).text).origin
        log_key = self.logs.get(origin)
        if log_key is None:
            raise NoteError(f"witness does not follow log {origin!r}")
        opened, _ = open_note(note, [log_key])
        new = Checkpoint.from_text(opened.text)
        previous = self.latest.get(origin)
        if previous is not None:
            old, old_note = previous
            if new.size == old.size and new.root != old.root:
                check_equivocation(old_note, note, log_key)
            if new.size < old.size:
                raise ProofError(f"checkpoint size {new.size} is older than {old.size}")
            merkle.verify_consistency(old.size, new.size, list(proof), old.root, new.root)
        self.latest[origin] = (new, note)
        line = signature_for(opened.text, self.key, time_s)
        return Note(text=opened.text, signatures=(*opened.signatures, line)).format()
