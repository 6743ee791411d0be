"""The broker's rows: jobs and events as SQLite rows and back. The write functions
return or take what `Store.write` runs on its writer thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from core import wire
from core.states import JobState
from core.types import CenterId, ClaimId, Job, JobEvent, JobId, PoolId
from icx.v1 import types_pb2


def update_job(job: Job) -> Callable[[sqlite3.Connection], None]:
    values = (
        job.state.value,
        job.updated_at_ms,
        job.center_id,
        job.pool_id,
        job.claim_id,
        ",".join(str(i) for i in job.device_indices),
        job.attempts,
        job.exit_code,
        job.reason,
        job.explanation,
        job.job_id,
    )

    def update(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, updated_at_ms = ?, center_id = ?, pool_id = ?,"
            " claim_id = ?, device_indices = ?, attempts = ?, exit_code = ?, reason = ?,"
            " explanation = ? WHERE job_id = ?",
            values,
        )

    return update


def insert_event(conn: sqlite3.Connection, event: JobEvent) -> None:
    conn.execute(
        "INSERT INTO events (job_id, seq, at_ms, state, center_id, message)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event.job_id, event.seq, event.at_ms, event.state.value, event.center_id, event.message),
    )


def parse_center(blob: bytes) -> types_pb2.CenterDescriptor:
    msg = types_pb2.CenterDescriptor()
    msg.ParseFromString(blob)
    return msg


def job_from_row(row: sqlite3.Row) -> Job:
    spec_msg = types_pb2.JobSpec()
    spec_msg.ParseFromString(row["spec"])
    indices = row["device_indices"]
    return Job(
        job_id=JobId(row["job_id"]),
        tenant=row["tenant"],
        spec=wire.spec_from_proto(spec_msg),
        state=JobState(row["state"]),
        submitted_at_ms=row["submitted_at_ms"],
        updated_at_ms=row["updated_at_ms"],
        center_id=CenterId(row["center_id"]) if row["center_id"] else None,
        pool_id=PoolId(row["pool_id"]) if row["pool_id"] else None,
        claim_id=ClaimId(row["claim_id"]) if row["claim_id"] else None,
        device_indices=tuple(int(i) for i in indices.split(",")) if indices else (),
        attempts=row["attempts"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        explanation=row["explanation"],
    )
