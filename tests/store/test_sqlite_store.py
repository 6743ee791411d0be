"""The SQLite store: the contract suite, its schema version, and the upgrade of a database
written before the store had one (tests/fixtures/broker-schema0.db) and of one written
before jobs had a container (tests/fixtures/broker-schema2.db)."""

from __future__ import annotations

import datetime
import shutil
import sqlite3
from pathlib import Path

import pytest

from broker.sqlite_store import SqliteStore, migrate
from broker.store import SCHEMA_VERSION, SchemaError, Store
from core.states import JobState
from tests.store.contract import StoreContract

FIXTURE = Path(__file__).parent.parent / "fixtures" / "broker-schema0.db"
FIXTURE_2 = Path(__file__).parent.parent / "fixtures" / "broker-schema2.db"


class TestSqliteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.path = tmp_path / "broker.db"

    def make_store(self) -> Store:
        return SqliteStore(self.path)

    def reopen(self, store: Store) -> Store:
        store.close()
        return SqliteStore(self.path)


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def test_a_database_from_before_versions_is_refused_until_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    before = db.read_bytes()
    with pytest.raises(SchemaError) as info:
        SqliteStore(db)
    assert str(info.value) == (
        f"broker database {db} has schema version 0; this broker uses {SCHEMA_VERSION}: "
        f"back it up, then run `icx broker migrate --db {db}`"
    )
    assert db.read_bytes() == before  # refusing changed nothing


