"""The canonical bytes peering signs and sends: RFC 8785 JSON (ledger.canonical) with
byte strings in base64, and the strict reading of them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from ledger.canonical import JsonValue, decode
from ledger.errors import InvalidRecord
from peering.errors import DropReason, Refused

__all__ = ["b64", "read_object", "take_bytes", "take_int", "take_str"]

# Bounds on what a peer may send us in one binding or envelope.
MAX_MESSAGE_BYTES = 256 << 10


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read_object(data: bytes, what: str, fields: frozenset[str]) -> Mapping[str, JsonValue]:
    """The canonical JSON object in `data` with exactly `fields`; Refused(MALFORMED)."""
    try:
        value = decode(data, max_bytes=MAX_MESSAGE_BYTES)
    except InvalidRecord as exc:
        raise Refused(DropReason.MALFORMED, f"{what} is not canonical JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Refused(DropReason.MALFORMED, f"{what} must be a JSON object")
    if set(value) != fields:
        raise Refused(
            DropReason.MALFORMED,
            f"{what} must have the members {sorted(fields)}, got {sorted(value)}",
        )
    return value


def take_str(obj: Mapping[str, JsonValue], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise Refused(DropReason.MALFORMED, f"{what}.{key} must be a string")
    return value


def take_int(obj: Mapping[str, JsonValue], key: str, what: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or value < 0:
        raise Refused(DropReason.MALFORMED, f"{what}.{key} must be an integer >= 0")
    return value


def take_bytes(obj: Mapping[str, JsonValue], key: str, what: str) -> bytes:
    text = take_str(obj, key, what)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise Refused(DropReason.MALFORMED, f"{what}.{key} is not base64: {exc}") from exc
