"""C2SP signed notes (c2sp.org/signed-note): text, a blank line, signature lines.

    <text ending in a newline>
    <blank line>
    — <key name> base64(uint32 key id || signature)

Signature type 0x01 signs the text itself; type 0x04 (c2sp.org/tlog-cosignature,
`cosignature/v1`) signs `cosignature/v1\\ntime <t>\\n` followed by the text, and its
signature bytes are the 8-byte big-endian timestamp followed by the Ed25519 signature.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.ids import shown
from ledger.errors import InvalidRecord, NoteError
from ledger.keys import ALG_COSIGNATURE_V1, SignerKey, VerifierKey, check_name

__all__ = ["MAX_SIGNATURES", "Note", "NoteSignature", "open_note", "parse_note", "sign_note"]

MAX_SIGNATURES = 100
_DASH = "\u2014 "


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line: key name, 32-bit key id, the signature bytes after the id."""

    name: str
    hash: int
    signature: bytes

    def line(self) -> str:
        blob = self.hash.to_bytes(4, "big") + self.signature
        return f"{_DASH}{self.name} {base64.b64encode(blob).decode('ascii')}\n"

    @property
    def key_id(self) -> str:
        return f"{self.name}+{self.hash:08x}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """A parsed note: its text (with the final newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def format(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed note: text must end with a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise NoteError("malformed note: control character in text")


def _parse_line(line: str) -> NoteSignature:
    if not line.startswith(_DASH):
        raise NoteError(f"malformed note: signature line must start with an em dash: {shown(line)}")
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2:
        raise NoteError(
            f"malformed note: signature line needs a name and a signature: {shown(line)}"
        )
    name, b64 = parts
    try:
        check_name(name)
    except InvalidRecord as exc:
        raise NoteError(f"malformed note: {exc}") from exc
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise NoteError(f"malformed note: signature of {name} is not base64") from exc
    if len(blob) < 5:
        raise NoteError(f"malformed note: signature of {name} is too short")
    return NoteSignature(name=name, hash=int.from_bytes(blob[:4], "big"), signature=blob[4:])


def parse_note(data: str | bytes) -> Note:
    """Split a note into text and signature lines, checking only the syntax."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("malformed note: not UTF-8") from exc
    if any(ord(ch) < 0x20 and ch != "\n" for ch in data):
        raise NoteError("malformed note: control character")
    if not data.endswith("\n"):
        raise NoteError("malformed note: must end with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text = data[: split + 1]
    lines = data[split + 2 : -1].split("\n")
    if lines == [""]:
        raise NoteError("malformed note: no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    return Note(text=text, signatures=tuple(_parse_line(line) for line in lines))


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header, the time line, the checkpoint text."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def signature_for(text: str, signer: SignerKey, timestamp: int | None = None) -> NoteSignature:
    """Sign `text`; a cosignature/v1 key needs the cosigning time (POSIX seconds)."""
    _check_text(text)
    if signer.alg == ALG_COSIGNATURE_V1:
        if timestamp is None or not 0 <= timestamp < 1 << 63:
            raise NoteError(f"cosignature needs a timestamp 0..2**63-1, got {timestamp}")
        raw = timestamp.to_bytes(8, "big") + signer.sign(cosigned_message(text, timestamp))
    else:
        raw = signer.sign(text.encode("utf-8"))
    return NoteSignature(name=signer.name, hash=signer.verifier.hash, signature=raw)


def sign_note(text: str, signers: Sequence[SignerKey], timestamp: int | None = None) -> str:
    """A signed note of `text` with one signature line per signer, in order."""
    if not signers:
        raise NoteError("a note needs at least one signer")
    sigs = tuple(signature_for(text, s, timestamp) for s in signers)
    return Note(text=text, signatures=sigs).format()


def _verify_one(key: VerifierKey, text: str, sig: NoteSignature) -> bool:
    if key.alg == ALG_COSIGNATURE_V1:
        if len(sig.signature) != 8 + 64:
            return False
        timestamp = int.from_bytes(sig.signature[:8], "big")
        if timestamp >= 1 << 63:
            return False
        return key.verify(cosigned_message(text, timestamp), sig.signature[8:])
    return key.verify(text.encode("utf-8"), sig.signature)


def open_note(data: str | bytes, verifiers: Iterable[VerifierKey]) -> tuple[Note, list[str]]:
    """Parse a note and verify every signature from a known key.

    Signatures from unknown keys are ignored; a known key whose signature fails rejects
    the whole note; a note with no verified signature is rejected. Returns the note and
    the key ids that verified, in line order."""
    note = parse_note(data)
    known: dict[tuple[str, int], VerifierKey] = {}
    for key in verifiers:
        ident = (key.name, key.hash)
        if ident in known and known[ident] != key:
            raise NoteError(f"ambiguous key {key.key_id}")
        known[ident] = key
    verified: list[str] = []
    for sig in note.signatures:
        match = known.get((sig.name, sig.hash))
        if match is None:
            continue
        if not _verify_one(match, note.text, sig):
            raise NoteError(f"invalid signature for key {sig.key_id}")
        if sig.key_id not in verified:
            verified.append(sig.key_id)
    if not verified:
        raise NoteError("note has no verifiable signatures")
    return note, verified
