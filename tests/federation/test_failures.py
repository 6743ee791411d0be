"""What goes wrong between brokers: two brokers acting on one stale summary, and the
owner of a forwarded job killed while the job runs. The claim stays the truth: no
device is booked twice, no forwarded job is lost or run twice."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.states import JobState
from core.types import Job, JobEvent
from tests.conftest import make_center, record_spec, wait_centers, wait_for
from tests.federation.regions import metric, regions


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("failures")
    with regions(root, ("east", "central", "west")) as feds:
        # West has the one cheap device; east and central have dear ones of their own.
        pools = {"east": (4, 900), "central": (4, 1200), "west": (1, 100)}
        for region, (devices, price) in pools.items():
            center = make_center(
                f"{region}-1", region=region, pools={"main": ("ascend-910", devices, price)}
            )
            feds[region].start_agent(center)
        for fed in feds.values():
            with fed.client() as c:
                wait_centers(c, 1)
        for home in ("east", "central"):
            with feds[home].client() as c:
                wait_for(lambda: any(q.center_id == "west-1" for q in c.quote(_spec())), 20, "west")
        yield feds


def _spec(out: Path | None = None, seconds: float = 0.5) -> object:
    spec = record_spec(out or Path("/nonexistent"), seconds)
    return dataclasses.replace(spec, accelerator="ascend-910")


def _west_free(c: BrokerClient) -> bool:
    return any(q.center_id == "west-1" and q.has_capacity for q in c.quote(_spec()))  # type: ignore[arg-type]


def _west_fresh(c: BrokerClient) -> bool:
    """West-1 free by a summary of west under a second old (it lives 3 s: long enough
    for what the test does before east matches on it)."""
    view = next((p for p in c.peers().peers if p.broker == "broker-west"), None)
    return view is not None and view.live and view.devices_free >= 1 and view.age_ms < 1000


def _runs(out: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _overlap(a: dict[str, object], b: dict[str, object]) -> bool:
    return a["start"] < b.get("end", b["last"]) and b["start"] < a.get("end", a["last"])  # type: ignore[operator]


def test_two_brokers_forwarding_on_one_stale_summary_book_the_device_once(
    three: dict[str, LocalFederation], tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    jobs: dict[str, Job] = {}

    def submit(home: str) -> None:
        with three[home].client("lab-a") as c:
            jobs[home] = c.submit(_spec(out, seconds=2.0))  # type: ignore[arg-type]

    # Both brokers still believe west-1's one device is free when they match.
    threads = [threading.Thread(target=submit, args=(h,)) for h in ("east", "central")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def ended() -> dict[str, Job] | None:
        got = {}
        for home, job in jobs.items():
            with three[home].client("lab-a") as c:
                got[home] = c.get_job(job.job_id)
        return got if all(j.state.terminal for j in got.values()) else None

    done = wait_for(ended, 40, "both jobs to end")
    assert {j.state for j in done.values()} == {JobState.SUCCEEDED}
    at_west = [h for h, j in done.items() if j.center_id == "west-1"]
    assert len(at_west) == 1, done  # one claim won the device
    loser = next(h for h in done if h not in at_west)
    with three[loser].client("lab-a") as c:
        events: list[JobEvent] = [e for e in c.watch(done[loser].job_id) if isinstance(e, JobEvent)]
    assert any("refused the forward" in e.message for e in events), [e.message for e in events]
    assert metric(three[loser], "icx_forwards_total", '{outcome="refused"}') >= 1
    assert done[loser].center_id in ("east-1", "central-1")  # re-matched elsewhere
    runs = _runs(out)
    assert len(runs) == 2  # each job ran once
    west = [r for r in runs if r["center"] == "west-1"]
    assert len(west) == 1 and west[0]["end"]


def test_the_owner_killed_mid_run_loses_and_repeats_nothing(
    three: dict[str, LocalFederation], tmp_path: Path
) -> None:
    east, west = three["east"], three["west"]
    out = tmp_path / "runs"
    out.mkdir()
    with east.client("lab-a") as c:
        wait_for(lambda: _west_free(c), 20, "west-1's device free in east's view")
        job = c.submit(_spec(out, seconds=6.0))  # type: ignore[arg-type]
        wait_for(lambda: c.get_job(job.job_id).state == JobState.RUNNING, 20, "running")
        assert c.get_job(job.job_id).broker == "broker-west"
        assert west.broker is not None
        west.broker.kill()  # SIGKILL: no goodbye to anyone
        # Its peers stop offering its centers within the summary expiry (3 s here).
        wait_for(lambda: all(q.center_id != "west-1" for q in c.quote(_spec())), 8, "west-1 gone")
        assert c.get_job(job.job_id).state == JobState.RUNNING  # neither lost nor requeued
        west.start_broker()  # same database, ports and peer key: it rejoins
        wait_for(lambda: any(q.center_id == "west-1" for q in c.quote(_spec())), 20, "rejoined")
        done = wait_for(
            lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "the job to end"
        )
    assert done.state == JobState.SUCCEEDED, done.reason
    [run] = _runs(out)  # ran once, to its end, at west
    assert run["center"] == "west-1" and run["end"]


def test_a_forward_that_never_left_is_matched_again_once_the_owner_is_gone(
    three: dict[str, LocalFederation], tmp_path: Path
) -> None:
    """The owner dies before a forward reaches it: the connection is refused, so nothing
    was delivered; once its summary expires the job is matched again elsewhere."""
    east, west = three["east"], three["west"]
    out = tmp_path / "runs"
    out.mkdir()
    with east.client("lab-a") as c:
        wait_for(lambda: _west_free(c) and _west_fresh(c), 20, "west-1 free in a fresh summary")
        assert west.broker is not None
        west.broker.kill()
        job = c.submit(_spec(out, seconds=0.5))  # type: ignore[arg-type]
        done = wait_for(
            lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "the job to end"
        )
        events = [e.message for e in c.watch(job.job_id) if isinstance(e, JobEvent)]
    assert done.state == JobState.SUCCEEDED, done.reason
    assert done.center_id in ("east-1", "central-1") and done.broker == ""
    # Matched at west first (its summary still believed), then matched again.
    assert any("forwarded to broker-west" in m for m in events), events
    assert any("the forward never reached it" in m for m in events), events
    [run] = _runs(out)
    assert run["center"] == done.center_id
    west.start_broker()
