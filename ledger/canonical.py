"""Canonical JSON: RFC 8785 (JCS) restricted to integers, strings, arrays and objects.

Everything the ledger signs or hashes is these bytes, never a protobuf serialisation.
Without floats, booleans or null the RFC's hard part (ECMAScript number formatting)
reduces to decimal integers; they are limited to the I-JSON safe range so that every
JSON implementation reads them exactly. Object members are sorted by the UTF-16 code
units of their names; strings are escaped as ECMAScript's JSON.stringify does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.ids import shown
from ledger.errors import InvalidRecord

__all__ = [
    "MAX_DEPTH",
    "MAX_DIGITS",
    "MAX_DOCUMENT_BYTES",
    "MAX_SAFE_INT",
    "JsonValue",
    "check_shape",
    "decode",
    "encode",
    "encode_checked",
    "encode_string",
]

MAX_SAFE_INT = (1 << 53) - 1

JsonValue = int | str | list["JsonValue"] | dict[str, "JsonValue"]

_encode_string = json.JSONEncoder(ensure_ascii=False).encode

# The C encoder writes RFC 8785 bytes for values inside the signed subset whose object
# names are ASCII (code point order is then UTF-16 order): the same string escapes as
# `_string`, decimal integers, no whitespace.
_dumps = json.JSONEncoder(
    ensure_ascii=False,
    sort_keys=True,
    separators=(",", ":"),
    check_circular=False,
    allow_nan=False,
).encode

# Text the fast decoder leaves to the full one: literals it does not refuse by itself
# (true, false, null; also when inside strings) and integers that may be out of range.
_SUSPECT = re.compile(r"true|false|null|[0-9]{16}")


_SURROGATE = re.compile("[\ud800-\udfff]")

# Bounds on what `decode` parses. Everything the ledger signs nests at most 4 deep and
# its integers are within 2**53-1 (16 digits); a statement of a large federation is a
# few MB.
MAX_DEPTH = 32
MAX_DIGITS = 16
MAX_DOCUMENT_BYTES = 16 << 20
_STRING_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (MAX_DIGITS + 1))
_OPENERS = frozenset(b"[{")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def encode_string(s: str) -> str:
    """One string as canonical JSON text. Raises InvalidRecord on a lone surrogate."""
    match = _SURROGATE.search(s)
    if match:
        raise InvalidRecord(f"string holds a lone surrogate U+{ord(match[0]):04X}: {shown(s)}")
    result: str = _encode_string(s)
    return result


def _string(s: str, out: list[str]) -> None:
    # Python's JSON string encoder without ASCII escaping writes exactly what RFC 8785
    # asks for: the two-character escapes for \b \t \n \f \r " and backslash,
    # \u00xx (lowercase) for the other controls, everything else as itself.
    match = _SURROGATE.search(s)
    if match:
        raise InvalidRecord(f"string holds a lone surrogate U+{ord(match[0]):04X}: {shown(s)}")
    out.append(_encode_string(s))


def _value(value: object, out: list[str], path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise InvalidRecord(f"{path}: only integers and strings may be signed, got {shown(value)}")
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise InvalidRecord(f"{path}: integer must be within +-(2**53-1), got {value}")
        out.append(str(value))
    elif isinstance(value, str):
        _string(value, out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _value(item, out, f"{path}[{i}]")
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        keys = list(value)
        for key in keys:
            if not isinstance(key, str):
                raise InvalidRecord(f"{path}: object keys must be strings, got {shown(key)}")
        # Code point order is UTF-16 order for ASCII; only wider names need re-encoding.
        if all(k.isascii() for k in keys):
            keys.sort()
        else:
            keys.sort(key=lambda k: k.encode("utf-16-be"))
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            _string(key, out)
            out.append(":")
            _value(value[key], out, f"{path}.{key}")
        out.append("}")
    else:
        raise InvalidRecord(f"{path}: cannot encode {type(value).__name__}")


def encode(value: object) -> bytes:
    """The canonical UTF-8 bytes of `value`."""
    out: list[str] = []
    _value(value, out, "$")
    return "".join(out).encode("utf-8")


def encode_checked(value: object) -> bytes:
    """The canonical bytes of `value`, which the caller has already checked lies in the
    signed subset (integers within +-(2**53-1), strings, lists, objects with ASCII member
    names), as validated records do. Same bytes as `encode`, several times faster; a lone
    surrogate still raises InvalidRecord."""
    try:
        return _dumps(value).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return encode(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, val in pairs:
        if key in result:
            raise InvalidRecord(f"duplicate member {shown(key)}")
        result[key] = val
    return result


def _refuse_float(text: str) -> Any:
    raise InvalidRecord(f"numbers must be integers, got {text}")


def _refuse_constant(text: str) -> Any:
    raise InvalidRecord(f"{text} is not allowed")


def check_shape(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
    """Refuse, before any parser sees them, documents that no valid one resembles and
    that would cost a parser dearly: more than `max_bytes`, nested deeper than
    `MAX_DEPTH`, or holding a number of more than `MAX_DIGITS` digits (2**53-1 has 16;
    Python's int() refuses 4301 and more with a ValueError, and a deep nest ends in a
    RecursionError). Strings are skipped, so digits inside them do not count."""
    if len(data) > max_bytes:
        raise InvalidRecord(f"not canonical JSON: more than {max_bytes} bytes ({len(data)})")
    skeleton = _STRING_BYTES.sub(b'""', data)
    number = _LONG_NUMBER.search(skeleton)
    if number is not None:
        raise InvalidRecord(
            f"not canonical JSON: a number of {len(number[0])} digits (at most {MAX_DIGITS})"
        )
    depth = 0
    for bracket in skeleton.translate(None, _NOT_BRACKETS):
        if bracket in _OPENERS:
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidRecord(f"not canonical JSON: nested deeper than {MAX_DEPTH}")
        else:
            depth -= 1


def decode(data: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> JsonValue:
    """Parse canonical bytes. Refuses anything `encode` would not have produced (other
    member order, whitespace, escapes, floats, booleans, null, duplicates), so that one
    value has exactly one accepted encoding; and, first, anything `check_shape` refuses
    (too long, too deep, too many digits), so that hostile bytes cost a bounded effort
    and end in InvalidRecord."""
    check_shape(data, max_bytes)
    # Fast path, for ASCII text without literals or long digit runs: the C parser and
    # encoder round-trip it. Equal bytes mean canonical: duplicates, escapes, whitespace
    # or another member order would not survive the round trip, floats are refused while
    # parsing, integers of at most 15 digits are in range, and every member name is ASCII.
    # Anything else goes the full way, which also words the error.
    if data.isascii():
        text = data.decode("ascii")
        if _SUSPECT.search(text) is None:
            try:
                fast: JsonValue = json.loads(
                    text, parse_float=_refuse_float, parse_constant=_refuse_constant
                )
            except json.JSONDecodeError:
                pass
            else:
                if _dumps(fast) == text:
                    return fast
    return _decode_full(data, max_bytes)


def _decode_full(data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> JsonValue:
    check_shape(data, max_bytes)  # again: this path must refuse alone what decode refuses
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecord(f"not canonical JSON: {exc}") from exc
    canonical = encode(value)
    if canonical != data:
        raise InvalidRecord("not canonical JSON: bytes differ from the RFC 8785 form")
    result: JsonValue = value
    return result
