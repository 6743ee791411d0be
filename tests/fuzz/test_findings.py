"""What the fuzz harness found, each as the minimal example it shrank to, in a plain test
that runs without hypothesis."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import pytest

from cli.federation import LocalFederation
from icx.v1 import agent_pb2, broker_pb2, broker_pb2_grpc
from identity import Role
from tests.conftest import FAST_BROKER, wait_for
from tests.fuzz.harness import HEALTH_LIMIT_S, MAX_DETAILS_CHARS, HealthWatch
from tests.fuzz.properties import AgentStream
from tests.fuzz.strategies import fuzz_center


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(root=tmp_path_factory.mktemp("findings"), broker_args=FAST_BROKER) as fed:
        yield fed


@pytest.fixture(scope="module")
def stub(federation: LocalFederation) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    """A user of tenant default."""
    with federation.channel(Role.USER) as channel:
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


STREAMS = 20


def test_an_agent_stream_cancelled_by_the_agent_leaves_no_task_pending(
    federation: LocalFederation,
) -> None:
    # Found by the harness (its streams end with a cancel): the broker's stream handler
    # left the task reading the session's outbox pending, and asyncio logged "Task was
    # destroyed but it is pending!" for each such stream (169 times in a 6-minute soak).
    _, key = federation.center_identity("ZA")  # the key ZA's certificate binds
    za = federation.credentials(Role.CENTER, "ZA")
    hello = agent_pb2.ConnectRequest(
        hello=agent_pb2.Hello(center=fuzz_center("ZA"), usage_key=key.verifier.text())
    )
    for _ in range(STREAMS):
        stream = AgentStream(federation.address, za)
        stream.send(hello)
        welcome = stream.take()  # no challenge: TLS proved the key
        assert welcome is not None and welcome.HasField("welcome")
        stream.cancel()
    assert federation.broker is not None
    log = federation.broker.log_path

    def disconnected() -> bool:
        return log.read_text().count("center ZA disconnected") == STREAMS

    wait_for(disconnected, 10, "the broker to see the streams end")
    # The orphaned tasks are reported when the collector frees them: give it work.
    with federation.channel(Role.USER) as channel:
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        for _ in range(300):
            stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
    assert "Task was destroyed but it is pending" not in log.read_text()


def test_the_health_watch_reports_a_broker_that_does_not_answer_in_time(
    federation: LocalFederation,
) -> None:
    # The `health` invariant is the call's deadline: a broker that stops answering for
    # longer than it must show up as DEADLINE_EXCEEDED, and one that answers, not at all.
    assert federation.broker is not None
    watch = HealthWatch(federation.address, federation.credentials(Role.COORDINATOR))
    watch.start()
    try:
        wait_for(lambda: watch.checks >= 3, 10, "three health checks")
        assert watch.take() == []
        problems: list[str] = []
        os.kill(federation.broker.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: problems.extend(watch.take()) or problems,
                10 * HEALTH_LIMIT_S,
                "the watch to report the stopped broker",
            )
        finally:
            os.kill(federation.broker.pid, signal.SIGCONT)
        assert "health check failed: DEADLINE_EXCEEDED" in problems
        settled = watch.checks
        wait_for(lambda: watch.checks >= settled + 3, 10, "three more health checks")
        watch.take()  # a check may have begun before the broker resumed
        wait_for(lambda: watch.checks >= settled + 6, 10, "three more health checks")
        assert watch.take() == []
    finally:
        watch.stop()
