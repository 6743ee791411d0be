"""The SQLite store's schema, its version and its migrations.

Version 0 is the schema from before versions: a job's spec and a center's descriptor were
protobuf bytes. Version 1 keeps domain columns: the spec's fields in `jobs`, a center's
attributes in `centers` and its pools in `pools`. Version 2 adds `claims`. Version 3 adds
a job's container (image, memory_mb, millicpus, network) and a center's accepted images.
Version 4 adds a job's federation (broker: the peer it was forwarded to; home: the broker
that forwarded it here). Version 5 adds `policy_changes`, the coordinator's policy as set
(one row per version).
The version lives in `schema_version`. Every migration runs in one transaction: it
completes or leaves the file as it was.

The table definitions below are the current ones: a migration that creates a table
creates it as it is now, and a later migration adds only the columns a table lacks.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from broker.store import SCHEMA_VERSION
from core.errors import InvalidConfig
from core.types import CenterDescriptor, JobSpec

SPEC_COLUMNS = (
    "name, accelerator, devices, estimated_s, allowed_regions, max_price_minor, deadline_ms,"
    " priority, data_region, data_mb, command, env, image, memory_mb, millicpus, network"
)
STATE_COLUMNS = (
    "state, updated_at_ms, center_id, pool_id, claim_id, device_indices, attempts, exit_code,"
    " reason, explanation, broker, home"
)

_JOBS = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    request_id TEXT,
    name TEXT NOT NULL DEFAULT '',
    accelerator TEXT NOT NULL,
    devices INTEGER NOT NULL,
    estimated_s INTEGER NOT NULL,
    allowed_regions TEXT NOT NULL DEFAULT '[]',   -- JSON array of region names
    max_price_minor INTEGER,
    deadline_ms INTEGER,
    priority INTEGER NOT NULL DEFAULT 0,
    data_region TEXT NOT NULL DEFAULT '',
    data_mb INTEGER NOT NULL DEFAULT 0,
    command TEXT NOT NULL,                        -- JSON array of arguments
    env TEXT NOT NULL DEFAULT '[]',               -- JSON array of [name, value]
    image TEXT NOT NULL DEFAULT '',               -- container image, '' for none
    memory_mb INTEGER NOT NULL DEFAULT 0,         -- MiB, 0: not stated
    millicpus INTEGER NOT NULL DEFAULT 0,         -- thousandths of a CPU, 0: not stated
    network INTEGER NOT NULL DEFAULT 0,           -- 1: the job needs the network
    submitted_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    center_id TEXT,
    pool_id TEXT,
    claim_id TEXT,
    device_indices TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    explanation TEXT NOT NULL DEFAULT '',
    broker TEXT NOT NULL DEFAULT '',              -- the peer broker it was forwarded to
    home TEXT NOT NULL DEFAULT ''                 -- the broker that forwarded it here
);
CREATE UNIQUE INDEX jobs_request ON jobs(tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_state ON jobs(state);
"""

_CENTERS = """
CREATE TABLE centers (
    center_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    latitude REAL NOT NULL DEFAULT 0,
    longitude REAL NOT NULL DEFAULT 0,
    pue_milli INTEGER NOT NULL,
    grid_g_co2_per_kwh INTEGER NOT NULL,
    images TEXT NOT NULL DEFAULT '[]',            -- JSON array of accepted image references
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE pools (
    center_id TEXT NOT NULL REFERENCES centers(center_id),
    pool_id TEXT NOT NULL,
    position INTEGER NOT NULL,                    -- order in the descriptor
    accelerator TEXT NOT NULL,
    devices_total INTEGER NOT NULL,
    devices_free INTEGER NOT NULL,
    memory_gb INTEGER NOT NULL,
    fp16_tflops INTEGER NOT NULL,
    power_w INTEGER NOT NULL,
    price_minor_per_device_hour INTEGER NOT NULL,
    PRIMARY KEY (center_id, pool_id)
) WITHOUT ROWID;
"""

