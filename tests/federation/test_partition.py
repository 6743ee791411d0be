"""A partition between two brokers, each on its own host (a network namespace), joined by
one link that the test cuts and heals. East's center is dear; west has one cheap device,
so east forwards there whenever it believes that device free.

What the brokers do while cut off (broker/peers.py): a home broker keeps a forwarded job
where it sent it until the peer answers (it cannot tell a lost forward from a lost
reply, so it neither runs the job again at home nor drops it) and follows a job running
there again once it can; it stops offering the peer's pools once the peer's last summary
is older than the summary expiry; the peer decides a forward by its own view when it
finally arrives, and answers a repeat from the job it holds. The claim stays the truth:
no device is booked twice, every job ends, and runs once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.errors import NotFound
from core.states import TERMINAL, JobState
from core.types import Job, JobSpec
from tests.conftest import (
    assert_no_overlaps,
    make_center,
    read_records,
    record_spec,
    wait_centers,
    wait_for,
)
from tests.federation.netns import (
    PREFIX,
    NetnsError,
    Pair,
    namespace_pair,
    namespaces,
    remove_stale,
)
from tests.federation.regions import PEER_BROKER

log = logging.getLogger(__name__)

# (region, devices, price per device-hour) of each region's one center.
CENTERS = {"east": (2, 900), "west": (1, 100)}
TOTALS = {(f"{region}-1", "main"): devices for region, (devices, _) in CENTERS.items()}
# How long a side may take to see the other again once the link is back: a forward
# sent during the cut waits out its 5 s deadline, then is retried with a backoff capped
# at 2 s; libp2p re-dials with one capped at 10 s.
HEAL_S = 30
RAN = (JobState.RUNNING, JobState.SUCCEEDED)


@pytest.fixture(scope="module")
def net() -> Iterator[Pair]:
    with namespace_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def two(
    net: Pair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LocalFederation]]:
    """East's broker and center on host A, west's on host B; peered over the link."""
    root = tmp_path_factory.mktemp("partition")
    feds: dict[str, LocalFederation] = {}
    try:
        for region, ns in (("east", net.a), ("west", net.b)):
            fed = LocalFederation(
                root=root / region,
                authority_root=root,
                broker_name=f"broker-{region}",
                broker_region=region,
                broker_args=PEER_BROKER,
                peering=True,
                peers=tuple(f.peer_address for f in feds.values()),
                host=ns.host,
                command_prefix=ns.prefix,
            )
            feds[region] = fed
            fed.__enter__()
            devices, price = CENTERS[region]
            center = make_center(
                f"{region}-1", region=region, pools={"main": ("ascend-910", devices, price)}
            )
            fed.start_agent(center)
        for fed in feds.values():
            with fed.client() as c:
                wait_centers(c, 1)
        yield feds
    finally:
        for fed in reversed(list(feds.values())):
            fed.stop()


@pytest.fixture
def link(net: Pair) -> Iterator[Pair]:
    """The link, whole again after the test whatever happened in it."""
    yield net
    if net.partitioned:
        net.heal()


def _spec(out: Path | None = None, seconds: float = 0.5) -> JobSpec:
    spec = record_spec(out or Path("/nonexistent"), seconds)
    return dataclasses.replace(spec, accelerator="ascend-910")


def _offers(c: BrokerClient, center_id: str) -> bool:
    return any(q.center_id == center_id for q in c.quote(_spec()))


def _believes_west_free(c: BrokerClient, younger_than_ms: int = 500) -> bool:
    """East holds a summary of west, just signed, with its device free. (West republishes
    every second and east drops a summary 3 s old: one older than 1.5 s may be gone by the
    time east matches a job.)"""
    view = next((p for p in c.peers().peers if p.broker == "broker-west"), None)
    if view is None or not view.live:
        return False
    return view.devices_free >= 1 and view.age_ms < younger_than_ms


def _job(c: BrokerClient, job_id: str, *states: JobState) -> Job | None:
    """The job once in one of `states`; None before (or while the broker has no such
    job: a forward on its way)."""
    try:
        job = c.get_job(job_id)
    except NotFound:
        return None
    return job if job.state in states else None


def _ended(c: BrokerClient, job_id: str) -> Job | None:
    return _job(c, job_id, *TERMINAL)


def _converged(feds: dict[str, LocalFederation]) -> float:
    """Wait until each side offers the other's center again; how long it took (s)."""
    started = time.monotonic()
    with feds["east"].client() as e, feds["west"].client() as w:
        wait_for(lambda: _offers(e, "west-1") and _offers(w, "east-1"), HEAL_S, "views to converge")
    return time.monotonic() - started


