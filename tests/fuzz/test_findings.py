"""What the fuzz harness found, each as the minimal example it shrank to, in a plain test
that runs without hypothesis."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from cli.federation import LocalFederation
from icx.v1 import broker_pb2, broker_pb2_grpc
from tests.conftest import FAST_BROKER
from tests.fuzz.harness import MAX_DETAILS_CHARS


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    fed = LocalFederation(root=tmp_path_factory.mktemp("findings"), broker_args=FAST_BROKER)
    try:
        fed.start_broker(port=0)
        yield fed
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def stub(federation: LocalFederation) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    with grpc.insecure_channel(federation.address) as channel:
        yield broker_pb2_grpc.BrokerServiceStub(channel)


def _watch(stub: broker_pb2_grpc.BrokerServiceStub, job_id: str) -> None:
    list(stub.WatchJob(broker_pb2.WatchJobRequest(job_id=job_id), timeout=5))


@pytest.mark.parametrize(
    "call",
    [
        lambda s, j: s.GetJob(broker_pb2.GetJobRequest(job_id=j), timeout=5),
        lambda s, j: s.CancelJob(broker_pb2.CancelJobRequest(job_id=j), timeout=5),
        _watch,
    ],
    ids=["GetJob", "CancelJob", "WatchJob"],
)
def test_a_megabyte_job_id_is_refused_in_a_short_message(
    stub: broker_pb2_grpc.BrokerServiceStub, call: object
) -> None:
    # Found by the harness: the id was echoed whole in "no job '...'", and gRPC refused
    # the 1 MB status message as RESOURCE_EXHAUSTED instead of the broker's answer.
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call(stub, "x" * 1_000_000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) <= MAX_DETAILS_CHARS
    assert info.value.details().startswith("job_id must be 1..64 of [A-Za-z0-9._-]")
    assert info.value.details().endswith("(1000000 chars)")
