# ruff: noqa: E501  (tables of exact messages read best one case a line)
"""The id grammar, the rules for names and exec strings, and the documented bounds on
every number the domain values take: exact messages, values cut short in them."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import types, wire
from core.errors import InvalidArgument, InvalidJobSpec, InvalidOffer
from core.ids import ID_PATTERN, check_id, shown
from core.states import JobState
from core.types import CenterDescriptor, Job, JobId, JobSpec, Offer, Pool, PoolId
from ledger.records import ID_PATTERN as LEDGER_ID_PATTERN
from tests.conftest import make_center

MB = 1 << 20
SPEC = JobSpec(accelerator="ascend-910", devices=1, estimated_s=60, command=("true",))
POOL = make_center("CZ").pools[0]
CENTER = make_center("CZ")
OFFER = Offer(
    center_id=CENTER.center_id,
    seq=1,
    issued_at_ms=1_000,
    expires_at_ms=31_000,
    pue_milli=1250,
    grid_g_co2_per_kwh=500,
    pools=CENTER.pools,
)


def test_shown_cuts_long_values_and_names_their_length() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * MB) == f"'{'x' * 40}'… ({MB} chars)"
    assert shown("\u202e" * 41) == "'" + "\\u202e" * 40 + "'… (41 chars)"
    assert shown(10**5000) == "an integer of 16610 bits"
    assert shown(2**63 - 1) == "9223372036854775807"
    assert shown([0] * 100) == f"{str([0] * 100)[:40]}… (300 chars)"


@given(st.text(max_size=80))
def test_every_id_is_a_ledger_party_id(value: str) -> None:
    if ID_PATTERN.fullmatch(value):
        assert LEDGER_ID_PATTERN.fullmatch(value)


ID_RULE = "must be 1..64 of [A-Za-z0-9._-] starting with a letter or digit"


@pytest.mark.parametrize(
    "value",
    ["", "a b", "a/b", "SL/ASH", "a\0b", "a\u202eb", "-a", ".a", "é", "a" * 65, "a\nb"],
    ids=["empty", "space", "slash", "pool-slash", "nul", "rtl", "dash", "dot", "non-ascii",
         "65-chars", "newline"],
)  # fmt: skip
def test_ids_outside_the_grammar_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^tenant {re.escape(ID_RULE)}, got "):
        check_id("tenant", value, InvalidArgument)


@pytest.mark.parametrize("value", ["a", "CN01", "j-3f2a9c", "lab.a_b-c", "9" * 64])
def test_ids_in_the_grammar_pass(value: str) -> None:
    check_id("tenant", value, InvalidArgument)


def _spec(**changes: object) -> JobSpec:
    return dataclasses.replace(SPEC, **changes)  # type: ignore[arg-type]


BAD_SPECS = [
    ({"name": "a\0b"}, "name must not contain control or format characters, got U+0000 in 'a\\x00b'"),
    ({"name": "x\u202eevil"}, "name must not contain control or format characters, got U+202E in 'x\\u202eevil'"),
    ({"name": "n" * 129}, f"name must be at most 128 characters, got '{'n' * 40}'… (129 chars)"),
    ({"accelerator": "a" * MB}, f"got '{'a' * 40}'… ({MB} chars)"),
    ({"max_price_minor": 10**15 + 1}, "max_price_minor must be at most 1000000000000000, got 1000000000000001"),
    ({"deadline_ms": -1}, "deadline_ms must be 0..253402300799999 (the end of year 9999), got -1"),
    ({"deadline_ms": 2**63 - 1}, f"deadline_ms must be 0..253402300799999 (the end of year 9999), got {2**63 - 1}"),
    ({"data_mb": 2**60}, f"data_mb must be 0..100000000, got {2**60}"),
    ({"data_mb": -1}, "data_mb must be 0..100000000, got -1"),
    ({"allowed_regions": ("r",) * 65}, "allowed_regions must name at most 64 regions, got 65"),
    ({"allowed_regions": ("YRD", "a\tb")}, "allowed_regions[1] must not contain control or format characters, got U+0009 in 'a\\tb'"),
    ({"data_region": "d" * 200}, f"data_region must be at most 128 characters, got '{'d' * 40}'… (200 chars)"),
    ({"command": ("sh", "-c", "echo\0hi")}, "command[2] must not contain a NUL character, got 'echo\\x00hi'"),
    ({"command": ("x",) * 1025}, "command must have at most 1024 arguments, got 1025"),
    ({"command": ("x" * 32_769,)}, f"command[0] must be at most 32768 characters, got '{'x' * 40}'… (32769 chars)"),
    ({"command": ("x" * 32_768,) * 5}, "command and env must total at most 131072 characters, got 163840"),
    ({"env": (("A=B", "1"),)}, "env name must be a POSIX name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters), got 'A=B'"),
    ({"env": (("", "1"),)}, "env name must be a POSIX name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters), got ''"),
    ({"env": (("1X", "1"),)}, "env name must be a POSIX name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters), got '1X'"),
    ({"env": (("A", "x\0y"),)}, "env[A] must not contain a NUL character, got 'x\\x00y'"),
    ({"env": tuple((f"V{i}", "") for i in range(257))}, "env must have at most 256 variables, got 257"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"), BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))]
)
def test_bad_spec_fields_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        _spec(**changes)
    assert message in str(info.value)
    assert len(str(info.value)) < 300


def test_spec_at_its_bounds_is_valid() -> None:
    _spec(
        name="n" * 128,
        devices=types.MAX_GANG,
        estimated_s=types.MAX_ESTIMATED_S,
        max_price_minor=types.MAX_BUDGET_MINOR,
        deadline_ms=types.MAX_TIME_MS,
        priority=types.MAX_PRIORITY,
        data_mb=types.MAX_DATA_MB,
        allowed_regions=("Xi'an",) * 64,
        data_region="训练数据",
        command=("x" * 32_768,) * 2 + ("y" * (32_768 - 4),),
        env=(("_A1", "x" * 32_768),),
    )


def _pool(**changes: object) -> Pool:
    return dataclasses.replace(POOL, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"price_minor_per_device_hour": 2**53}, f"pool 'main': price_minor_per_device_hour must be 0..10000000, got {2**53}"),
        ({"price_minor_per_device_hour": 2**63 - 1}, f"pool 'main': price_minor_per_device_hour must be 0..10000000, got {2**63 - 1}"),
        ({"power_w": 10_001}, "pool 'main': power_w must be at most 10000, got 10001"),
        ({"memory_gb": 100_001}, "pool 'main': memory_gb must be at most 100000, got 100001"),
        ({"fp16_tflops": 10**6 + 1}, "pool 'main': fp16_tflops must be at most 1000000, got 1000001"),
        ({"pool_id": PoolId("ASH/p1")}, f"pool_id {ID_RULE}, got 'ASH/p1'"),
        ({"pool_id": PoolId("p" * MB)}, f"pool_id {ID_RULE}, got '{'p' * 40}'… ({MB} chars)"),
        ({"accelerator": "a" * MB}, f"pool 'main': accelerator '{'a' * 40}'… ({MB} chars) is not in the catalogue"),
    ],
    ids=["price-2^53", "price-2^63-1", "power", "memory", "tflops", "slash-id", "1MB-id", "1MB-accelerator"],
)  # fmt: skip
def test_bad_pool_fields_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOffer, match=f"^{re.escape(message)}$"):
        _pool(**changes)


def _center(**changes: object) -> CenterDescriptor:
    return dataclasses.replace(CENTER, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latitude": float("nan")}, "center CZ: latitude must be -90..90, got nan"),
        ({"latitude": float("inf")}, "center CZ: latitude must be -90..90, got inf"),
        ({"latitude": 90.5}, "center CZ: latitude must be -90..90, got 90.5"),
        ({"longitude": float("-inf")}, "center CZ: longitude must be -180..180, got -inf"),
        ({"longitude": float("nan")}, "center CZ: longitude must be -180..180, got nan"),
        ({"center_id": "SL/ASH"}, f"center_id {ID_RULE}, got 'SL/ASH'"),
        ({"center_id": "C\0Z"}, f"center_id {ID_RULE}, got 'C\\x00Z'"),
        ({"center_id": "C\u202eZ"}, f"center_id {ID_RULE}, got 'C\\u202eZ'"),
        ({"center_id": "c" * MB}, f"center_id {ID_RULE}, got '{'c' * 40}'… ({MB} chars)"),
        ({"name": "evil\u202etxt"}, "center CZ: name must not contain control or format characters, got U+202E in 'evil\\u202etxt'"),
        ({"region": "T\0F"}, "center CZ: region must not contain control or format characters, got U+0000 in 'T\\x00F'"),
        ({"pools": (POOL,) * 1025}, "center CZ: at most 1024 pools, got 1025"),
    ],
    ids=["nan-lat", "inf-lat", "lat-range", "inf-lon", "nan-lon", "slash-id", "nul-id", "rtl-id",
         "1MB-id", "rtl-name", "nul-region", "pools"],
)  # fmt: skip
def test_bad_center_fields_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOffer, match=f"^{re.escape(message)}$"):
        _center(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seq": 2**64 - 1}, f"offer from CZ: seq must be 1..{2**53 - 1}, got {2**64 - 1}"),
        ({"seq": 0}, f"offer from CZ: seq must be 1..{2**53 - 1}, got 0"),
        ({"issued_at_ms": -5}, "offer from CZ seq 1: issued_at_ms must be 0..253402300799999, got -5"),
        ({"expires_at_ms": 2**63 - 1}, f"offer from CZ seq 1: expires_at_ms must be 0..253402300799999, got {2**63 - 1}"),
        ({"center_id": "C Z"}, f"offer center_id {ID_RULE}, got 'C Z'"),
    ],
    ids=["seq-2^64", "seq-0", "issued", "expires", "center-id"],
)  # fmt: skip
def test_bad_offer_fields_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOffer, match=f"^{re.escape(message)}$"):
        dataclasses.replace(OFFER, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant", "bad tenant", f"tenant {ID_RULE}, got 'bad tenant'"),
        ("tenant", "", f"tenant {ID_RULE}, got ''"),
        ("job_id", "j/1", f"job_id {ID_RULE}, got 'j/1'"),
    ],
)
def test_job_refuses_bad_tenant_and_job_id(field: str, value: str, message: str) -> None:
    fields: dict[str, object] = {"job_id": JobId("j-1"), "tenant": "lab-a", field: value}
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
        Job(spec=SPEC, state=JobState.QUEUED, submitted_at_ms=1, updated_at_ms=1, **fields)  # type: ignore[arg-type]


def test_wire_ids_from_callers() -> None:
    assert wire.job_id_from_proto("j-1") == "j-1"
    assert wire.request_id_from_proto("") == ""
    assert wire.request_id_from_proto("3f2a-9c") == "3f2a-9c"
    with pytest.raises(
        InvalidArgument, match=f"^job_id {re.escape(ID_RULE)}, got 'j{{40}}'… \\(1048577 chars\\)$"
    ):
        wire.job_id_from_proto("j" * (MB + 1))
    with pytest.raises(InvalidArgument, match=f"^request_id {re.escape(ID_RULE)}, got 'a b'$"):
        wire.request_id_from_proto("a b")


def test_wire_spec_with_nul_in_env_is_refused() -> None:
    msg = wire.spec_to_proto(SPEC)
    msg.env["A"] = "x\0y"
    with pytest.raises(InvalidJobSpec, match=r"^env\[A\] must not contain a NUL character"):
        wire.spec_from_proto(msg)
