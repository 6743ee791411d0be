"""A job submitted in one region runs at a center of another: matched against the peer
brokers' gossiped summaries, forwarded to the broker that owns the center, followed
from home (status, output, cancel)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator

import pytest

from cli.federation import LocalFederation
from core.states import JobState
from core.types import JobSpec
from tests.conftest import make_center, wait_centers, wait_for
from tests.federation.regions import regions


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("regions")
    with regions(root, ("east", "central", "west")) as feds:
        # East is dear, central dearer, west cheap.
        for region, price in (("east", 900), ("central", 1200), ("west", 100)):
            for i in (1, 2):
                center = make_center(
                    f"{region}-{i}", region=region, pools={"main": ("ascend-910", 4, price)}
                )
                feds[region].start_agent(center)
        for fed in feds.values():
            with fed.client() as c:
                wait_centers(c, 2)
        yield feds


def _spec(*args: str, devices: int = 1) -> JobSpec:
    return JobSpec(
        accelerator="ascend-910",
        devices=devices,
        estimated_s=3600,
        command=(sys.executable, "-c", *args),
    )


def test_a_job_submitted_east_runs_at_a_west_center(three: dict[str, LocalFederation]) -> None:
    east = three["east"]
    with east.client("lab-a") as c:
        wait_for(lambda: any(q.region == "west" for q in c.quote(_spec("pass"))), 15, "west seen")
        job = c.submit(_spec("print('hello from the west')"))
        done = wait_for(
            lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "the job to end"
        )
        assert done.state == JobState.SUCCEEDED, done.reason
        assert done.broker == "broker-west"
        assert done.center_id.startswith("west-")
        out = b"".join(i.data for i in c.watch(job.job_id, include_logs=True) if hasattr(i, "data"))
        assert b"hello from the west" in out
    with three["west"].client("lab-a", role="coordinator") as w:
        there = w.get_job(job.job_id)
        assert (there.state, there.home, there.tenant) == (
            JobState.SUCCEEDED,
            "broker-east",
            "lab-a",
        )


def test_a_forwarded_job_is_cancelled_from_home(three: dict[str, LocalFederation]) -> None:
    with three["east"].client("lab-a") as c:
        job = c.submit(_spec("import time; time.sleep(60)"))
        wait_for(lambda: c.get_job(job.job_id).state == JobState.RUNNING, 30, "running")
        c.cancel(job.job_id)
        assert c.get_job(job.job_id).state == JobState.CANCELLED
    with three["west"].client("lab-a", role="coordinator") as w:
        wait_for(lambda: w.get_job(job.job_id).state == JobState.CANCELLED, 10, "cancelled at west")


def test_a_job_held_to_its_home_region_is_never_forwarded(
    three: dict[str, LocalFederation],
) -> None:
    """The matcher applies the job's region rule to peers' pools as to its own."""
    with three["east"].client("lab-a") as c:
        job = c.submit(dataclasses.replace(_spec("pass"), allowed_regions=("east",)))
        done = wait_for(lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "end")
        assert (done.state, done.broker, done.center_id[:5]) == (JobState.SUCCEEDED, "", "east-")
        # A peer's region is known at home: a job may ask for it by name.
        west = c.submit(dataclasses.replace(_spec("pass"), allowed_regions=("central",)))
        done = wait_for(lambda: (j := c.get_job(west.job_id)).state.terminal and j, 30, "end")
        assert (done.state, done.broker) == (JobState.SUCCEEDED, "broker-central")