def test_a_job_running_across_the_partition_ends_and_home_learns_it_after(
    two: dict[str, LocalFederation], link: Pair, tmp_path: Path
) -> None:
    east, west = two["east"], two["west"]
    out = tmp_path / "runs"
    out.mkdir()
    with east.client("lab-a") as c, west.client(role="coordinator") as w:
        wait_for(lambda: _believes_west_free(c, 1500), 20, "east to see west-1 free")
        job = c.submit(_spec(out, seconds=6.0))  # still running when the cut comes
        running = wait_for(lambda: _job(c, job.job_id, JobState.RUNNING), 20, "running")
        assert (running.broker, running.center_id) == ("broker-west", "west-1")

        link.partition()
        there = wait_for(lambda: _ended(w, job.job_id), 15, "the job to end at west")
        assert there.state == JobState.SUCCEEDED, there.reason
        # Home cannot know: as far as it can tell, the job still runs there.
        assert c.get_job(job.job_id).state == JobState.RUNNING

        link.heal()
        healed = time.monotonic()
        done = wait_for(lambda: _ended(c, job.job_id), HEAL_S, "home to learn the job ended")
        log.info("home learnt the end %.1f s after the heal", time.monotonic() - healed)
    assert (done.state, done.broker, done.center_id) == (
        JobState.SUCCEEDED,
        "broker-west",
        "west-1",
    ), done.reason
    [run] = read_records(out)  # ran once, at west, to its end
    assert run["center"] == "west-1" and run["end"]
    log.info("views converged %.1f s after the heal", _converged(two))


def test_during_a_partition_the_device_is_booked_once_and_views_converge_after(
    two: dict[str, LocalFederation], link: Pair, tmp_path: Path
) -> None:
    east, west = two["east"], two["west"]
    out = tmp_path / "runs"
    out.mkdir()
    with east.client("lab-a") as c, west.client("lab-b") as w:
        # East's summary of west is fresh: it will believe west-1 free for ~3 s more.
        wait_for(lambda: _believes_west_free(c), 20, "a fresh summary of west-1, free")
        link.partition()
        # Both want west-1's one device: east by its stale summary, west by its own view.
        a1 = c.submit(_spec(out, seconds=1.0))
        b1 = w.submit(_spec(out, seconds=1.5))
        forwarded = wait_for(lambda: _job(c, a1.job_id, JobState.CLAIMED, *RAN), 5, "a1 matched")
        assert (forwarded.broker, forwarded.center_id) == ("broker-west", "west-1")
        ran = wait_for(lambda: _ended(w, b1.job_id), 15, "b1 to end at west")
        assert (ran.state, ran.center_id) == (JobState.SUCCEEDED, "west-1"), ran.reason

        # Past the summary expiry east offers west's pool no more ...
        wait_for(lambda: not _offers(c, "west-1"), 8, "east to stop offering west-1")
        # ... and keeps the forwarded job where it sent it until west answers.
        held = c.get_job(a1.job_id)
        assert (held.state, held.broker) == (JobState.CLAIMED, "broker-west"), held.reason
        a2 = c.submit(_spec(out, seconds=0.5))  # matched at home now
        done = wait_for(lambda: _ended(c, a2.job_id), 15, "a2 to end")
        assert (done.state, done.broker, done.center_id) == (JobState.SUCCEEDED, "", "east-1")

        link.heal()
        healed_at = time.time()
        log.info("views converged %.1f s after the heal", _converged(two))
        # West's device is idle by now: the forward that finally arrives is taken there.
        done = wait_for(lambda: _ended(c, a1.job_id), HEAL_S, "a1 to end after the heal")
        assert (done.state, done.broker, done.center_id) == (
            JobState.SUCCEEDED,
            "broker-west",
            "west-1",
        ), done.reason
        log.info("a1 ended %.1f s after the heal", time.time() - healed_at)

        # A job forwarded after the heal runs at west.
        wait_for(lambda: _believes_west_free(c, 1500), HEAL_S, "east to see west-1 free")
        a3 = c.submit(_spec(out, seconds=0.5))
        done = wait_for(lambda: _ended(c, a3.job_id), 20, "a3 to end")
        assert (done.state, done.broker, done.center_id) == (
            JobState.SUCCEEDED,
            "broker-west",
            "west-1",
        ), done.reason

    runs = read_records(out)
    assert_no_overlaps(runs, TOTALS)  # west-1's one device: never two runs at once
    assert collections.Counter(r["job"] for r in runs) == {
        a1.job_id: 1,
        b1.job_id: 1,
        a2.job_id: 1,
        a3.job_id: 1,
    }
    [a1_run] = [r for r in runs if r["job"] == a1.job_id]
    assert a1_run["center"] == "west-1" and a1_run["start"] >= healed_at  # not before


