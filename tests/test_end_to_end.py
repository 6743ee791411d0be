"""Jobs through a real broker and real node agents, all child processes on loopback."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.states import JobState
from core.types import Job
from tests.conftest import (
    FAST_BROKER,
    assert_no_overlaps,
    jobs_by_id,
    make_center,
    read_records,
    record_spec,
    submit,
    wait_centers,
    wait_for,
)
from tests.test_agent_restart import gated_spec, noted_and_started, output_of

SUCCEEDED = JobState.SUCCEEDED


def _all_done(client: BrokerClient, ids: list[str]) -> dict[str, Job] | None:
    jobs = jobs_by_id(client)
    return jobs if all(jobs[i].state.terminal for i in ids) else None


def test_fifty_jobs_each_succeed_once_without_overcommitting_a_pool(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    centers = [
        make_center("CA", pools={"p": ("ascend-910", 4, 400)}),
        make_center("CB", pools={"p": ("ascend-910", 6, 500)}),
        make_center("CC", pools={"p": ("ascend-910", 3, 450), "q": ("nvidia-a800", 2, 900)}),
    ]
    for c in centers:
        federation.start_agent(c)
    wait_centers(client, 3)
    out = tmp_path / "runs"
    out.mkdir()
    ids = [submit(client, record_spec(out, 0.3, devices=1 + i % 3)) for i in range(50)]

    jobs = wait_for(lambda: _all_done(client, ids), 90, "50 jobs to end")

    assert {jobs[i].state for i in ids} == {SUCCEEDED}
    records = read_records(out)
    finished = [r for r in records if "end" in r]
    assert sorted(r["job"] for r in finished) == sorted(ids)  # each exactly once
    for r in finished:
        job = jobs[r["job"]]
        assert (r["center"], r["pool"]) == (job.center_id, job.pool_id)
        assert r["devices"] == list(job.device_indices)
        assert len(r["devices"]) == job.spec.devices
    totals = {(c.center_id, p.pool_id): p.devices_total for c in centers for p in c.pools}
    assert_no_overlaps(records, totals)
    assert len({r["center"] for r in finished}) == 3  # the work spread over every center


def test_agent_killed_midjob_its_jobs_complete_elsewhere(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    # The cheapest center takes the first jobs; it is the one we kill.
    victim = make_center("CV", pools={"p": ("ascend-910", 4, 100)})
    others = [
        make_center("CX", pools={"p": ("ascend-910", 4, 500)}),
        make_center("CY", pools={"p": ("ascend-910", 4, 600)}),
    ]
    for c in (victim, *others):
        federation.start_agent(c)
    wait_centers(client, 3)
    out = tmp_path / "runs"
    out.mkdir()
    ids = [submit(client, record_spec(out, 3.0, devices=1)) for _ in range(8)]

    def victim_running() -> list[str]:
        # Running at the broker and already recorded by the job itself.
        jobs = jobs_by_id(client)
        started = {r["job"] for r in read_records(out)}
        return [
            i for i in ids
            if jobs[i].center_id == "CV" and jobs[i].state == JobState.RUNNING
            and i in started
        ]  # fmt: skip

    on_victim = wait_for(victim_running, 20, "jobs running on the victim")
    federation.agents["CV"].kill()

    jobs = wait_for(lambda: _all_done(client, ids), 60, "every job to end")
    assert {jobs[i].state for i in ids} == {SUCCEEDED}
    records = read_records(out)
    finished = sorted(r["job"] for r in records if "end" in r)
    assert finished == sorted(ids)  # each completed exactly once
    # Killed: those seen running on the victim, and any that started there just after.
    killed = {r["job"] for r in records if "end" not in r}
    assert killed >= set(on_victim)
    assert {r["center"] for r in records if "end" not in r} == {"CV"}
    for i in killed:
        assert jobs[i].center_id in {"CX", "CY"}, f"{i} finished on {jobs[i].center_id}"
        assert jobs[i].attempts == 2
    totals = {(c.center_id, "p"): 4 for c in (victim, *others)}
    assert_no_overlaps(records, totals)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalFederation]:
    """A federation whose broker keeps its store in SQLite, or in PostgreSQL."""
    store = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    with LocalFederation(root=tmp_path / "fed", broker_args=FAST_BROKER, store=store) as fed:
        yield fed


def _stored_job_ids(fed: LocalFederation) -> set[str]:
    """The job ids committed to the broker's store, read around the broker."""
    if fed.store:
        with psycopg.connect(fed.store) as pg:
            return {str(row[0]) for row in pg.execute("SELECT job_id FROM jobs")}
    with sqlite3.connect(fed.db) as db:
        return {row[0] for row in db.execute("SELECT job_id FROM jobs")}


