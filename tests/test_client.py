"""The typed client against a real broker and agent on loopback: each call returns domain
values, and each failure arrives as the error tree, the gRPC error kept as its cause."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from cli.federation import LocalFederation
from client import AsyncBrokerClient, BrokerClient
from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    VerificationFailed,
)
from core.ports import free_port
from core.states import JobState
from core.status import STATUS, error_for, status_for
from core.types import Job, JobEvent, JobSpec, LogChunk
from core.views import CenterStatus, JobPage, QuoteLine, RoundDump
from identity import Role
from ledger import ProofBundle, VerifierKey, verify_statement
from ledger.errors import EntryNotFound, SignatureError
from tests.conftest import FAST_BROKER, make_center, wait_for


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(root=tmp_path_factory.mktemp("client"), broker_args=FAST_BROKER) as fed:
        fed.start_agent(make_center("CA", region="TF", pools={"p": ("ascend-910", 4, 500)}))
        with fed.client() as client:
            wait_for(
                lambda: any(c.connected and c.offer for c in client.centers()), 15, "center CA"
            )
        yield fed


@pytest.fixture
def client(fed: LocalFederation) -> Iterator[BrokerClient]:
    """A user of tenant lab-a."""
    with fed.client("lab-a") as client:
        yield client


@pytest.fixture
def coordinator(fed: LocalFederation) -> Iterator[BrokerClient]:
    with fed.client(role=Role.COORDINATOR) as client:
        yield client


def _spec(*command: str, devices: int = 1, seconds: int = 60) -> JobSpec:
    return JobSpec(accelerator="any", devices=devices, estimated_s=seconds, command=command)


def _dead_address() -> str:
    """A loopback port nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def _done(client: BrokerClient, job_id: str) -> Job | None:
    job = client.get_job(job_id)
    return job if job.state.terminal else None


# ------------------------------------------------------------------ values


def test_submit_get_watch_a_job_that_runs(client: BrokerClient) -> None:
    spec = _spec("sh", "-c", "echo out; echo err >&2")
    job = client.submit(spec, request_id="run-1")
    assert isinstance(job, Job)
    assert (job.state, job.tenant, job.spec) == (JobState.QUEUED, "lab-a", spec)
    assert client.submit(spec, request_id="run-1").job_id == job.job_id  # idempotent

    items = list(client.watch(job.job_id, include_logs=True))
    events = [i for i in items if isinstance(i, JobEvent)]
    chunks = [i for i in items if isinstance(i, LogChunk)]
    assert [e.state for e in events] == [
        JobState.QUEUED,
        JobState.CLAIMED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert {(c.stream, c.data) for c in chunks} == {("stdout", b"out\n"), ("stderr", b"err\n")}

    done = client.get_job(job.job_id)
    assert (done.state, done.center_id, done.pool_id, done.exit_code) == (
        JobState.SUCCEEDED,
        "CA",
        "p",
        0,
    )
    assert done.device_indices == (0,)
    assert done.explanation.startswith("CA/p (TF)")
    # A snapshot of a finished job: the same events, no output asked for.
    assert list(client.watch(job.job_id, follow=False)) == events


def test_list_jobs_pages_with_a_total(client: BrokerClient) -> None:
    ids = [client.submit(_spec("true")).job_id for _ in range(3)]
    page = client.list_jobs(limit=2)
    assert isinstance(page, JobPage)
    assert [j.job_id for j in page.jobs] == ids[:0:-1]  # newest first
    everything = client.list_jobs()
    assert page.total == everything.total == len(everything.jobs) >= 3
    assert page.more == page.total - 2
    wait_for(lambda: all(_done(client, j) for j in ids), 20, "three jobs")
    done = client.list_jobs([JobState.SUCCEEDED], limit=1)
    assert len(done.jobs) == 1 and done.jobs[0].state == JobState.SUCCEEDED
    assert done.total == sum(1 for j in client.list_jobs().jobs if j.state == JobState.SUCCEEDED)


def test_cancel_returns_the_cancelled_job(client: BrokerClient) -> None:
    job = client.submit(_spec("true", devices=64))  # more than any pool: stays queued
    cancelled = client.cancel(job.job_id)
    assert (cancelled.job_id, cancelled.state) == (job.job_id, JobState.CANCELLED)
    assert client.get_job(job.job_id).state == JobState.CANCELLED


def test_centers_and_quote(client: BrokerClient) -> None:
    (status,) = client.centers()
    assert isinstance(status, CenterStatus)
    assert (status.center.center_id, status.center.region, status.connected) == ("CA", "TF", True)
    assert status.offer is not None
    assert [(p.pool_id, p.devices_total) for p in status.offer.pools] == [("p", 4)]
    assert status.last_seen_ms > 0

    (line,) = client.quote(_spec("true", devices=2, seconds=7200))
    assert isinstance(line, QuoteLine)
    assert (line.rank, line.center_id, line.pool_id, line.region) == (1, "CA", "p", "TF")
    assert (line.price_minor_per_device_hour, line.charge_minor) == (500, 500 * 2 * 2)
    assert line.placeable_now and line.reason == ""
    (too_big,) = client.quote(_spec("true", devices=5))
    assert not too_big.placeable_now
    assert too_big.reason.endswith(", 5 needed")


def test_dump_round(client: BrokerClient, coordinator: BrokerClient) -> None:
    now = coordinator.dump_round(current=True)
    assert isinstance(now, RoundDump)
    assert (now.number, now.solution_json) == (0, "")
    assert '"pools"' in now.problem_json
    client.submit(_spec("true"))
    last = wait_for(lambda: (d := coordinator.dump_round()).number > 0 and d, 15, "a round")
    assert '"assignments"' in last.solution_json
    # The round shows every tenant's queue: a user may not read it.
    with pytest.raises(PermissionDenied, match=r"^a user may not call DumpRound$"):
        client.dump_round()


def test_ledger_calls(client: BrokerClient, fed: LocalFederation) -> None:
    key = client.log_key()
    assert isinstance(key, VerifierKey)
    assert key.name == "icx.local/broker"
    note = client.checkpoint()
    origin, size_text = note.splitlines()[:2]
    assert origin == "icx.local/broker" and int(size_text) >= 2  # the log key, CA's key
    bundle = client.prove(index=0)
    assert isinstance(bundle, ProofBundle) and bundle.index == 0
    proof = client.consistency_proof(1, int(size_text))
    assert proof and all(isinstance(p, bytes) for p in proof)
    body = verify_statement(client.statement("2026-11"), key)
    assert body["period"] == "2026-11"


# ------------------------------------------------------------------ errors


def test_unknown_job_is_not_found(client: BrokerClient) -> None:
    with pytest.raises(NotFound, match=r"^no job 'j-000000000000'$") as info:
        client.get_job("j-000000000000")
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert info.value.__cause__.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound, match="no job 'j-000000000000'"):
        list(client.watch("j-000000000000"))
    with pytest.raises(NotFound):
        client.prove(index=1_000_000)


