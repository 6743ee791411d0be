"""Canonical encoding, usage records, producer signatures and broker countersignatures,
with real Ed25519 keys."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import canonical
from ledger.errors import InvalidRecord, SignatureError
from ledger.records import RecordKind, UsageRecord
from ledger.signing import SignatureCache, SignedRecord, countersign, sign_records
from tests.ledger.conftest import Parties, usage


def test_canonical_sorts_members_by_utf16_code_units() -> None:
    # The member-sorting example of RFC 8785 section 3.2.3, with integer values.
    value = {
        "\u20ac": 1,
        "\r": 2,
        "\ufb33": 3,
        "1": 4,
        "\U0001f600": 5,
        "\u0080": 6,
        "\u00f6": 7,
    }
    want = '{"\\r":2,"1":4,"\u0080":6,"\u00f6":7,"\u20ac":1,"\U0001f600":5,"\ufb33":3}'
    assert canonical.encode(value) == want.encode("utf-8")


def test_canonical_escapes_like_json_stringify() -> None:
    got = canonical.encode(['\u0000\u001f\b\t\n\f\r"\\/\u007f\u2028é'])
    assert got == '["\\u0000\\u001f\\b\\t\\n\\f\\r\\"\\\\/\u007f\u2028é"]'.encode()
    assert canonical.encode({"b": [1, -2], "a": {"z": "", "y": 0}}) == (
        b'{"a":{"y":0,"z":""},"b":[1,-2]}'
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "only integers and strings"),
        (True, "only integers and strings"),
        (None, "only integers and strings"),
        (1 << 53, "integer must be within"),
        ("\ud800", "lone surrogate"),
        ({1: 2}, "object keys must be strings"),
    ],
)
def test_canonical_refuses_what_it_cannot_sign(value: object, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        canonical.encode(value)


@pytest.mark.parametrize(
    "data",
    [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1,"a":1}', b"[1.0]", b"[true]", b'["\\u0041"]', b"\xff"],
)
def test_canonical_decode_refuses_other_encodings(data: bytes) -> None:
    with pytest.raises(InvalidRecord):
        canonical.decode(data)


json_values = st.recursive(
    st.integers(min_value=-canonical.MAX_SAFE_INT, max_value=canonical.MAX_SAFE_INT)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_round_trips(value: canonical.JsonValue) -> None:
    data = canonical.encode(value)
    assert canonical.decode(data) == value
    assert canonical.encode(canonical.decode(data)) == data


def test_record_checks_its_figures() -> None:
    good = usage("center/wuhan/u1")
    assert good.charge_minor == 8 * 1200  # 8 device-hours at 12.00 yuan
    with pytest.raises(InvalidRecord, match=r"device_s must be devices x wall_s = 28800, got 1"):
        dataclasses.replace(good, device_s=1)
    with pytest.raises(InvalidRecord, match=r"charge_minor must be .* = 9600, got 9601"):
        dataclasses.replace(good, charge_minor=9601)
    with pytest.raises(InvalidRecord, match=r"wall_s must be \(end_ms - start_ms\) // 1000"):
        dataclasses.replace(good, wall_s=3599)
    with pytest.raises(InvalidRecord, match=r"energy_wh must be 0..2\*\*53-1, got -1"):
        dataclasses.replace(good, energy_wh=-1)
    with pytest.raises(InvalidRecord, match=r"energy_wh must be an integer, got 1.5"):
        dataclasses.replace(good, energy_wh=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match=r"kind must be one of usage, correction"):
        dataclasses.replace(good, kind="refund")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match=r"a correction must name the record"):
        dataclasses.replace(good, kind=RecordKind.CORRECTION)
    with pytest.raises(InvalidRecord, match=r"producer and consumer must differ"):
        dataclasses.replace(good, consumer="center/wuhan")
    with pytest.raises(InvalidRecord, match=r"currency must be ISO 4217"):
        dataclasses.replace(good, currency="yuan")


def test_record_json_round_trips_exactly() -> None:
    record = usage("center/wuhan/u1")
    assert UsageRecord.from_json(canonical.decode(record.canonical())) == record
    with pytest.raises(InvalidRecord, match=r"schema must be 'icx.usage/v1'"):
        UsageRecord.from_json({**record.to_json(), "schema": "other"})
    with pytest.raises(InvalidRecord, match=r"record fields"):
        UsageRecord.from_json({**record.to_json(), "extra": 1})


def test_single_record_signature_verifies_and_a_flipped_byte_fails(parties: Parties) -> None:
    (signed,) = sign_records([usage("center/wuhan/u1")], parties.wuhan)
    cache = SignatureCache()
    cache.check_producer(signed, parties.wuhan.verifier)

    bad_sig = bytearray(signed.producer_sig)
    bad_sig[10] ^= 0x01
    with pytest.raises(SignatureError, match=r"producer signature by center/wuhan\+[0-9a-f]{8}"):
        SignatureCache().check_producer(
            dataclasses.replace(signed, producer_sig=bytes(bad_sig)), parties.wuhan.verifier
        )
    # One byte of the signed record changed (carbon 0 g -> 1 g), same signature.
    entry = bytearray(signed.entry())
    at = entry.index(b'"carbon_g":0') + len('"carbon_g":')
    entry[at] = ord("1")
    tampered = SignedRecord.from_entry(bytes(entry))
    assert tampered.record.carbon_g == 1
    with pytest.raises(SignatureError, match=r"does not verify"):
        SignatureCache().check_producer(tampered, parties.wuhan.verifier)


def test_signature_by_another_key_fails(parties: Parties) -> None:
    (signed,) = sign_records([usage("center/wuhan/u1")], parties.wuhan)
    impostor = dataclasses.replace(signed, producer_key=parties.guizhou.key_id)
    with pytest.raises(SignatureError, match=r"does not verify"):
        SignatureCache().check_producer(impostor, parties.guizhou.verifier)


def test_batch_signature_covers_every_record(parties: Parties) -> None:
    records = [usage(f"center/wuhan/u{i}") for i in range(13)]
    signed = sign_records(records, parties.wuhan)
    assert len({s.producer_sig for s in signed}) == 1
    assert [s.batch_index for s in signed] == list(range(13))
    cache = SignatureCache()
    for s in signed:
        cache.check_producer(s, parties.wuhan.verifier)
    # A record moved to another slot of the batch no longer proves into the root.
    moved = dataclasses.replace(signed[3], batch_index=4)
    with pytest.raises(SignatureError):
        SignatureCache().check_producer(moved, parties.wuhan.verifier)
    # A record swapped for another one signed elsewhere fails too.
    other = dataclasses.replace(signed[3], record=usage("center/wuhan/u99"))
    with pytest.raises(SignatureError):
        SignatureCache().check_producer(other, parties.wuhan.verifier)
    with pytest.raises(InvalidRecord, match=r"one record id twice"):
        sign_records([records[0], records[0]], parties.wuhan)


def test_countersignature_binds_the_producer_signature(parties: Parties) -> None:
    signed = countersign(sign_records([usage("center/wuhan/u1")], parties.wuhan), parties.log_key)
    cache = SignatureCache()
    cache.check_broker(signed[0], parties.log_key.verifier)
    assert SignedRecord.from_entry(signed[0].entry()) == signed[0]
    # The same record signed again by another producer key: the countersignature no
    # longer matches.
    (resigned,) = sign_records([usage("center/wuhan/u1")], parties.guizhou)
    moved = dataclasses.replace(
        resigned, broker_key=signed[0].broker_key, broker_sig=signed[0].broker_sig
    )
    with pytest.raises(SignatureError, match=r"broker countersignature .* does not verify"):
        SignatureCache().check_broker(moved, parties.log_key.verifier)
