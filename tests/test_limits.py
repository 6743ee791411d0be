# ruff: noqa: E501  (tables of exact messages read best one case a line)
"""Bounds and validation at the edge, against a real broker with raw stubs: ids outside
the grammar, numbers beyond their documented limits, NaN coordinates, NUL and
right-to-left characters and hostile ledger input are refused with INVALID_ARGUMENT (or a
refused UsageAck) that names the field and quotes at most a short prefix of the value;
the store and the ledger are unchanged."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli.federation import LocalFederation
from core import wire
from core.errors import InvalidArgument
from core.types import CenterDescriptor
from icx.v1 import agent_pb2, broker_pb2, broker_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2
from identity import Role, init_member
from tests.agent_stream import Replies, converse
from tests.conftest import FAST_BROKER, make_center

MB = 1 << 20
ID_RULE = "must be 1..64 of [A-Za-z0-9._-] starting with a letter or digit"
MAX_DETAILS = 400  # no refusal here may echo more than a short prefix of its input


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(root=tmp_path_factory.mktemp("limits"), broker_args=FAST_BROKER) as fed:
        yield fed


@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """A development broker (--insecure), where callers declare their tenant."""
    with LocalFederation(
        root=tmp_path_factory.mktemp("limits-dev"), broker_args=FAST_BROKER, secure=False
    ) as fed:
        yield fed


@pytest.fixture(scope="module")
def channel(federation: LocalFederation) -> Iterator[grpc.Channel]:
    """A user of tenant default."""
    with federation.channel(Role.USER) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> broker_pb2_grpc.BrokerServiceStub:
    return broker_pb2_grpc.BrokerServiceStub(channel)


def _rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "events", "centers")
        }


def _refused(call: object, request: object, **kw: object) -> str:
    """Make the call; it must be refused with INVALID_ARGUMENT. Returns the details."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10, **kw)  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = str(info.value.details())
    assert len(details) < MAX_DETAILS
    return details


def _spec(**changes: object) -> types_pb2.JobSpec:
    spec = types_pb2.JobSpec(
        accelerator="ascend-910", devices=1, estimated_seconds=60, command=["true"]
    )
    for key, value in changes.items():
        if key == "env":
            assert isinstance(value, dict)
            spec.env.update(value)
        elif isinstance(value, list):
            del getattr(spec, key)[:]
            getattr(spec, key).extend(value)
        else:
            setattr(spec, key, value)
    return spec


BAD_SPECS = [
    (_spec(command=["sh", "-c", "echo\0hi"]), "command[2] must not contain a NUL character, got 'echo\\x00hi'"),
    (_spec(env={"A": "x\0y"}), "env[A] must not contain a NUL character, got 'x\\x00y'"),
    (_spec(env={"A=B": "1"}), "env name must be a POSIX name ([A-Za-z_][A-Za-z0-9_]*, at most 128 characters), got 'A=B'"),
    (_spec(accelerator="a" * MB), f"accelerator must be 'any' or one of ascend-910, ascend-910b, ascend-910c, cambricon-mlu370, enflame-s60, nvidia-a100, nvidia-a800, nvidia-h100, nvidia-h200, nvidia-h800, got '{'a' * 40}'… ({MB} chars)"),
    (_spec(name="x\u202eevil"), "name must not contain control or format characters, got U+202E in 'x\\u202eevil'"),
    (_spec(data_mb=2**62), f"data_mb must be 0..100000000, got {2**62}"),
    (_spec(max_price_minor=2**63 - 1), f"max_price_minor must be at most 1000000000000000, got {2**63 - 1}"),
    (_spec(deadline_ms=2**63 - 1), f"deadline_ms must be 0..253402300799999 (the end of year 9999), got {2**63 - 1}"),
    (_spec(deadline_ms=-(2**63)), f"deadline_ms must be 0..253402300799999 (the end of year 9999), got {-(2**63)}"),
    (_spec(estimated_seconds=2**62), f"estimated_seconds must be 1..2592000, got {2**62}"),
    (_spec(allowed_regions=["YRD", "r" * MB]), f"allowed_regions[1] must be at most 128 characters, got '{'r' * 40}'… ({MB} chars)"),
]  # fmt: skip
BAD_SPEC_IDS = ["nul-command", "nul-env", "env-name", "1MB-accelerator", "rtl-name", "data_mb",
                "budget", "deadline-max", "deadline-min", "hours", "1MB-region"]  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=BAD_SPEC_IDS)
def test_submit_and_quote_refuse_bad_specs_and_store_nothing(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    spec: types_pb2.JobSpec,
    message: str,
) -> None:
    before = _rows(federation.db)
    assert _refused(stub.SubmitJob, broker_pb2.SubmitJobRequest(spec=spec)) == message
    assert _refused(stub.QuoteJob, broker_pb2.QuoteJobRequest(spec=spec)) == message
    assert _rows(federation.db) == before
    assert list(stub.ListJobs(broker_pb2.ListJobsRequest(), timeout=5).jobs) == []