_EVENTS_AND_LOGS = """
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    center_id TEXT,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_CLAIMS = """
CREATE TABLE claims (
    claim_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    broker TEXT NOT NULL DEFAULT '',
    center_id TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    accelerator TEXT NOT NULL,
    devices INTEGER NOT NULL,
    price_minor_per_device_hour INTEGER NOT NULL,
    power_w INTEGER NOT NULL,
    pue_milli INTEGER NOT NULL,
    grid_g_co2_per_kwh INTEGER NOT NULL,
    claimed_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms INTEGER,
    billed_record_id TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX claims_job ON claims(job_id);
"""

_POLICY_CHANGES = """
CREATE TABLE policy_changes (
    seq INTEGER PRIMARY KEY,                      -- the policy's version: 1, 2, ...
    at_ms INTEGER NOT NULL,
    who TEXT NOT NULL,                            -- who set it (a certificate name)
    comment TEXT NOT NULL DEFAULT '',
    policy_json TEXT NOT NULL                     -- the policy file (docs/policy.md)
);
"""

# Columns added to a table after it was first created: (table, column, definition).
_ADDED_IN_3 = (
    ("jobs", "image", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "memory_mb", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "millicpus", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "network", "INTEGER NOT NULL DEFAULT 0"),
    ("centers", "images", "TEXT NOT NULL DEFAULT '[]'"),
)

_ADDED_IN_4 = (
    ("jobs", "broker", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "home", "TEXT NOT NULL DEFAULT ''"),
)

_VERSION = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL
);
"""


def spec_values(spec: JobSpec) -> tuple[object, ...]:
    """A spec's fields in the order of SPEC_COLUMNS."""
    return (
        spec.name,
        spec.accelerator,
        spec.devices,
        spec.estimated_s,
        json.dumps(list(spec.allowed_regions)),
        spec.max_price_minor,
        spec.deadline_ms,
        spec.priority,
        spec.data_region,
        spec.data_mb,
        json.dumps(list(spec.command)),
        json.dumps([list(kv) for kv in spec.env]),
        spec.image,
        spec.memory_mb,
        spec.millicpus,
        int(spec.network),
    )


def version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version: None for an empty file, 0 for one from before versions."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)
    if "jobs" in tables and "events" in tables:
        return 0
    if tables:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        raise InvalidConfig(
            f"{path} is not a broker database (it holds tables {', '.join(sorted(tables)[:5])})"
        )
    return None


def create(conn: sqlite3.Connection) -> None:
    """The current schema in an empty file."""
    _in_transaction(conn, lambda: _create(conn))


def _create(conn: sqlite3.Connection) -> None:
    for script in (_JOBS, _CENTERS, _EVENTS_AND_LOGS, _CLAIMS, _POLICY_CHANGES, _VERSION):
        _run_script(conn, script)
    _set_version(conn, SCHEMA_VERSION)


def upgrade(conn: sqlite3.Connection, start: int) -> None:
    """Apply the migrations after `start`, all in one transaction."""

    def steps() -> None:
        if start < 1:
            _from_0_to_1(conn)
            _set_version(conn, 1)
        if start < 2:
            _from_1_to_2(conn)
            _set_version(conn, 2)
        if start < 3:
            _from_2_to_3(conn)
            _set_version(conn, 3)
        if start < 4:
            _add_columns(conn, _ADDED_IN_4)
            _set_version(conn, 4)
        if start < 5:
            _run_script(conn, _POLICY_CHANGES)
            _set_version(conn, 5)

    _in_transaction(conn, steps)


def upsert_center(conn: sqlite3.Connection, center: CenterDescriptor, at_ms: int) -> None:
    conn.execute(
        "INSERT INTO centers (center_id, name, region, latitude, longitude, pue_milli,"
        " grid_g_co2_per_kwh, images, first_seen_ms, last_seen_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(center_id) DO UPDATE SET name = excluded.name, region = excluded.region,"
        " latitude = excluded.latitude, longitude = excluded.longitude,"
        " pue_milli = excluded.pue_milli, grid_g_co2_per_kwh = excluded.grid_g_co2_per_kwh,"
        " images = excluded.images, last_seen_ms = excluded.last_seen_ms",
        (
            center.center_id,
            center.name,
            center.region,
            center.latitude,
            center.longitude,
            center.pue_milli,
            center.grid_g_co2_per_kwh,
            json.dumps(list(center.images)),
            at_ms,
            at_ms,
        ),
    )
    conn.execute("DELETE FROM pools WHERE center_id = ?", (center.center_id,))
    conn.executemany(
        "INSERT INTO pools (center_id, pool_id, position, accelerator, devices_total,"
        " devices_free, memory_gb, fp16_tflops, power_w, price_minor_per_device_hour)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                center.center_id,
                p.pool_id,
                i,
                p.accelerator,
                p.devices_total,
                p.devices_free,
                p.memory_gb,
                p.fp16_tflops,
                p.power_w,
                p.price_minor_per_device_hour,
            )
            for i, p in enumerate(center.pools)
        ],
    )


# A job's state as version 0 kept it (what version 1 copies).
_V0_STATE_COLUMNS = (
    "state", "updated_at_ms", "center_id", "pool_id", "claim_id", "device_indices",
    "attempts", "exit_code", "reason", "explanation",
)  # fmt: skip


