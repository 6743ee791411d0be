"""The PostgreSQL store's schema, its version and its migrations.

The tables mirror the SQLite store's (broker/_sqlite_schema.py): domain columns, the same
names, the spec's lists as JSON text (a JSON string escapes what a PostgreSQL text column
cannot hold, such as NUL). The PostgreSQL store begins at version 4, the SQLite store's
version when it was written (5 adds `policy_changes`); each later version is one step in
`_STEPS`, the same change as the SQLite store's step of that number. The version lives in
`schema_version`. Every migration runs in one transaction: it completes or leaves the
database as it was.

The ledger's tables (broker/pg_ledger_store.py) live in the same database, apart from
these (prefixed `ledger_`): they are created by the ledger store and carry no version.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from broker.store import SCHEMA_VERSION
from core.errors import InvalidConfig

FIRST_VERSION = 4

_V4 = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    request_id TEXT,
    name TEXT NOT NULL DEFAULT '',
    accelerator TEXT NOT NULL,
    devices INTEGER NOT NULL,
    estimated_s BIGINT NOT NULL,
    allowed_regions TEXT NOT NULL DEFAULT '[]',
    max_price_minor BIGINT,
    deadline_ms BIGINT,
    priority INTEGER NOT NULL DEFAULT 0,
    data_region TEXT NOT NULL DEFAULT '',
    data_mb BIGINT NOT NULL DEFAULT 0,
    command TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '[]',
    image TEXT NOT NULL DEFAULT '',
    memory_mb BIGINT NOT NULL DEFAULT 0,
    millicpus BIGINT NOT NULL DEFAULT 0,
    network INTEGER NOT NULL DEFAULT 0,
    submitted_at_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    center_id TEXT,
    pool_id TEXT,
    claim_id TEXT,
    device_indices TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    explanation TEXT NOT NULL DEFAULT '',
    broker TEXT NOT NULL DEFAULT '',
    home TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state);
CREATE TABLE centers (
    center_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    latitude DOUBLE PRECISION NOT NULL DEFAULT 0,
    longitude DOUBLE PRECISION NOT NULL DEFAULT 0,
    pue_milli INTEGER NOT NULL,
    grid_g_co2_per_kwh INTEGER NOT NULL,
    images TEXT NOT NULL DEFAULT '[]',
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
CREATE TABLE pools (
    center_id TEXT NOT NULL REFERENCES centers (center_id),
    pool_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    accelerator TEXT NOT NULL,
    devices_total INTEGER NOT NULL,
    devices_free INTEGER NOT NULL,
    memory_gb INTEGER NOT NULL,
    fp16_tflops INTEGER NOT NULL,
    power_w INTEGER NOT NULL,
    price_minor_per_device_hour BIGINT NOT NULL,
    PRIMARY KEY (center_id, pool_id)
);
CREATE TABLE events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    center_id TEXT,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE logs (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE claims (
    claim_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    broker TEXT NOT NULL DEFAULT '',
    center_id TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    accelerator TEXT NOT NULL,
    devices INTEGER NOT NULL,
    price_minor_per_device_hour BIGINT NOT NULL,
    power_w INTEGER NOT NULL,
    pue_milli INTEGER NOT NULL,
    grid_g_co2_per_kwh INTEGER NOT NULL,
    claimed_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    ended_at_ms BIGINT,
    billed_record_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX claims_job ON claims (job_id);
CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    applied_at_ms BIGINT NOT NULL
);
"""

_V5 = """
CREATE TABLE policy_changes (
    seq INTEGER PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    who TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    policy_json TEXT NOT NULL
);
"""

# The step that brings version n-1 to n, for every n after FIRST_VERSION up to
# SCHEMA_VERSION; FIRST_VERSION's step makes the tables in an empty database.
_STEPS: dict[int, str] = {4: _V4, 5: _V5}

_BROKER_TABLES = frozenset({"jobs", "centers", "pools", "events", "logs", "claims"})


def tables(conn: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    ).fetchall()
    return {str(r[0]) for r in rows}


def version(conn: psycopg.Connection[tuple[Any, ...]], location: str) -> int | None:
    """The database's schema version: None for one without the broker's tables."""
    present = tables(conn)
    if "schema_version" in present:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    if present & _BROKER_TABLES:
        raise InvalidConfig(
            f"{location} is not a broker database (it holds tables"
            f" {', '.join(sorted(present)[:5])} but no schema_version)"
        )
    return None


def upgrade(conn: psycopg.Connection[tuple[Any, ...]], start: int | None) -> None:
    """Apply every step after `start` (None: an empty database) up to SCHEMA_VERSION,
    in the caller's transaction."""
    first = FIRST_VERSION if start is None else start + 1
    for v in range(first, SCHEMA_VERSION + 1):
        step = _STEPS.get(v)
        if step is None:
            raise InvalidConfig(f"no PostgreSQL migration to schema version {v}")
        _run_script(conn, step)
        conn.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (%s, %s)",
            (v, time.time_ns() // 1_000_000),
        )


def _run_script(conn: psycopg.Connection[tuple[Any, ...]], script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement.encode())