BAD_TENANTS = ["bad tenant", "lab/a", "-lab"]


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_a_tenant_outside_the_grammar_is_never_admitted(
    federation: LocalFederation, tmp_path: Path, tenant: str
) -> None:
    # With membership the tenant is the certificate's: no certificate names such a tenant.
    folder = tmp_path / "odd-user"
    init_member(folder, "odd.user")
    with pytest.raises(InvalidArgument) as info:
        federation.authority.admit_into(folder, role=Role.USER, tenant=tenant, days=30)
    assert str(info.value) == f"tenant {ID_RULE}, got {tenant!r}"
    assert not (folder / "cert.pem").exists()


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_in_development_mode_a_tenant_outside_the_grammar_cannot_submit(
    insecure: LocalFederation, tenant: str
) -> None:
    before = _rows(insecure.db)
    with insecure.channel() as channel:
        details = _refused(
            broker_pb2_grpc.BrokerServiceStub(channel).SubmitJob,
            broker_pb2.SubmitJobRequest(spec=_spec()),
            metadata=(("x-icx-tenant", tenant),),
        )
    assert details == f"tenant {ID_RULE}, got {tenant!r}"
    assert _rows(insecure.db) == before


def _hello(center: CenterDescriptor) -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(hello=agent_pb2.Hello(center=wire.center_to_proto(center)))


def _raw_hello(**changes: object) -> agent_pb2.ConnectRequest:
    msg = _hello(make_center("CZ"))
    pool_changes = {k[5:]: v for k, v in changes.items() if k.startswith("pool_")}
    for key, value in changes.items():
        if not key.startswith("pool_"):
            setattr(msg.hello.center, key, value)
    for key, value in pool_changes.items():
        setattr(msg.hello.center.pools[0], key, value)
    return msg


BAD_HELLOS = [
    (_raw_hello(latitude=math.nan), "center CZ: latitude must be -90..90, got nan"),
    (_raw_hello(longitude=math.inf), "center CZ: longitude must be -180..180, got inf"),
    (_raw_hello(latitude=-math.inf), "center CZ: latitude must be -90..90, got -inf"),
    (_raw_hello(center_id="c" * MB), f"center_id {ID_RULE}, got '{'c' * 40}'… ({MB} chars)"),
    (_raw_hello(center_id="C\0Z"), f"center_id {ID_RULE}, got 'C\\x00Z'"),
    (_raw_hello(center_id="C\u202eZ"), f"center_id {ID_RULE}, got 'C\\u202eZ'"),
    (_raw_hello(center_id="SL/ASH"), f"center_id {ID_RULE}, got 'SL/ASH'"),
    (_raw_hello(name="evil\u202etxt"), "center CZ: name must not contain control or format characters, got U+202E in 'evil\\u202etxt'"),
    (_raw_hello(region="r" * MB), f"center CZ: region must be at most 128 characters, got '{'r' * 40}'… ({MB} chars)"),
    (_raw_hello(pool_pool_id="ASH/p1"), f"pool_id {ID_RULE}, got 'ASH/p1'"),
    (_raw_hello(pool_accelerator="a" * MB), f"pool 'main': accelerator '{'a' * 40}'… ({MB} chars) is not in the catalogue"),
    (_raw_hello(pool_price_minor_per_device_hour=2**53), f"pool 'main': price_minor_per_device_hour must be 0..10000000, got {2**53}"),
    (_raw_hello(pool_price_minor_per_device_hour=2**63 - 1), f"pool 'main': price_minor_per_device_hour must be 0..10000000, got {2**63 - 1}"),
]  # fmt: skip
BAD_HELLO_IDS = ["nan-latitude", "inf-longitude", "-inf-latitude", "1MB-center-id", "nul-id",
                 "rtl-id", "slash-id", "rtl-name", "1MB-region", "slash-pool-id",
                 "1MB-accelerator", "price-2^53", "price-2^63-1"]  # fmt: skip


def _stream_refused(
    federation: LocalFederation, center_id: str, *messages: agent_pb2.ConnectRequest
) -> str:
    """Send `messages` as center `center_id` (with its certificate): refused, with the
    details."""
    creds = federation.credentials(Role.CENTER, center_id)
    with pytest.raises(grpc.RpcError) as info:
        converse(federation.address, *messages, credentials=creds)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = str(info.value.details())
    assert len(details) < MAX_DETAILS
    return details


@pytest.mark.parametrize(("hello", "message"), BAD_HELLOS, ids=BAD_HELLO_IDS)
def test_hello_with_bad_fields_is_refused_and_not_kept(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    hello: agent_pb2.ConnectRequest,
    message: str,
) -> None:
    before = _rows(federation.db), stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
    # The stream is CZ's, with CZ's certificate; its Hello carries the bad field.
    assert _stream_refused(federation, "CZ", hello) == message
    after = _rows(federation.db), stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
    assert after == before


