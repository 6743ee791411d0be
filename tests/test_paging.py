"""Reading jobs in pages: the broker never answers with more than a page (by count or by
bytes), the client follows the pages, and the pages cover every job once."""

from __future__ import annotations

import grpc
import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.states import JobState
from core.types import JobSpec
from icx.v1 import broker_pb2, broker_pb2_grpc


def _spec(arg_bytes: int = 1) -> JobSpec:
    return JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true", "x" * arg_bytes))


def test_the_client_follows_pages_to_every_job(
    federation: LocalFederation, client: BrokerClient
) -> None:
    ids = [client.submit(_spec()).job_id for _ in range(2_150)]
    page = client.list_jobs()
    assert [j.job_id for j in page.jobs] == list(reversed(ids))  # newest first, each once
    assert page.total == 2_150
    some = client.list_jobs(limit=1_500)
    assert [j.job_id for j in some.jobs] == list(reversed(ids))[:1_500]
    assert (some.total, some.more) == (2_150, 650)
    client.cancel(ids[0])
    assert [j.job_id for j in client.list_jobs([JobState.CANCELLED]).jobs] == [ids[0]]


def test_a_page_is_bounded_by_count_and_by_bytes(federation: LocalFederation) -> None:
    with federation.channel() as channel:  # a user of tenant "default", as the client
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        with federation.client() as client:
            for _ in range(500):  # about 4 MB of jobs, each with an 8 KB argument
                client.submit(_spec(8_000))
        first = stub.ListJobs(broker_pb2.ListJobsRequest(limit=500), timeout=10)
        assert 300 < len(first.jobs) < 500  # stopped at ~3 MiB, under gRPC's 4 MiB
        assert first.next_page_token == first.jobs[-1].job_id and first.total == 500
        rest = stub.ListJobs(
            broker_pb2.ListJobsRequest(limit=500, page_token=first.next_page_token), timeout=10
        )
        assert len(first.jobs) + len(rest.jobs) == 500 and rest.next_page_token == ""
        default = stub.ListJobs(broker_pb2.ListJobsRequest(), timeout=10)
        assert len(default.jobs) == 100 and default.next_page_token

        for request, message in (
            (broker_pb2.ListJobsRequest(limit=1_001), "limit must be 0..1000, got 1001"),
            (broker_pb2.ListJobsRequest(limit=-1), "limit must be 0..1000, got -1"),
            (
                broker_pb2.ListJobsRequest(page_token="j-nope"),
                "page_token is not one this broker gave: no job 'j-nope' to continue after",
            ),
            (
                broker_pb2.ListJobsRequest(page_token="x" * 100_000),
                "page_token is not one this broker gave",
            ),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListJobs(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == message
