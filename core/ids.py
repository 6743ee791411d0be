"""The one grammar for ids and the rules for names and free text, checked wherever such a
value enters (the domain values' own checks, `core.wire`, the broker's requests).

- An *id* (tenant, center, pool, job, request id) is 1..64 of `[A-Za-z0-9._-]`, starting
  with a letter or digit: no `/` (pools are named `center/pool` where centers meet), no
  spaces, NUL, control, right-to-left or other non-ASCII characters. Every id is also a
  valid ledger party id (`ledger.records.ID_PATTERN` is a superset), so a tenant or a
  center can always be named in a signed usage record.
- A *name* for humans (a job's or a center's name, a region) is at most `MAX_NAME_CHARS`
  characters without control, format (bidirectional overrides, zero-width) or surrogate
  characters.
- A *text* (a command argument, an environment value) is at most a given length and has
  no NUL byte (which a process's argv and environment cannot carry).

Error messages quote a value through `shown`, which keeps at most `SHOWN_CHARS`
characters of it, so that no check echoes unbounded input back to its sender.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ENV_NAME_PATTERN",
    "ID_PATTERN",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "SHOWN_CHARS",
    "check_env_name",
    "check_id",
    "check_name",
    "check_text",
    "shown",
]

MAX_ID_CHARS = 64
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NAME_CHARS = 128
# POSIX.1-2017, 8.1: names of the portable character set's letters, digits and
# underscore, not starting with a digit.
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHOWN_CHARS = 40

# Unicode general categories a name must not hold: controls (Cc), format characters
# such as U+202E RIGHT-TO-LEFT OVERRIDE and U+200B ZERO WIDTH SPACE (Cf), surrogates (Cs),
# unassigned (Cn) and private use (Co).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Co"})


def shown(value: object) -> str:
    """`value` as an error message quotes it: its repr, cut to `SHOWN_CHARS` characters
    with the full length named when longer. shown('x' * 10**6) ->
    "'xxxx…' (1000000 chars)". An integer too long to print whole (Python refuses
    more than 4300 digits) is named by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}… ({len(value)} chars)"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(text)} chars)"


def check_id(field: str, value: str, error: type[Exception]) -> None:
    """Raises `error` naming `field` unless `value` is an id (see the module docstring)."""
    if not ID_PATTERN.fullmatch(value):
        raise error(
            f"{field} must be 1..{MAX_ID_CHARS} of [A-Za-z0-9._-] starting with a letter "
            f"or digit, got {shown(value)}"
        )


def check_name(field: str, value: str, error: type[Exception], *, allow_empty: bool = True) -> None:
    """Raises `error` naming `field` unless `value` is a name: at most `MAX_NAME_CHARS`
    characters, none of them control, format, surrogate, unassigned or private-use
    (empty only if `allow_empty`)."""
    if not value and not allow_empty:
        raise error(f"{field} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise error(f"{field} must be at most {MAX_NAME_CHARS} characters, got {shown(value)}")
    for ch in value:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise error(
                f"{field} must not contain control or format characters, "
                f"got U+{ord(ch):04X} in {shown(value)}"
            )


def check_text(field: str, value: str, error: type[Exception], *, max_chars: int) -> None:
    """Raises `error` naming `field` if `value` is longer than `max_chars` or holds a NUL."""
    if len(value) > max_chars:
        raise error(f"{field} must be at most {max_chars} characters, got {shown(value)}")
    if "\0" in value:
        raise error(f"{field} must not contain a NUL character, got {shown(value)}")


def check_env_name(field: str, value: str, error: type[Exception]) -> None:
    """Raises `error` naming `field` unless `value` is a POSIX environment variable name
    of at most `MAX_NAME_CHARS` characters."""
    if len(value) > MAX_NAME_CHARS or not ENV_NAME_PATTERN.fullmatch(value):
        raise error(
            f"{field} must be a POSIX name ([A-Za-z_][A-Za-z0-9_]*, at most "
            f"{MAX_NAME_CHARS} characters), got {shown(value)}"
        )
