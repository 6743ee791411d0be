"""Bad input gets INVALID_ARGUMENT (or the CLI's exit 2) naming the field, and the store
is unchanged."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli.federation import LocalFederation
from icx.v1 import agent_pb2, broker_pb2, broker_pb2_grpc, types_pb2
from identity import Role
from tests.agent_stream import converse
from tests.conftest import FAST_BROKER, make_center


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """One broker for the whole module: every test here leaves the store unchanged."""
    with LocalFederation(root=tmp_path_factory.mktemp("bad-input"), broker_args=FAST_BROKER) as fed:
        yield fed


@pytest.fixture(scope="module")
def stub(federation: LocalFederation) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    with federation.channel(Role.USER) as channel:
        yield broker_pb2_grpc.BrokerServiceStub(channel)


def _rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "events", "centers")
        }


def _good_spec() -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        accelerator="ascend-910", devices=1, estimated_seconds=60, command=["true"]
    )


def _with(**changes: object) -> types_pb2.JobSpec:
    spec = _good_spec()
    for key, value in changes.items():
        if isinstance(value, list):
            del getattr(spec, key)[:]
            getattr(spec, key).extend(value)
        else:
            setattr(spec, key, value)
    return spec


BAD_SPECS = [
    pytest.param(_with(devices=-2), "devices must be 1..4096, got -2", id="negative-devices"),
    pytest.param(_with(devices=0), "devices must be 1..4096, got 0", id="zero-devices"),
    pytest.param(
        _with(accelerator="tpu-v9"), "accelerator must be 'any' or one of", id="unknown-accelerator"
    ),
    pytest.param(_with(estimated_seconds=0), "estimated_seconds must be 1..", id="zero-hours"),
    pytest.param(
        _with(deadline_ms=1_000), "deadline_ms must be in the future, got 1000", id="past-deadline"
    ),
    pytest.param(_with(command=[]), "command must name a program", id="no-command"),
    pytest.param(
        _with(max_price_minor=-5), "max_price_minor must be positive, got -5", id="budget"
    ),
    pytest.param(_with(priority=1000), "priority must be 0..100, got 1000", id="priority"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
def test_bad_job_spec_is_refused_and_nothing_is_stored(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    spec: types_pb2.JobSpec,
    message: str,
) -> None:
    before = _rows(federation.db)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitJob(broker_pb2.SubmitJobRequest(spec=spec), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert _rows(federation.db) == before
    assert list(stub.ListJobs(broker_pb2.ListJobsRequest(), timeout=5).jobs) == []


def test_missing_spec_and_unknown_state_are_refused(
    stub: broker_pb2_grpc.BrokerServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitJob(broker_pb2.SubmitJobRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "spec is required"
    with pytest.raises(grpc.RpcError) as info:
        stub.ListJobs(broker_pb2.ListJobsRequest(states=[0]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "state must be a known job state, got 0"


def test_unknown_job_is_not_found(stub: broker_pb2_grpc.BrokerServiceStub) -> None:
    for call, request in (
        (stub.GetJob, broker_pb2.GetJobRequest(job_id="j-nope")),
        (stub.CancelJob, broker_pb2.CancelJobRequest(job_id="j-nope")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "no job 'j-nope'"


def _stream(federation: LocalFederation, *messages: agent_pb2.ConnectRequest) -> None:
    """Send messages as center CZ (with its certificate); the broker must end the stream
    (each test expects it to refuse)."""
    converse(federation.address, *messages, credentials=federation.credentials(Role.CENTER, "CZ"))


def _hello(center_id: str = "CZ") -> agent_pb2.ConnectRequest:
    from core import wire

    return agent_pb2.ConnectRequest(
        hello=agent_pb2.Hello(center=wire.center_to_proto(make_center(center_id)))
    )


def _offer(center_id: str = "CZ", free: int = 4, total: int = 8) -> agent_pb2.ConnectRequest:
    now = int(time.time() * 1000)
    pool = types_pb2.Pool(
        pool_id="main",
        accelerator="ascend-910",
        devices_total=total,
        devices_free=free,
        memory_gb_per_device=32,
        fp16_tflops_per_device=256,
        power_w_per_device=300,
        price_minor_per_device_hour=500,
    )
    return agent_pb2.ConnectRequest(
        offer=types_pb2.Offer(
            center_id=center_id,
            seq=1,
            issued_at_ms=now,
            expires_at_ms=now + 30_000,
            pue_milli=1250,
            grid_g_co2_per_kwh=500,
            pools=[pool],
        )
    )


@pytest.mark.parametrize(
    ("free", "total", "message"),
    [
        (-1, 8, "devices_free must be 0..devices_total (8), got -1"),
        (9, 8, "devices_free must be 0..devices_total (8), got 9"),
        (0, -4, "devices_total must be 0..1000000, got -4"),
    ],
    ids=["negative-free", "more-free-than-total", "negative-total"],
)
def test_impossible_offer_is_refused_and_not_believed(
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    free: int,
    total: int,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _stream(federation, _hello(), _offer(free=free, total=total))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    centers = stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5).centers
    assert [c.HasField("offer") for c in centers] == [False]  # the bad offer was not kept


def test_offer_for_another_center_is_permission_denied(federation: LocalFederation) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _stream(federation, _hello("CZ"), _offer(center_id="CY"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "center CZ cannot advertise for CY"


def test_stream_must_start_with_hello(federation: LocalFederation) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _stream(federation, _offer())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "the first message on a stream must be hello"


def _icx(
    *args: str, broker: str = "127.0.0.1:1", identity: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI, as the member in `identity` (a folder) if given."""
    env = {"ICX_BROKER": broker, "PATH": "/usr/bin:/bin"}
    if identity is not None:
        env["ICX_CONFIG"] = str(identity)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def _user(federation: LocalFederation) -> Path:
    """The member folder of tenant default's user."""
    return federation.member("default.user", Role.USER, tenant="default")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("devices = [", "is not valid TOML"),
        ('accelerator = "any"\ndevices = -1\nhours = 1\ncommand = ["true"]', "devices must be"),
        ('accelerator = "h900"\ndevices = 1\nhours = 1\ncommand = ["true"]', "accelerator must"),
        ('accelerator = "any"\ndevices = 1\nhours = 0\ncommand = ["true"]', "hours must be"),
        (
            'accelerator = "any"\ndevices = 1\nhours = 1\ncommand = ["true"]\n'
            'deadline = "2001-01-01T00:00:00Z"',
            "deadline_ms must be in the future",
        ),
        ('accelerator = "any"\ndevices = 1\nhours = 1', "command is required"),
        ('accelerator = "any"\ndevices = 1\nhours = 1\ncommand = ["x"]\ngpus = 2', "unknown field"),
    ],
    ids=["unparseable", "negative-devices", "unknown-accelerator", "zero-hours", "past-deadline",
         "no-command", "unknown-field"],
)  # fmt: skip
def test_cli_refuses_a_bad_spec_file_before_calling_the_broker(
    federation: LocalFederation, tmp_path: Path, toml: str, message: str
) -> None:
    before = _rows(federation.db)
    path = tmp_path / "job.toml"
    path.write_text(toml)
    result = _icx("submit", str(path), broker=federation.address, identity=_user(federation))
    assert result.returncode == 2
    assert result.stderr.startswith("icx: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _rows(federation.db) == before


def test_cli_says_when_the_broker_is_unreachable(federation: LocalFederation) -> None:
    result = _icx("jobs", identity=_user(federation))  # a member, at a port nobody serves
    assert result.returncode == 3
    assert result.stderr.startswith("icx: error: broker unreachable")


def test_agent_refuses_a_bad_center_config(tmp_path: Path) -> None:
    path = tmp_path / "center.toml"
    path.write_text('[center]\nid = "X"\nname = "x"\nregion = "TF"\npue = 0.5\n'
                    'grid_g_co2_per_kwh = 100\n[[pools]]\nid = "p"\naccelerator = "ascend-910"\n'
                    "devices = 4\nmemory_gb = 32\nfp16_tflops = 256\npower_w = 300\n"
                    "price_minor_per_device_hour = 500\n")  # fmt: skip
    result = _icx("agent", "run", "--config", str(path), "--broker", "127.0.0.1:1")
    assert result.returncode == 2
    assert result.stderr.strip() == "icx: error: center X: pue_milli must be 1000..3000, got 500"
