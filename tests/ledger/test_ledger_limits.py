"""Hostile input to the ledger ends in InvalidRecord (bad input) with a short message,
never in the parser's or the calendar's own exception, and changes nothing."""

from __future__ import annotations

import re

import pytest

from ledger import Log, UsageRecord, canonical
from ledger.errors import InvalidRecord
from ledger.settlement import period_bounds
from ledger.signing import MAX_ENTRY_BYTES, SignedRecord, sign_records
from tests.ledger.conftest import Parties, usage


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("0000-01", "period must be YYYY-MM with a year 1970..9999, got '0000-01'"),
        ("1969-12", "period must be YYYY-MM with a year 1970..9999, got '1969-12'"),
        ("2026-00", "period must be YYYY-MM, got '2026-00'"),
        (
            "\u0662\u0660\u0662\u0666-01",
            "period must be YYYY-MM, got '\u0662\u0660\u0662\u0666-01'",
        ),
        ("9" * 1_000_000, f"period must be YYYY-MM, got '{'9' * 40}'… (1000000 chars)"),
    ],
    ids=["year-0", "before-1970", "month-0", "arabic-digits", "1MB"],
)
def test_bad_periods_are_invalid_input(period: str, message: str) -> None:
    with pytest.raises(InvalidRecord, match=f"^{re.escape(message)}$"):
        period_bounds(period)


def test_the_first_and_last_periods_have_bounds() -> None:
    assert period_bounds("1970-01") == (0, 31 * 86_400_000)
    assert period_bounds("9999-12") == (253_399_622_400_000, 253_402_300_800_000)


def test_settling_a_bad_period_stores_nothing(log: Log) -> None:
    log.checkpoint()
    before = (log.size, log.store.statements())
    with pytest.raises(
        InvalidRecord, match=r"^period must be YYYY-MM with a year 1970\.\.9999, got '0000-01'$"
    ):
        log.settle("0000-01")
    assert (log.size, log.store.statements()) == before


HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, "not canonical JSON: nested deeper than 32"),
    (
        b'{"a":' + b"7" * 100_000 + b"}",
        "not canonical JSON: a number of 100000 digits (at most 16)",
    ),
    (b"[" + b"1" * 17 + b"]", "not canonical JSON: a number of 17 digits (at most 16)"),
    (b"[" * 33 + b"]" * 33, "not canonical JSON: nested deeper than 32"),
]


@pytest.mark.parametrize(
    ("data", "message"), HOSTILE, ids=["deep", "long-int", "17-digits", "33-deep"]
)
def test_hostile_documents_are_refused_before_parsing(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRecord, match=f"^{re.escape(message)}$"):
        canonical.decode(data)
    with pytest.raises(InvalidRecord, match=f"^{re.escape(message)}$"):
        canonical._decode_full(data)


def test_digits_and_brackets_inside_strings_do_not_count() -> None:
    text = '["' + "[" * 40 + "1" * 40 + '\\"]]"]'
    assert canonical.decode(text.encode()) == ["[" * 40 + "1" * 40 + '"]]']
    assert canonical.decode(b"[" * 32 + b"]" * 32) is not None


def test_a_document_over_the_size_bound_is_refused() -> None:
    data = b'"' + b"x" * 100 + b'"'
    with pytest.raises(InvalidRecord, match=r"^not canonical JSON: more than 64 bytes \(102\)$"):
        canonical.decode(data, max_bytes=64)


def test_usage_entries_are_bounded(parties: Parties) -> None:
    [signed] = sign_records([usage("center/wuhan/1")], parties.wuhan)
    assert SignedRecord.from_entry(signed.entry()) == signed
    padded = signed.entry()[:-1] + b" " * MAX_ENTRY_BYTES + b"}"
    with pytest.raises(
        InvalidRecord, match=f"^not canonical JSON: more than {MAX_ENTRY_BYTES} bytes"
    ):
        SignedRecord.from_entry(padded)
    with pytest.raises(InvalidRecord, match=r"^not canonical JSON: nested deeper than 32$"):
        SignedRecord.from_entry(b"[" * 20_000 + b"]" * 20_000)


def test_a_record_quotes_at_most_a_prefix_of_a_bad_id() -> None:
    record = usage("center/wuhan/1").to_json()
    record["record_id"] = "r" * 1_000_000
    record["start_ms"] = 10**5000
    with pytest.raises(InvalidRecord) as info:
        UsageRecord.from_json(record)
    assert str(info.value) == (
        f"record '{'r' * 40}'… (1000000 chars): record_id must be 1..128 of "
        f"[A-Za-z0-9._:/@-], got '{'r' * 40}'… (1000000 chars)"
    )
