"""A job submitted in one region runs at a center of another: matched against the peer
brokers' gossiped summaries, forwarded to the broker that owns the center, followed
from home (status, output, cancel)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.ledger import ledger_paths
from cli.federation import LocalFederation
from core.states import JobState
from core.types import JobSpec
from tests.conftest import make_center, run_icx, wait_centers, wait_for
from tests.federation.regions import regions


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("regions")
    with regions(root, ("east", "central", "west")) as feds:
        # East is dear, central dearer, west cheap (fen per device-hour: a second of a
        # job is charged a few fen).
        for region, price in (("east", 90_000), ("central", 120_000), ("west", 10_000)):
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
        job = c.submit(_spec("import time; time.sleep(60)"))  # runs until cancelled
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


def test_usage_is_accepted_at_home_and_the_federation_settles_to_zero(
    three: dict[str, LocalFederation],
) -> None:
    """After a job of east's tenant ran at west: west's log holds the run, east's log
    accepted it (naming west's entry), every log audits clean against the federation's
    root, and across the three logs both sets of positions sum to zero."""
    east = three["east"]
    with east.client("lab-a") as c:
        job = c.submit(_spec("import time; time.sleep(2.5)"))  # whole seconds are billed
        wait_for(lambda: c.get_job(job.job_id).state.terminal, 30, "the job to end")
    regions = [
        arg
        for name, fed in three.items()
        for arg in ("--region", f"broker-{name}={ledger_paths(fed.db)[0]}")
    ]
    period = time.strftime("%Y-%m", time.gmtime())

    def settled() -> dict[str, Any] | None:
        run = run_icx("ledger", "federation", *regions, "--period", period, "--json")
        assert run.returncode == 0, run.stderr
        body: dict[str, Any] = json.loads(run.stdout)
        west = [f for f in body["region_flows"] if f["payee"] == "broker-west"]
        return body if west and west[0]["amount_minor"] > 0 else None  # this job's charge

    body = wait_for(settled, 30, "east to accept west's records")
    [flow] = [f for f in body["region_flows"] if f["payee"] == "broker-west"]
    assert flow["payer"] == "broker-east" and flow["amount_minor"] > 0
    assert {e["origin"] for e in flow["entries"]} == {"icx/broker-west"}
    assert body["accepted_checked"] >= len(flow["entries"])
    assert sum(body["positions"].values()) == 0
    assert sum(body["region_positions"].values()) == 0
    assert body["region_positions"]["broker-west"] == -body["region_positions"]["broker-east"]
    root = east.authority.folder / "root.pem"
    for fed in three.values():
        audit = run_icx(
            "ledger", "audit", "--db", str(ledger_paths(fed.db)[0]), "--root", str(root), "--json"
        )
        assert audit.returncode == 0, audit.stderr


def test_all_of_a_forwarded_jobs_output_reaches_home(three: dict[str, LocalFederation]) -> None:
    """Output written just before the job ends is all at home once it has ended there."""
    with three["east"].client("lab-a") as c:
        job = c.submit(_spec("import sys\nfor i in range(300): print(f'line {i}', flush=True)"))
        done = wait_for(lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "end")
        assert (done.state, done.broker) == (JobState.SUCCEEDED, "broker-west")
        out = b"".join(i.data for i in c.watch(job.job_id, include_logs=True) if hasattr(i, "data"))
    assert out.decode().splitlines() == [f"line {i}" for i in range(300)]


def test_a_forwarded_jobs_bill_is_at_home(three: dict[str, LocalFederation]) -> None:
    """The user sees one job and one bill at home: `icx bill JOB` and the tenant's bill
    for the month count what the job was charged at the peer (the records home accepted)."""
    east = three["east"]
    with east.client("lab-a") as c:
        job = c.submit(_spec("import time; time.sleep(2.5)"))  # whole seconds are billed
        wait_for(lambda: c.get_job(job.job_id).state.terminal, 30, "the job to end")
        records = wait_for(lambda: c.job_records(job.job_id), 30, "the records at home")
        assert {r.record.job_id for r in records} == {job.job_id}
        assert {r.record.producer for r in records} == {"west-1"}
        charged = sum(r.record.charge_minor for r in records)
        assert charged > 0
        period = time.strftime("%Y-%m", time.gmtime())
        # As of the next checkpoint (one every 2 s), which covers the accepted records.
        [line] = wait_for(
            lambda: [j for j in c.tenant_bill(period).jobs if j.job_id == job.job_id],
            15,
            "the job in the month's bill",
        )
    assert line.charge_minor == charged
