"""Which key may sign for which party, as of each position in the log.

Key admissions and revocations are themselves log entries, so an auditor replays them
with everything else and needs nothing outside the log. A revocation applies from its
own index on: what a key signed before it stays valid, because the log proves the order.

    {"type": "key", "action": "admit", "party": "...", "role": "center", "key": "<vkey>",
     "cert": "<PEM>"}
    {"type": "key", "action": "revoke", "key": "<key id>", "reason": "..."}

`cert` (the membership certificate that certifies the key, see `ledger._membership`) and
`reason` are present only when set, so entries logged before they existed keep their
bytes and still parse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from core.ids import check_name, check_text, shown
from ledger import canonical
from ledger.errors import InvalidRecord, RefusedRecord
from ledger.keys import ALG_ED25519, VerifierKey
from ledger.records import ID_PATTERN

__all__ = ["MAX_CERT_CHARS", "KeyEntry", "KeyEvent", "KeyRing", "Role"]

# A P-256 membership certificate is about 1 KB of PEM; the bound keeps key entries small.
MAX_CERT_CHARS = 16_384
_ADMIT_FIELDS = frozenset({"type", "action", "party", "role", "key"})
_REVOKE_FIELDS = frozenset({"type", "action", "key"})


class Role(enum.StrEnum):
    CENTER = "center"
    TENANT = "tenant"
    BROKER = "broker"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEvent:
    """One admission (with party, role, key and optionally the PEM of its membership
    certificate) or revocation (with key id and optionally why)."""

    action: str
    key_id: str
    party: str = ""
    role: Role | None = None
    key: VerifierKey | None = None
    cert: str = ""
    reason: str = ""

    @classmethod
    def admit(cls, party: str, role: Role, key: VerifierKey, *, cert: str = "") -> KeyEvent:
        """`cert` is checked for size only here; `ledger._membership` reads it."""
        if not ID_PATTERN.fullmatch(party):
            raise InvalidRecord(f"party must be 1..128 of [A-Za-z0-9._:/@-], got {shown(party)}")
        if key.alg != ALG_ED25519:
            raise InvalidRecord(f"key {key.key_id}: parties sign with Ed25519 (type 0x01) keys")
        check_text("cert", cert, InvalidRecord, max_chars=MAX_CERT_CHARS)
        return cls(
            action="admit", key_id=key.key_id, party=party, role=Role(role), key=key, cert=cert
        )

    @classmethod
    def revoke(cls, key_id: str, *, reason: str = "") -> KeyEvent:
        check_name("reason", reason, InvalidRecord)
        return cls(action="revoke", key_id=key_id, reason=reason)

    def entry(self) -> bytes:
        data: dict[str, canonical.JsonValue] = {"type": "key", "action": self.action}
        if self.action == "admit":
            assert self.key is not None and self.role is not None
            data.update(party=self.party, role=str(self.role), key=self.key.text())
            if self.cert:
                data["cert"] = self.cert
        else:
            data["key"] = self.key_id
            if self.reason:
                data["reason"] = self.reason
        return canonical.encode(data)

    @classmethod
    def from_json(cls, data: Any) -> KeyEvent:
        """Parse a key entry of either shape, with or without `cert` (an admission) or
        `reason` (a revocation); an optional field that is present must not be empty,
        since `entry` would not write it."""
        if not isinstance(data, dict) or data.get("type") != "key":
            raise InvalidRecord("entry is not a key event")
        action = data.get("action")
        try:
            if action == "admit" and set(data) - {"cert"} == _ADMIT_FIELDS:
                cert = data.get("cert", "")
                if "cert" in data and (not isinstance(cert, str) or not cert):
                    raise InvalidRecord("admit: cert, when present, must be a non-empty PEM text")
                key = VerifierKey.parse(data["key"])
                return cls.admit(data["party"], Role(data["role"]), key, cert=cert)
            if action == "revoke" and set(data) - {"reason"} == _REVOKE_FIELDS:
                reason = data.get("reason", "")
                if not isinstance(data["key"], str):
                    raise InvalidRecord("revoke: key must be a key id")
                if "reason" in data and (not isinstance(reason, str) or not reason):
                    raise InvalidRecord("revoke: reason, when present, must be a non-empty text")
                return cls.revoke(data["key"], reason=reason)
        except (ValueError, TypeError) as exc:
            raise InvalidRecord(f"key event: {exc}") from exc
        raise InvalidRecord(f"key event: malformed {shown(action)} entry")


@dataclass(slots=True, kw_only=True)
class KeyEntry:
    party: str
    role: Role
    key: VerifierKey
    admitted_at: int
    revoked_at: int | None = None


class KeyRing:
    """Key ids to parties, replayed from key events in log order."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyEntry] = {}

    def apply(self, event: KeyEvent, index: int) -> None:
        """Apply the event logged at `index`. Refuses a second admission of one key id
        and the revocation of an unknown or revoked key."""
        if event.action == "admit":
            assert event.key is not None and event.role is not None
            if event.key_id in self._keys:
                raise RefusedRecord(f"key {event.key_id} is already admitted")
            self._keys[event.key_id] = KeyEntry(
                party=event.party, role=event.role, key=event.key, admitted_at=index
            )
            return
        entry = self._keys.get(event.key_id)
        if entry is None:
            raise RefusedRecord(f"cannot revoke unknown key {event.key_id}")
        if entry.revoked_at is not None:
            raise RefusedRecord(
                f"key {event.key_id} was already revoked at entry {entry.revoked_at}"
            )
        entry.revoked_at = index

    def check(self, event: KeyEvent) -> None:
        """Raise what `apply` would raise, changing nothing."""
        if event.action == "admit" and event.key_id in self._keys:
            raise RefusedRecord(f"key {event.key_id} is already admitted")
        if event.action == "revoke":
            entry = self._keys.get(event.key_id)
            if entry is None:
                raise RefusedRecord(f"cannot revoke unknown key {event.key_id}")
            if entry.revoked_at is not None:
                raise RefusedRecord(
                    f"key {event.key_id} was already revoked at entry {entry.revoked_at}"
                )

    def signer(self, key_id: str, *, party: str, roles: frozenset[Role], at: int) -> VerifierKey:
        """The key `key_id` if, at log index `at`, it is admitted for `party` in one of
        `roles` and not revoked. An empty `party` accepts any party."""
        entry = self._keys.get(key_id)
        if entry is None or entry.admitted_at >= at:
            raise RefusedRecord(f"key {key_id} is not admitted")
        if entry.revoked_at is not None and entry.revoked_at < at:
            raise RefusedRecord(f"key {key_id} was revoked at entry {entry.revoked_at}")
        if party and entry.party != party:
            raise RefusedRecord(f"key {key_id} belongs to {entry.party!r}, not {party!r}")
        if entry.role not in roles:
            wanted = "/".join(sorted(roles))
            raise RefusedRecord(f"key {key_id} is a {entry.role} key, not {wanted}")
        return entry.key

    def entries(self) -> list[KeyEntry]:
        return list(self._keys.values())
