"""The upgrade from the previous release's schema (4) on both stores: a broker database at
version 4 (tests/fixtures/broker-schema4.db; for PostgreSQL the version 4 tables of
broker-pg-schema4.sql filled with the same rows) is refused until migrated, and after
`migrate` every job, event, log line, center, pool and claim reads as before."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from broker import pg_store, sqlite_store
from broker.store import SCHEMA_VERSION, SchemaError, Snapshot, Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
TABLES = ("jobs", "centers", "pools", "events", "logs", "claims")


def _sqlite_v4(tmp_path: Path) -> tuple[Callable[[], Store], Callable[[], tuple[int, int]]]:
    db = tmp_path / "v4.db"
    shutil.copy(FIXTURES / "broker-schema4.db", db)
    return (lambda: sqlite_store.SqliteStore(db)), (lambda: sqlite_store.migrate(db))


def _postgres_v4(url: str) -> tuple[Callable[[], Store], Callable[[], tuple[int, int]]]:
    with (
        psycopg.connect(url, autocommit=True) as pg,
        sqlite3.connect(FIXTURES / "broker-schema4.db") as old,
    ):
        pg.execute((FIXTURES / "broker-pg-schema4.sql").read_text().encode())
        for table in TABLES:
            cur = old.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            marks = ", ".join(["%s"] * len(columns))
            with pg.cursor() as out:
                out.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})".encode(),
                    cur.fetchall(),
                )
    return (lambda: pg_store.PostgresStore(url)), (lambda: pg_store.migrate(url))


@pytest.fixture(params=["sqlite", "postgresql"])
def version_4(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Callable[[], Store], Callable[[], tuple[int, int]]]:
    if request.param == "sqlite":
        return _sqlite_v4(tmp_path)
    return _postgres_v4(request.getfixturevalue("pg_url"))


def _everything(store: Store) -> tuple[Snapshot, dict[str, list[object]]]:
    snap = store.load()
    history: dict[str, list[object]] = {}
    for s in snap.jobs:
        history[s.job.job_id] = [
            *store.events_after(s.job.job_id, 0),
            *store.logs_after(s.job.job_id, 0),
        ]
    return snap, history


def test_a_version_4_database_is_refused_then_migrated_with_every_row(
    version_4: tuple[Callable[[], Store], Callable[[], tuple[int, int]]],
) -> None:
    open_store, migrate = version_4
    with pytest.raises(SchemaError, match=f"schema version 4; this broker uses {SCHEMA_VERSION}"):
        open_store()
    # What version 4 holds, read with SQL alone.
    with sqlite3.connect(FIXTURES / "broker-schema4.db") as old:
        counts = {t: old.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        jobs = dict(old.execute("SELECT job_id, state FROM jobs").fetchall())
    assert (counts["jobs"], counts["centers"]) == (42, 17)

    assert migrate() == (4, SCHEMA_VERSION)

    store = open_store()
    try:
        assert store.schema_version() == SCHEMA_VERSION
        snap, history = _everything(store)
        assert {s.job.job_id: s.job.state.value for s in snap.jobs} == jobs
        assert len(snap.centers) == counts["centers"]
        assert sum(len(c.center.pools) for c in snap.centers) == counts["pools"]
        assert len(snap.claims) == counts["claims"]
        assert sum(len(h) for h in history.values()) == counts["events"] + counts["logs"]
        assert list(snap.policy_changes) == []
    finally:
        store.close()
    assert migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