def _from_0_to_1(conn: sqlite3.Connection) -> None:
    """Protobuf blobs to domain columns. The blobs are read with the wire format of the
    release that wrote them (icx.v1 JobSpec and CenterDescriptor), once, here."""
    from core import wire  # the legacy format; imported by this migration only
    from icx.v1 import types_pb2

    conn.execute("ALTER TABLE jobs RENAME TO jobs_v0")
    conn.execute("ALTER TABLE centers RENAME TO centers_v0")
    conn.execute("DROP INDEX IF EXISTS jobs_request")
    conn.execute("DROP INDEX IF EXISTS jobs_state")
    _run_script(conn, _JOBS)
    _run_script(conn, _CENTERS)
    _run_script(conn, _EVENTS_AND_LOGS)
    _run_script(conn, _VERSION)
    conn.row_factory = sqlite3.Row
    try:
        for row in conn.execute("SELECT * FROM jobs_v0").fetchall():
            msg = types_pb2.JobSpec()
            msg.ParseFromString(row["spec"])
            spec = wire.spec_from_proto(msg)
            values = (
                row["job_id"],
                row["tenant"],
                row["request_id"],
                *spec_values(spec),
                row["submitted_at_ms"],
                *(row[c] for c in _V0_STATE_COLUMNS),
            )
            conn.execute(
                f"INSERT INTO jobs (job_id, tenant, request_id, {SPEC_COLUMNS}, submitted_at_ms,"
                f" {', '.join(_V0_STATE_COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
        for row in conn.execute("SELECT * FROM centers_v0").fetchall():
            blob = types_pb2.CenterDescriptor()
            blob.ParseFromString(row["descriptor"])
            center = wire.center_from_proto(blob)
            upsert_center(conn, center, row["last_seen_ms"])
            conn.execute(
                "UPDATE centers SET first_seen_ms = ? WHERE center_id = ?",
                (row["first_seen_ms"], center.center_id),
            )
    finally:
        conn.row_factory = None
    conn.execute("DROP TABLE jobs_v0")
    conn.execute("DROP TABLE centers_v0")


def _from_1_to_2(conn: sqlite3.Connection) -> None:
    """The claims table. Claims of jobs active at the upgrade get a record from what the
    database knows (the pool's price and power, the claim's time as the job's last
    update), so that their usage can still be checked and accepted."""
    _run_script(conn, _CLAIMS)
    conn.execute(
        "INSERT INTO claims (claim_id, job_id, tenant, center_id, pool_id, accelerator,"
        " devices, price_minor_per_device_hour, power_w, pue_milli, grid_g_co2_per_kwh,"
        " claimed_at_ms, started_at_ms)"
        " SELECT j.claim_id, j.job_id, j.tenant, j.center_id, j.pool_id, p.accelerator,"
        " j.devices, p.price_minor_per_device_hour, p.power_w, c.pue_milli,"
        " c.grid_g_co2_per_kwh, j.submitted_at_ms,"
        " CASE WHEN j.state = 'running' THEN j.updated_at_ms END"
        " FROM jobs j JOIN pools p ON p.center_id = j.center_id AND p.pool_id = j.pool_id"
        " JOIN centers c ON c.center_id = j.center_id"
        " WHERE j.claim_id IS NOT NULL AND j.state IN ('claimed', 'running')"
    )


def _from_2_to_3(conn: sqlite3.Connection) -> None:
    """A job's container and a center's accepted images: columns with defaults that mean
    "none", so that every stored job and center reads as before (no container)."""
    _add_columns(conn, _ADDED_IN_3)


def _add_columns(conn: sqlite3.Connection, added: tuple[tuple[str, str, str], ...]) -> None:
    """Columns with defaults that keep every stored row reading as before."""
    for table, column, definition in added:
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:  # a table created by an earlier step here has it already
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def upsert_claim_sql() -> str:
    return (
        "INSERT OR REPLACE INTO claims (claim_id, job_id, tenant, broker, center_id, pool_id,"
        " accelerator, devices, price_minor_per_device_hour, power_w, pue_milli,"
        " grid_g_co2_per_kwh, claimed_at_ms, started_at_ms, ended_at_ms, billed_record_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )


def _set_version(conn: sqlite3.Connection, v: int) -> None:
    conn.execute(
        "INSERT INTO schema_version (version, applied_at_ms) VALUES (?, ?)",
        (v, time.time_ns() // 1_000_000),
    )


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would commit the open transaction; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _in_transaction(conn: sqlite3.Connection, body: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