def test_invalid_argument_names_the_field_and_stores_nothing(client: BrokerClient) -> None:
    before = client.list_jobs().total
    past = JobSpec(accelerator="any", devices=1, estimated_s=60, deadline_ms=1_000, command=("x",))
    with pytest.raises(InvalidArgument) as info:
        client.submit(past)
    assert str(info.value).startswith(
        "deadline_ms must be in the future, got 1000 (1970-01-01T00:00:01Z; now 20"
    )
    with pytest.raises(InvalidArgument, match=r"^sizes must satisfy 0 < size1 <= size2"):
        client.consistency_proof(5, 2)
    with pytest.raises(InvalidArgument, match=r"^limit must be >= 0 \(0: all\), got -1$"):
        client.list_jobs(limit=-1)
    assert client.list_jobs().total == before


def test_permission_and_precondition(
    fed: LocalFederation, client: BrokerClient, coordinator: BrokerClient
) -> None:
    job = client.submit(_spec("true", devices=64))
    with fed.client("lab-b") as other:
        assert other.tenant == "lab-b"
        with pytest.raises(PermissionDenied, match=f"^job {job.job_id} belongs to another tenant$"):
            other.cancel(job.job_id)
        with pytest.raises(PermissionDenied, match=f"^job {job.job_id} belongs to another tenant$"):
            other.get_job(job.job_id)
        with pytest.raises(PermissionDenied, match=f"^job {job.job_id} belongs to another tenant$"):
            list(other.watch(job.job_id, follow=False))
        assert job.job_id not in {j.job_id for j in other.list_jobs().jobs}
        with pytest.raises(PermissionDenied, match=r"^a user may not call AddCosignature$"):
            other.add_cosignature(client.checkpoint())
    # The coordinator sees every tenant's job but submits and cancels none.
    assert coordinator.get_job(job.job_id).tenant == "lab-a"
    assert job.job_id in {j.job_id for j in coordinator.list_jobs().jobs}
    with pytest.raises(PermissionDenied, match=r"^a coordinator may not call CancelJob$"):
        coordinator.cancel(job.job_id)
    with pytest.raises(PermissionDenied, match="accepts no witnesses"):
        coordinator.add_cosignature(client.checkpoint())
    client.cancel(job.job_id)
    with pytest.raises(FailedPrecondition, match=f"^job {job.job_id} already cancelled$"):
        client.cancel(job.job_id)


