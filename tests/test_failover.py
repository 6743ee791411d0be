"""Two brokers of one region on one PostgreSQL database (tests/pg_cluster.py): one active,
one standing by without listening; four agents and the clients know both addresses. The
active one is killed under load: the standby takes the lease once it lapses, loads what
the active one committed and carries on. Every acknowledged job runs exactly once and no
device is used twice at a time, checked from what the jobs themselves recorded."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli._client import reachable_broker
from cli.federation import Child, LocalFederation, wait_serving
from client import BrokerClient
from core.ports import free_port
from core.states import JobState
from identity import Role
from tests.conftest import (
    FAST_BROKER,
    assert_no_overlaps,
    hung_host,
    jobs_by_id,
    make_center,
    read_records,
    record_spec,
    wait_for,
)

FAILOVER_S = 2.0
CENTERS = ("CA", "CB", "CC", "CD")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def region(pg_url: str, tmp_path: Path) -> Iterator[LocalFederation]:
    args = (*FAST_BROKER, "--failover-s", str(FAILOVER_S))
    with LocalFederation(root=tmp_path / "fed", broker_args=args, store=pg_url) as fed:
        yield fed


def _start_standby(fed: LocalFederation, port: int) -> tuple[Child, Path]:
    """A second broker process of the region: same membership, same database, same
    state folder (its ledger key), another port."""
    ready = fed.root / "standby.ready"
    identity = fed.member(fed.broker_name, Role.BROKER, region=fed.broker_region)
    child = fed.start_child(
        "broker-standby",
        [
            "broker", "serve",
            "--listen", f"127.0.0.1:{port}",
            "--store", fed.store,
            "--state-dir", str(fed.root),
            "--metrics", "0",
            "--ready-file", str(ready),
            "--identity", str(identity),
            *fed.broker_args,
        ],
    )  # fmt: skip
    return child, ready


def test_the_standby_takes_over_a_killed_active_broker_and_no_job_is_lost_or_run_twice(
    region: LocalFederation, tmp_path: Path
) -> None:
    active_port = region.broker_port
    standby_port = free_port()
    standby, standby_ready = _start_standby(region, standby_port)
    both = f"127.0.0.1:{active_port},127.0.0.1:{standby_port}"
    for center_id in CENTERS:
        region.start_agent(make_center(center_id), "--broker", both)
    coordinator = region.credentials(Role.COORDINATOR)
    user = region.credentials(Role.USER)
    wait_for(lambda: "standing by" in standby.log_path.read_text(), 30, "the standby to wait")
    assert not _listening(standby_port)  # agents and clients cannot land on a standby

    out = tmp_path / "runs"
    out.mkdir()
    ids: list[str] = []
    with BrokerClient(reachable_broker(both), user) as client:
        wait_for(lambda: len(client.centers()) == len(CENTERS), 30, "four centers")
        ids += [client.submit(record_spec(out, 1.0, devices=2)).job_id for _ in range(16)]
        wait_for(
            lambda: sum(j.state == JobState.RUNNING for j in jobs_by_id(client).values()) >= 4,
            30,
            "jobs running",
        )

    assert region.broker is not None
    region.broker.kill(signal.SIGKILL)  # no shutdown, no release of the lease
    killed = time.monotonic()
    wait_for(standby_ready.exists, 30, "the standby to take over")
    took_over_s = time.monotonic() - killed
    port = json.loads(standby_ready.read_text())["port"]
    assert port == standby_port
    wait_serving(f"127.0.0.1:{port}", 15, coordinator)
    # The lease lapses FAILOVER_S after its last renewal, which was at most a third of
    # it before the kill; the standby looks every FAILOVER_S / 5.
    assert took_over_s <= FAILOVER_S + 10

    with BrokerClient(reachable_broker(both), user) as client:
        assert reachable_broker(both).endswith(f":{standby_port}")
        ids += [client.submit(record_spec(out, 1.0, devices=2)).job_id for _ in range(8)]
        jobs = wait_for(
            lambda: (js := jobs_by_id(client)) and all(js[i].state.terminal for i in ids) and js,
            120,
            "every job to end at the standby",
        )
    assert {jobs[i].state for i in ids} == {JobState.SUCCEEDED}
    records = read_records(out)
    assert sorted(r["job"] for r in records if "end" in r) == sorted(ids)  # each exactly once
    assert_no_overlaps(records, {(c, "main"): 8 for c in CENTERS})
    assert "holds the lease (epoch 2" in standby.log_path.read_text()
    standby.stop()


def test_a_standby_refuses_a_taken_port_and_stops_cleanly_on_sigterm(
    region: LocalFederation,
) -> None:
    standby, _ = _start_standby(region, region.broker_port)  # the active one's port
    assert standby.proc.wait(30) != 0
    standby.stop()
    log = standby.log_path.read_text()
    assert f"cannot listen on 127.0.0.1:{region.broker_port}: the port is in use" in log
    assert "Traceback" not in log

    waiting, ready = _start_standby(region, free_port())
    wait_for(lambda: "standing by" in waiting.log_path.read_text(), 30, "the standby to wait")
    waiting.proc.send_signal(signal.SIGTERM)
    assert waiting.proc.wait(15) == 0
    waiting.stop()
    assert not ready.exists()
    assert "standby stopped" in waiting.log_path.read_text()


def test_an_agent_passes_over_a_broker_address_that_takes_connections_and_never_answers(
    federation: LocalFederation,
) -> None:
    """The region's first address is a hung host (it accepts TCP and says nothing): the
    agent gives it 5 s to answer the Hello and connects to the next address, instead of
    waiting out gRPC's own 20 s connection deadline."""
    with hung_host() as (first, taken):
        agent = federation.start_agent(
            make_center("CA"), "--broker", f"{first},{federation.address}"
        )
        with federation.client() as client:
            wait_for(lambda: [c.connected for c in client.centers()] == [True], 15, "CA connected")
        assert taken, "the agent tried the hung address first"
        assert f"broker {first}: no answer in 5 s" in agent.log_path.read_text()