def test_broker_killed_and_restarted_loses_no_accepted_job(
    any_store: LocalFederation, tmp_path: Path
) -> None:
    federation = any_store
    with federation.client() as client:
        _killed_and_restarted(federation, client, tmp_path)


def _killed_and_restarted(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    for c in (make_center("CA"), make_center("CB")):
        federation.start_agent(c)
    wait_centers(client, 2)
    out = tmp_path / "runs"
    out.mkdir()
    ids = [submit(client, record_spec(out, 1.0, devices=2)) for _ in range(30)]
    wait_for(
        lambda: any(j.state == JobState.RUNNING for j in jobs_by_id(client).values()),
        20,
        "a running job",
    )

    federation.broker.kill()  # SIGKILL: no shutdown, no flush
    # Every acknowledged submit was already committed.
    assert set(ids) <= _stored_job_ids(federation)
    federation.start_broker()

    jobs = wait_for(lambda: _all_done(client, ids), 90, "every job to end after the restart")
    assert {jobs[i].state for i in ids} == {SUCCEEDED}
    records = read_records(out)
    assert sorted(r["job"] for r in records if "end" in r) == sorted(ids)
    assert_no_overlaps(records, {(c, "main"): 8 for c in ("CA", "CB")})


def test_a_job_that_ends_while_its_broker_is_down_keeps_all_its_output(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    """The job writes and ends while the broker is down: its agent holds the output and
    the end, and the restarted broker has all of the output as well as the end (it keeps
    a job's output only while the job is live, and the agent's Hello said it ended
    before the held output came: the last line was lost)."""
    federation.start_agent(make_center("CA"))
    wait_centers(client, 1)
    job_id = client.submit(gated_spec(tmp_path)).job_id
    noted_and_started(client, job_id, 20)

    federation.broker.kill()  # SIGKILL; the agent's jobs go on (nobody listens there)
    (tmp_path / "go").touch()
    agent_log = federation.agents["CA"].log_path
    wait_for(lambda: "succeeded (exit 0)" in agent_log.read_text(), 20, "the job to end")
    federation.start_broker()

    job = wait_for(lambda: (j := client.get_job(job_id)).state.terminal and j, 30, "the end")
    assert (job.state, job.exit_code, job.attempts) == (SUCCEEDED, 0, 1)
    assert output_of(client, job_id) == f"started {job_id}\nfinished {job_id}\n"


def test_broker_frozen_past_expiry_jobs_stop_before_they_are_requeued(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    """A broker that goes silent (SIGSTOP: no crash, no closed socket) for longer than the
    center expiry: the agents stop their jobs after half the expiry, the broker requeues
    them when it wakes, and no job ever runs twice at the same time."""
    for c in (make_center("CA"), make_center("CB")):
        federation.start_agent(c)
    wait_centers(client, 2)
    out = tmp_path / "runs"
    out.mkdir()
    ids = [submit(client, record_spec(out, 4.0, devices=2)) for _ in range(6)]
    wait_for(lambda: len(read_records(out)) >= 4, 20, "jobs to start")

    broker = federation.broker
    assert broker is not None
    broker.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()

    def fenced_and_expired() -> bool:
        # Every run under way has stopped at its agent (its record's heartbeat is stale),
        # and the broker's own 3 s expiry has passed on the real clock it reads when it
        # wakes, so it finds both centers silent.
        now = time.time()
        under_way = [r for r in read_records(out) if "end" not in r]
        stale = all(now - r["last"] > 0.5 for r in under_way)
        return bool(under_way) and stale and time.monotonic() - frozen_at > 3.5

    wait_for(fenced_and_expired, 20, "the agents to fence and the expiry to pass")
    broker.proc.send_signal(signal.SIGCONT)

    jobs = wait_for(lambda: _all_done(client, ids), 90, "every job to end")
    assert {jobs[i].state for i in ids} == {SUCCEEDED}
    records = read_records(out)
    assert sorted(r["job"] for r in records if "end" in r) == sorted(ids)
    stopped = [r for r in records if "end" not in r]
    assert stopped  # the runs under way were stopped, then run again
    assert all(jobs[r["job"]].attempts >= 2 for r in stopped)
    assert_no_overlaps(records, {(c, "main"): 8 for c in ("CA", "CB")})