def test_a_dead_address_is_unavailable_naming_it() -> None:
    address = _dead_address()
    with BrokerClient(address, timeout_s=5) as client:
        with pytest.raises(Unavailable, match=f"^broker unreachable at {address}: ") as info:
            client.list_jobs()
        assert isinstance(info.value.__cause__, grpc.RpcError)
        with pytest.raises(Unavailable, match=f"^broker unreachable at {address}: "):
            list(client.watch("j-000000000000"))


def test_a_deadline_that_passes_is_unavailable(client: BrokerClient) -> None:
    job = client.submit(_spec("true", devices=64))  # never placed: a follow never ends
    try:
        with pytest.raises(
            Unavailable, match=f"^broker at {client.address} did not answer in time"
        ):
            list(client.watch(job.job_id, timeout_s=0.3))
    finally:
        client.cancel(job.job_id)


def test_bad_arguments_are_refused_before_any_call(fed: LocalFederation) -> None:
    for tenant in ("", "lab a"):
        with pytest.raises(InvalidArgument, match=r"^tenant must be a non-empty name without"):
            BrokerClient(fed.address, tenant=tenant)
    with BrokerClient(_dead_address()) as client:  # nothing is sent: no Unavailable
        with pytest.raises(InvalidArgument, match=r"^name exactly one of record_id and index$"):
            client.prove()
        with pytest.raises(InvalidArgument, match=r"^name exactly one of record_id and index$"):
            client.prove(record_id="r", index=1)


# ------------------------------------------------------------------ async


def test_async_client_same_values_same_errors(fed: LocalFederation) -> None:
    async def run() -> None:
        lab_a = fed.credentials(tenant="lab-a")
        async with AsyncBrokerClient(fed.address, lab_a) as client:
            job = await client.submit(_spec("sh", "-c", "echo hi"))
            assert (job.state, job.tenant) == (JobState.QUEUED, "lab-a")
            items = [i async for i in client.watch(job.job_id, include_logs=True)]
            assert [i.data for i in items if isinstance(i, LogChunk)] == [b"hi\n"]
            assert (await client.get_job(job.job_id)).state == JobState.SUCCEEDED
            page = await client.list_jobs(limit=1)
            assert [j.job_id for j in page.jobs] == [job.job_id]
            assert [c.center.center_id for c in await client.centers()] == ["CA"]
            assert (await client.quote(_spec("true")))[0].center_id == "CA"
            with pytest.raises(PermissionDenied, match=r"^a user may not call DumpRound$"):
                await client.dump_round(current=True)
            assert (await client.log_key()).name == "icx.local/broker"
            assert (await client.prove(index=0)).index == 0
            with pytest.raises(NotFound, match=r"^no job 'j-000000000000'$"):
                await client.get_job("j-000000000000")
            with pytest.raises(NotFound):
                _ = [i async for i in client.watch("j-000000000000")]
        coordinator = fed.credentials(Role.COORDINATOR)
        async with AsyncBrokerClient(fed.address, coordinator) as admin:
            assert (await admin.dump_round(current=True)).number == 0
        address = _dead_address()
        async with AsyncBrokerClient(address, timeout_s=5) as dead:
            with pytest.raises(Unavailable, match=f"^broker unreachable at {address}: "):
                await dead.centers()

    asyncio.run(run())


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(
    ("exc", "code", "back"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND, NotFound),
        (EntryNotFound("x"), grpc.StatusCode.NOT_FOUND, NotFound),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE, Unavailable),
        (SignatureError("x"), grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (IcxError("x"), grpc.StatusCode.INTERNAL, IcxError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_status_table_both_ways(exc: IcxError, code: grpc.StatusCode, back: type[IcxError]) -> None:
    assert status_for(exc) == code
    error = error_for(code, "the details")
    assert type(error) is back
    assert str(error) == ("INTERNAL: the details" if back is IcxError else "the details")


def test_every_listed_code_comes_back_as_an_error_of_its_row() -> None:
    for cls, code in STATUS.items():
        assert isinstance(error_for(code, "d"), cls) or cls is VerificationFailed
    assert type(error_for(grpc.StatusCode.DEADLINE_EXCEEDED, None)) is Unavailable
    assert str(error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "")) == "RESOURCE_EXHAUSTED"