def test_the_upgrade_keeps_every_job_event_and_log_line(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    # What the old schema holds, read with SQL alone (not through the code under test).
    old_jobs = _rows(
        db,
        "SELECT job_id, tenant, request_id, state, submitted_at_ms, updated_at_ms, center_id,"
        " pool_id, claim_id, device_indices, attempts, exit_code, reason, explanation"
        " FROM jobs ORDER BY job_id",
    )
    old_events = _rows(db, "SELECT * FROM events ORDER BY job_id, seq")
    old_logs = _rows(db, "SELECT * FROM logs ORDER BY job_id, seq")
    old_centers = _rows(db, "SELECT center_id, first_seen_ms, last_seen_ms FROM centers")
    assert (len(old_jobs), len(old_events), len(old_logs), len(old_centers)) == (42, 154, 74, 17)

    assert migrate(db) == (0, SCHEMA_VERSION)

    assert _rows(db, "SELECT * FROM events ORDER BY job_id, seq") == old_events
    assert _rows(db, "SELECT * FROM logs ORDER BY job_id, seq") == old_logs
    store = SqliteStore(db)
    try:
        snap = store.load()
        jobs = {s.job.job_id: s for s in snap.jobs}
        assert sorted(
            (
                j.job_id, j.tenant, s.request_id or None, j.state.value, j.submitted_at_ms,
                j.updated_at_ms, j.center_id, j.pool_id, j.claim_id,
                ",".join(map(str, j.device_indices)), j.attempts, j.exit_code, j.reason,
                j.explanation,
            )
            for s in jobs.values()
            for j in [s.job]
        ) == old_jobs  # fmt: skip
        # The job queued with every optional field (see tests/fixtures/README.md).
        [full] = [s for s in jobs.values() if s.request_id == "fixture-1"]
        spec = full.job.spec
        assert (spec.name, spec.accelerator, spec.devices, spec.estimated_s) == (
            "fixture-queued", "nvidia-a800", 2, 3600,
        )  # fmt: skip
        assert (spec.allowed_regions, spec.max_price_minor, spec.priority) == (("YRD",), 10_000, 5)
        deadline = datetime.datetime.fromisoformat("2027-06-01T00:00:00+08:00")
        assert spec.deadline_ms == int(deadline.timestamp()) * 1000
        assert spec.command == ("python3", "-c", "print(1)")
        assert full.job.tenant == "lab-a" and full.job.state == JobState.QUEUED
        assert sorted(
            (c.center.center_id, c.first_seen_ms, c.last_seen_ms) for c in snap.centers
        ) == sorted(old_centers)
        assert all(len(c.center.pools) >= 1 for c in snap.centers)
        assert store.schema_version() == SCHEMA_VERSION
    finally:
        store.close()
    assert migrate(db) == (SCHEMA_VERSION, SCHEMA_VERSION)  # again: nothing to do


def test_a_newer_schema_is_refused_by_the_broker_and_by_migrate(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    expected = f"schema version {SCHEMA_VERSION + 1}, newer than this broker's {SCHEMA_VERSION}"
    with pytest.raises(SchemaError, match=expected):
        SqliteStore(db)
    with pytest.raises(SchemaError, match=expected):
        migrate(db)


def test_the_schema_holds_no_protobuf_blobs(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    SqliteStore(db).close()
    columns = {
        (table, col[1], col[2])
        for (table,) in _rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")
        for col in _rows(db, f"PRAGMA table_info({table})")
    }
    assert [c for c in columns if c[2] == "BLOB"] == [("logs", "data", "BLOB")]  # raw output


def test_the_upgrade_keeps_what_an_active_claim_needs_to_be_billed(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    with sqlite3.connect(db) as conn:  # a job running at the upgrade, in the old schema
        job_id, center_id, pool_id = conn.execute(
            "SELECT job_id, center_id, pool_id FROM jobs WHERE state = 'succeeded' LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE jobs SET state = 'running', claim_id = 'c-live', updated_at_ms = 77"
            " WHERE job_id = ?",
            (job_id,),
        )
    migrate(db)
    store = SqliteStore(db)
    try:
        [claim] = store.load().claims
    finally:
        store.close()
    [(price, power)] = _rows(
        db,
        "SELECT price_minor_per_device_hour, power_w FROM pools"
        f" WHERE center_id = '{center_id}' AND pool_id = '{pool_id}'",
    )
    assert (claim.claim_id, claim.job_id, claim.pool.center_id, claim.pool.pool_id) == (
        "c-live", job_id, center_id, pool_id,
    )  # fmt: skip
    assert (claim.price_minor_per_device_hour, claim.power_w) == (price, power)
    assert (claim.started_at_ms, claim.ended_at_ms, claim.billed_record_id) == (77, None, "")


def test_the_upgrade_from_2_gives_every_job_no_container_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v2.db"
    shutil.copy(FIXTURE_2, db)
    old_jobs = _rows(db, "SELECT * FROM jobs ORDER BY job_id")
    old_centers = _rows(db, "SELECT * FROM centers ORDER BY center_id")
    old_tables = {t: _rows(db, f"SELECT * FROM {t}") for t in ("events", "logs", "pools", "claims")}
    assert (len(old_jobs), len(old_centers)) == (42, 17)
    with pytest.raises(SchemaError, match=f"schema version 2; this broker uses {SCHEMA_VERSION}"):
        SqliteStore(db)

    assert migrate(db) == (2, SCHEMA_VERSION)

    # Every old column keeps its value; the new ones read as "no container" (3) and
    # "submitted here, run here" (4).
    assert _rows(db, "SELECT * FROM jobs ORDER BY job_id") == [
        (*row, "", 0, 0, 0, "", "") for row in old_jobs
    ]
    assert _rows(db, "SELECT * FROM centers ORDER BY center_id") == [
        (*row, "[]") for row in old_centers
    ]
    assert {t: _rows(db, f"SELECT * FROM {t}") for t in old_tables} == old_tables
    store = SqliteStore(db)
    try:
        snap = store.load()
        assert {
            (s.job.spec.image, s.job.spec.memory_mb, s.job.spec.network) for s in snap.jobs
        } == {("", 0, False)}
        assert {c.center.images for c in snap.centers} == {()}
    finally:
        store.close()
    assert migrate(db) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_a_new_database_and_a_migrated_one_have_the_same_schema(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    SqliteStore(fresh).close()
    shutil.copy(FIXTURE, old)
    migrate(old)

    def tables(db: Path) -> dict[str, list[tuple[object, ...]]]:
        names = [n for (n,) in _rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: sorted(_rows(db, f"PRAGMA table_info({n})")) for n in names}

    assert tables(old) == tables(fresh)
