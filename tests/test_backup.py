"""docs/deploy.md's backup and restore, on a real PostgreSQL (tests/pg_cluster.py): a
broker's database dumped with `pg_dump` while it serves, restored with `pg_restore` into a
new database, and a broker started on the copy with the same state folder (its ledger key)
serves the same jobs and continues the same log, still append-only."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import psycopg
import pytest

from cli.federation import LocalFederation
from cli.postgres_local import PostgresCluster
from core.states import JobState
from identity import Role
from tests.conftest import FAST_BROKER, jobs_by_id, make_center, record_spec, wait_centers, wait_for


def _size(note: str) -> int:
    return int(note.splitlines()[1])


def _signer(note: str) -> bytes:
    """The key hash of the note's signature (C2SP signed-note: its first 4 bytes)."""
    line = next(x for x in note.splitlines() if x.startswith("\u2014 "))
    return base64.b64decode(line.split()[-1])[:4]


def test_a_dump_restored_into_a_new_database_serves_the_same_jobs_and_log(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    source = pg_cluster.create_database("backup_source")
    copy = pg_cluster.create_database("backup_copy")
    dump = tmp_path / "broker.dump"
    out = tmp_path / "runs"
    out.mkdir()
    with LocalFederation(root=tmp_path / "fed", broker_args=FAST_BROKER, store=source) as fed:
        fed.start_agent(make_center("CA"))
        with fed.client() as client:
            wait_centers(client, 1)
            ids = [client.submit(record_spec(out, 0.2)).job_id for _ in range(3)]
            wait_for(
                lambda: all(j.state == JobState.SUCCEEDED for j in jobs_by_id(client).values()),
                60,
                "three jobs done",
            )
            before = jobs_by_id(client)
        with fed.client(role=Role.COORDINATOR) as coordinator:
            wait_for(
                lambda: _size(coordinator.checkpoint()) >= 5,
                30,
                "a checkpoint over the log key, the admission and three usage records",
            )
            subprocess.run(
                [str(pg_cluster.bin_dir / "pg_dump"), "--format=custom", f"--file={dump}", source],
                check=True,
                capture_output=True,
            )  # while the broker serves: a consistent snapshot
            note = coordinator.checkpoint()
            size = _size(note)
        assert fed.broker is not None
        fed.broker.stop()

        subprocess.run(
            [str(pg_cluster.bin_dir / "pg_restore"), "--no-owner", f"--dbname={copy}", str(dump)],
            check=True,
            capture_output=True,
        )
        fed.store = copy
        fed.start_broker()
        with fed.client() as client:
            after = jobs_by_id(client)
            assert {i: after[i].state for i in ids} == {i: before[i].state for i in ids}
            assert [after[i].center_id for i in ids] == [before[i].center_id for i in ids]
            wait_centers(client, 1)
            more = client.submit(record_spec(out, 0.2)).job_id
            wait_for(
                lambda: jobs_by_id(client)[more].state == JobState.SUCCEEDED, 60, "a new job done"
            )
        with fed.client(role=Role.COORDINATOR) as coordinator:
            wait_for(
                lambda: _size(coordinator.checkpoint()) > size,
                30,
                "the new job's usage in the log",
            )
            restored = coordinator.checkpoint()
            # The same log, continued under the same key.
            assert _signer(restored) == _signer(note)
            assert restored.splitlines()[0] == note.splitlines()[0]

    with psycopg.connect(copy) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("DELETE FROM ledger_entries")
