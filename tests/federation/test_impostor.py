"""A member broker that advertises another broker's address cannot have jobs forwarded
to it run there: TLS checks the server against the broker the summary named, so the
forward never arrives, and the job is matched again once the impostor's summary expires."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from broker.capacity import PoolCapacity
from broker.peers import summary_payload
from cli.federation import LocalFederation
from core.states import JobState
from core.types import CenterId, JobEvent, PoolId, PoolRef
from identity import Credentials, Role
from peering import CHECKPOINTS_TOPIC, SUMMARIES_TOPIC, PeerHost, PeeringConfig
from tests.conftest import make_center, record_spec, wait_centers, wait_for
from tests.federation.regions import regions


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("impostor")
    with regions(root, ("east", "west")) as feds:
        feds["west"].start_agent(make_center("west-1", region="west"))
        with feds["west"].client() as c:
            wait_centers(c, 1)
        yield feds


async def _impersonate(east: LocalFederation, west: LocalFederation, done: asyncio.Event) -> None:
    """As broker-mallory (a member), gossip a summary offering west-1's pool, cheap, at
    broker-west's gRPC address, until `done`."""
    creds = Credentials.load(east.member("broker-mallory", Role.BROKER, region="west"))
    center = make_center("west-1", region="west", pools={"main": ("ascend-910", 8, 1)})
    pool = center.pools[0]
    payload = summary_payload(
        "west",
        west.address,
        [
            PoolCapacity(
                ref=PoolRef(center_id=CenterId("west-1"), pool_id=PoolId("main")),
                region="west", pool=pool, free=8, pue_milli=1250, grid_g_co2_per_kwh=500,
            )
        ],
    )  # fmt: skip
    config = PeeringConfig(
        bootstrap=(east.peer_address,),
        topics=(SUMMARIES_TOPIC, CHECKPOINTS_TOPIC),
        peer_key_seed=os.urandom(32),
        republish_s=0.5,
    )
    async with PeerHost(config, creds) as host:
        await host.publish(SUMMARIES_TOPIC, payload)
        await done.wait()


def test_a_forward_to_an_impostor_never_runs_at_the_broker_it_names(
    pair: dict[str, LocalFederation], tmp_path: object
) -> None:
    east, west = pair["east"], pair["west"]

    async def body() -> None:
        done = asyncio.Event()
        task = asyncio.create_task(_impersonate(east, west, done))
        try:
            with east.client("lab-a") as c:
                spec = record_spec(west.root / "runs", 0.2)
                await asyncio.to_thread(
                    wait_for,
                    lambda: any(q.price_minor_per_device_hour == 1 for q in c.quote(spec)),
                    20,
                    "east to believe the impostor's summary",
                )
                job = c.submit(spec)
                await asyncio.to_thread(
                    wait_for,
                    lambda: any(
                        "forwarded to broker-mallory" in e.message
                        for e in c.watch(job.job_id)
                        if isinstance(e, JobEvent)
                    ),
                    20,
                    "the forward to the impostor",
                )
                # West never takes it under the impostor's name.
                with west.client("lab-a", role="coordinator") as w:
                    assert all(j.job_id != job.job_id for j in w.list_jobs().jobs)
        finally:
            done.set()
            await task
        with east.client("lab-a") as c:
            end = await asyncio.to_thread(
                wait_for, lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "end"
            )
            events = [e.message for e in c.watch(job.job_id) if isinstance(e, JobEvent)]
        assert end.state == JobState.SUCCEEDED and end.broker == "broker-west", events
        assert any("the forward never reached it" in m for m in events), events

    (west.root / "runs").mkdir(exist_ok=True)
    asyncio.run(body())
