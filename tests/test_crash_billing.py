"""The federation's rule for a run cut short by a crash (docs/ledger.md, "What is
billed"): only a run whose end the center saw is billed. A run lost with a killed agent
is not billed by anyone; the job runs again and that run is billed, once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from client import BrokerClient
from core.errors import NotFound
from core.states import JobState
from tests.conftest import jobs_by_id, make_center, record_spec, submit, wait_centers, wait_for


def _claims(db: Path, job_ids: list[str]) -> list[tuple[str, str, str, int | None]]:
    marks = ",".join("?" * len(job_ids))
    with sqlite3.connect(db) as conn:
        return list(
            conn.execute(
                "SELECT job_id, claim_id, billed_record_id, started_at_ms FROM claims"
                f" WHERE job_id IN ({marks}) ORDER BY claimed_at_ms",
                job_ids,
            )
        )


def test_a_run_lost_with_its_agent_is_not_billed_and_the_rerun_is_billed_once(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    victim = make_center("CV", pools={"p": ("ascend-910", 2, 100)})  # cheapest: goes first
    other = make_center("CX", pools={"p": ("ascend-910", 2, 500)})
    for c in (victim, other):
        federation.start_agent(c)
    wait_centers(client, 2)
    out = tmp_path / "runs"
    out.mkdir()
    ids = [submit(client, record_spec(out, 3.0)) for _ in range(2)]

    def running_on_victim() -> bool:
        jobs = jobs_by_id(client)
        started = {p.stem.split(".")[0] for p in out.glob("*.json")}
        return all(
            jobs[i].center_id == "CV" and jobs[i].state == JobState.RUNNING and i in started
            for i in ids
        )

    wait_for(running_on_victim, 20, "both jobs running on the victim")
    federation.agents["CV"].kill()  # SIGKILL: its runs die with it
    federation.start_agent(victim)  # the same center, back with its run table

    jobs = wait_for(
        lambda: (j := jobs_by_id(client)) and all(j[i].state.terminal for i in ids) and j,
        60,
        "both jobs to end",
    )
    assert {jobs[i].state for i in ids} == {JobState.SUCCEEDED}

    def billed_once() -> list[tuple[str, str, str, int | None]] | None:
        claims = _claims(federation.db, ids)
        billed = [c for c in claims if c[2]]
        return claims if sorted(c[0] for c in billed) == sorted(ids) else None

    claims = wait_for(billed_once, 30, "one billed run per job")
    lost = [c for c in claims if not c[2]]
    assert len(lost) >= 2 and all(c[3] is not None for c in lost)  # they had started
    for _, claim_id, billed, _ in claims:
        if billed:
            assert billed.endswith("/" + claim_id)
            assert client.prove(record_id=billed)  # in the ledger
        else:
            with pytest.raises(NotFound):
                client.prove(record_id=f"CV/{claim_id}")