def test_a_forward_whose_reply_is_lost_runs_once(
    two: dict[str, LocalFederation], link: Pair, tmp_path: Path
) -> None:
    """A one-way cut: what east sends still arrives at west, nothing comes back. West
    takes and runs the forward; east, hearing nothing, sends it again until west answers
    (after the heal), and the repeat is answered from the job west holds."""
    east, west = two["east"], two["west"]
    out = tmp_path / "runs"
    out.mkdir()
    with (
        east.client("lab-a") as c,
        west.client("lab-b") as w,
        west.client(role="coordinator") as wc,
    ):
        # A forward now, so that east holds a connection to west when the cut comes (a
        # new one needs answers to open).
        wait_for(lambda: _believes_west_free(c, 1500), HEAL_S, "east to see west-1 free")
        a0 = c.submit(_spec(out, seconds=0.2))
        assert wait_for(lambda: _ended(c, a0.job_id), 20, "a0 to end").broker == "broker-west"

        wait_for(lambda: _believes_west_free(c), 20, "a fresh summary of west-1, free")
        link.partition(only_into=link.a)
        a1 = c.submit(_spec(out, seconds=1.0))
        there = wait_for(lambda: _job(wc, a1.job_id, *RAN), 10, "a1 to run at west")
        assert (there.home, there.center_id) == ("broker-east", "west-1")
        # West's own job, held to west (else west would forward it to east, which it
        # still hears from), waits for the device.
        b1 = w.submit(dataclasses.replace(_spec(out, seconds=0.5), allowed_regions=("west",)))
        for job in (a1, b1):
            done = wait_for(functools.partial(_ended, wc, job.job_id), 15, f"{job.job_id} ends")
            assert (done.state, done.center_id) == (JobState.SUCCEEDED, "west-1"), done.reason
        # East never heard west accept it.
        held = c.get_job(a1.job_id)
        assert (held.state, held.broker) == (JobState.CLAIMED, "broker-west"), held.reason

        link.heal()
        done = wait_for(lambda: _ended(c, a1.job_id), HEAL_S, "home to learn a1 ended")
        assert (done.state, done.broker) == (JobState.SUCCEEDED, "broker-west"), done.reason
        _converged(two)

    runs = read_records(out)
    assert_no_overlaps(runs, TOTALS)
    assert collections.Counter(r["job"] for r in runs) == {a0.job_id: 1, a1.job_id: 1, b1.job_id: 1}


# ------------------------------------------------------------ the namespaces themselves


def test_a_pair_is_removed_whatever_happens_inside() -> None:
    with pytest.raises(RuntimeError, match="a failure inside"), namespace_pair() as pair:
        names = {pair.a.name, pair.b.name}
        assert names <= set(namespaces())
        pair.partition(only_into=pair.b)
        with pytest.raises(NetnsError, match="the link is cut already"):
            pair.partition()
        assert pair.cut == (pair.b,)  # unchanged by the refused cut
        raise RuntimeError("a failure inside")
    assert names.isdisjoint(namespaces())


def test_the_namespaces_of_a_dead_run_are_removed() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = f"{PREFIX}{ended.pid}-0-a"  # as a run killed before its clean-up leaves it
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in remove_stale()
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)