def _offer(center: CenterDescriptor, **changes: object) -> agent_pb2.ConnectRequest:
    msg = types_pb2.Offer(
        center_id=center.center_id,
        seq=1,
        issued_at_ms=1_800_000_000_000,
        expires_at_ms=1_800_000_030_000,
        pue_milli=center.pue_milli,
        grid_g_co2_per_kwh=center.grid_g_co2_per_kwh,
        pools=[wire.pool_to_proto(p) for p in center.pools],
    )
    for key, value in changes.items():
        if key == "price":
            msg.pools[0].price_minor_per_device_hour = value  # type: ignore[assignment]
        else:
            setattr(msg, key, value)
    return agent_pb2.ConnectRequest(offer=msg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seq": 2**64 - 1}, f"offer from CL: seq must be 1..{2**53 - 1}, got {2**64 - 1}"),
        ({"expires_at_ms": 2**63 - 1}, f"offer from CL seq 1: expires_at_ms must be 0..253402300799999, got {2**63 - 1}"),
        ({"price": 2**63 - 1}, f"pool 'main': price_minor_per_device_hour must be 0..10000000, got {2**63 - 1}"),
    ],
    ids=["seq-2^64-1", "expiry-2^63-1", "price-2^63-1"],
)  # fmt: skip
def test_offer_beyond_the_bounds_is_refused_and_not_believed(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    changes: dict[str, object],
    message: str,
) -> None:
    center = make_center("CL")
    assert _stream_refused(federation, "CL", _hello(center), _offer(center, **changes)) == message
    views = stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5).centers
    assert [v.HasField("offer") for v in views if v.center.center_id == "CL"] == [False]


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("0000-01", "period must be YYYY-MM with a year 1970..9999, got '0000-01'"),
        ("2026-13", "period must be YYYY-MM, got '2026-13'"),
        ("9" * MB, f"period must be YYYY-MM, got '{'9' * 40}'… ({MB} chars)"),
    ],
    ids=["year-0", "month-13", "1MB"],
)
def test_statement_for_a_bad_period_is_invalid_argument(
    channel: grpc.Channel, period: str, message: str
) -> None:
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    request = ledger_pb2.GetStatementRequest(period=period)
    assert _refused(ledger.GetStatement, request) == message


def test_proving_a_1mb_record_id_does_not_echo_it(channel: grpc.Channel) -> None:
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    request = ledger_pb2.ProveRecordRequest(record_id="r" * MB)
    assert _refused(ledger.ProveRecord, request) == "record_id must be at most 128 characters"


def _welcomed(replies: Replies) -> bool:
    return any(r.HasField("welcome") for r in replies)


def _checkpoint_size(channel: grpc.Channel) -> int:
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    note = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=10).note
    return int(note.splitlines()[1])


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "unreadable record: not canonical JSON: nested deeper than 32"),
        (b'{"a":' + b"7" * 60_000 + b"}", "unreadable record: not canonical JSON: a number of 60000 digits (at most 16)"),
        (b'"' + b"x" * MB + b'"', f"unreadable record: not canonical JSON: more than 65536 bytes ({MB + 2})"),
    ],
    ids=["nested-30000", "60000-digits", "1MB"],
)  # fmt: skip
def test_hostile_usage_entries_are_refused_and_the_stream_lives(
    channel: grpc.Channel, federation: LocalFederation, entry: bytes, reason: str
) -> None:
    hello = _hello(make_center("CU"))
    cu = federation.credentials(Role.CENTER, "CU")
    # CU's first stream logs the admission of its certified usage key: connect it once
    # before measuring, so that only what the hostile entries did is compared.
    converse(federation.address, hello, until=_welcomed, credentials=cu)
    size = _checkpoint_size(channel)
    usage = agent_pb2.ConnectRequest(usage=agent_pb2.UsageReport(entry=entry))
    heartbeat = agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at_ms=7))

    def answered(replies: Replies) -> bool:
        # Both answers: the refusal, and the heartbeat's echo on the same live stream.
        kinds = {r.WhichOneof("msg") for r in replies}
        return {"usage_ack", "heartbeat"} <= kinds

    replies = converse(
        federation.address, hello, then=[usage, heartbeat], until=answered, credentials=cu
    )
    [ack] = [r.usage_ack for r in replies if r.HasField("usage_ack")]
    assert (ack.accepted, ack.reason) == (False, reason)
    assert _checkpoint_size(channel) == size


def test_a_1mb_job_id_is_not_echoed(stub: broker_pb2_grpc.BrokerServiceStub) -> None:
    details = _refused(stub.GetJob, broker_pb2.GetJobRequest(job_id="j" * MB))
    assert details == f"job_id {ID_RULE}, got '{'j' * 40}'… ({MB} chars)"
