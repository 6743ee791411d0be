"""The embedded store: SQLite in WAL mode with synchronous=FULL, written by one thread that
owns the only write connection and commits in groups.

Each write is queued in the order the broker changed its memory; the writer runs a batch
of them in one transaction (each under its own savepoint, so one failure does not undo
the others), commits once, then resolves each caller's future. Many concurrent submits
share one fsync (group commit), and nothing is acknowledged before it is on disk.
Reads use a second connection on the caller's (the event loop's) thread and see only
committed data.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from broker import _sqlite_schema as schema
from broker.claims import ClaimRecord
from broker.store import SCHEMA_VERSION, SchemaError, Snapshot, StoredCenter, StoredJob
from core.errors import FailedPrecondition, InvalidConfig, NotFound
from core.national import PolicyVersion
from core.states import JobState
from core.types import (
    CenterDescriptor,
    CenterId,
    ClaimId,
    Job,
    JobEvent,
    JobId,
    JobSpec,
    LogChunk,
    Pool,
    PoolId,
    PoolRef,
)

log = logging.getLogger("icx.broker.store")

_STOP = object()
_MAX_BATCH = 512
_Write = Callable[[sqlite3.Connection], None]


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, not only a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteStore:
    """broker.store.Store on one SQLite file. Creates the schema in a new file; refuses a
    file of another schema version (see `migrate`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = hold_lock(self.path)
        try:
            self._writer = open_store(self.path)
        except BaseException:
            os.close(self._lock)
            raise
        try:
            version = schema.version(self._writer)
            if version is None:
                schema.create(self._writer)
            elif version != SCHEMA_VERSION:
                raise SchemaError(_version_message(self.path, version))
        except BaseException:
            self._writer.close()
            os.close(self._lock)
            raise
        self._reader = connect(self.path)
        self._reader.row_factory = sqlite3.Row
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="icx-store-writer", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        return str(self.path)

    def schema_version(self) -> int:
        return schema.version(self._reader) or 0

    # ------------------------------------------------------------------- reads

    def load(self) -> Snapshot:
        db = self._reader
        specs: dict[tuple[object, ...], JobSpec] = {}  # a spec seen before is reused
        jobs = [
            StoredJob(job=_job_from_row(r, specs), request_id=r["request_id"] or "")
            for r in _dicts(db, "SELECT * FROM jobs")
        ]
        pools: dict[str, list[Pool]] = {}
        for r in db.execute("SELECT * FROM pools ORDER BY center_id, position"):
            pools.setdefault(r["center_id"], []).append(_pool_from_row(r))
        centers = [
            StoredCenter(
                center=_center_from_row(r, pools.get(r["center_id"], [])),
                first_seen_ms=r["first_seen_ms"],
                last_seen_ms=r["last_seen_ms"],
            )
            for r in db.execute("SELECT * FROM centers")
        ]
        event_seq = {
            JobId(j): s
            for j, s in db.execute("SELECT job_id, MAX(seq) FROM events GROUP BY job_id")
        }
        log_seq: dict[JobId, int] = {}
        log_bytes: dict[JobId, int] = {}
        for j, seq, size in db.execute(
            "SELECT job_id, MAX(seq), SUM(LENGTH(data)) FROM logs GROUP BY job_id"
        ):
            log_seq[JobId(j)] = seq
            log_bytes[JobId(j)] = size
        refs: dict[tuple[str, str, str], PoolRef] = {}
        claims = [_claim_from_row(r, refs) for r in _dicts(db, "SELECT * FROM claims")]
        policy_changes = [
            PolicyVersion(
                version=r["seq"],
                policy_json=r["policy_json"],
                set_by=r["who"],
                set_at_ms=r["at_ms"],
                comment=r["comment"],
            )
            for r in db.execute("SELECT * FROM policy_changes ORDER BY seq")
        ]
        return Snapshot(
            jobs=jobs,
            centers=centers,
            event_seq=event_seq,
            log_seq=log_seq,
            log_bytes=log_bytes,
            claims=claims,
            policy_changes=policy_changes,
        )

    def events_after(self, job_id: JobId, seq: int) -> list[JobEvent]:
        rows = self._reader.execute(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [
            JobEvent(
                job_id=JobId(r["job_id"]),
                seq=r["seq"],
                at_ms=r["at_ms"],
                state=JobState(r["state"]),
                center_id=CenterId(r["center_id"]) if r["center_id"] else None,
                message=r["message"],
            )
            for r in rows
        ]

    def logs_after(self, job_id: JobId, seq: int) -> list[LogChunk]:
        rows = self._reader.execute(
            "SELECT * FROM logs WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [
            LogChunk(job_id=JobId(r["job_id"]), seq=r["seq"], stream=r["stream"], data=r["data"])
            for r in rows
        ]

    # ------------------------------------------------------------------ writes

    def insert_job(self, job: Job, event: JobEvent, request_id: str = "") -> asyncio.Future[None]:
        values = (job.job_id, job.tenant, request_id or None, *schema.spec_values(job.spec))
        state = _state_values(job)

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO jobs (job_id, tenant, request_id, {schema.SPEC_COLUMNS},"
                    f" submitted_at_ms, {schema.STATE_COLUMNS}) VALUES"
                    f" ({', '.join('?' * (len(values) + 1 + len(state)))})",
                    (*values, job.submitted_at_ms, *state),
                )
            except sqlite3.IntegrityError as exc:
                raise FailedPrecondition(
                    f"job {job.job_id} or request {request_id!r} of tenant {job.tenant!r}"
                    " is already stored"
                ) from exc
            _insert_event(conn, event)

        return self._write(write)

    def update_job(self, job: Job, event: JobEvent | None = None) -> asyncio.Future[None]:
        state = _state_values(job)
        assignments = ", ".join(f"{c.strip()} = ?" for c in schema.STATE_COLUMNS.split(","))

        def write(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*state, job.job_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no job {job.job_id!r} in the store")
            if event is not None:
                _insert_event(conn, event)

        return self._write(write)

    def insert_log(self, chunk: LogChunk) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO logs (job_id, seq, stream, data) VALUES (?, ?, ?, ?)",
                (chunk.job_id, chunk.seq, chunk.stream, chunk.data),
            )

        return self._write(write)

    def upsert_center(self, center: CenterDescriptor, at_ms: int) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            schema.upsert_center(conn, center, at_ms)

        return self._write(write)

    def put_claim(self, record: ClaimRecord) -> asyncio.Future[None]:
        values = (
            record.claim_id,
            record.job_id,
            record.tenant,
            record.pool.broker,
            record.pool.center_id,
            record.pool.pool_id,
            record.accelerator,
            record.devices,
            record.price_minor_per_device_hour,
            record.power_w,
            record.pue_milli,
            record.grid_g_co2_per_kwh,
            record.claimed_at_ms,
            record.started_at_ms,
            record.ended_at_ms,
            record.billed_record_id,
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(schema.upsert_claim_sql(), values)

        return self._write(write)

    def put_policy_change(self, change: PolicyVersion) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            latest = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM policy_changes").fetchone()[0]
            if change.version != latest + 1:
                raise FailedPrecondition(
                    f"policy version {change.version} does not follow the stored {latest}"
                )
            conn.execute(
                "INSERT INTO policy_changes (seq, at_ms, who, comment, policy_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    change.version,
                    change.set_at_ms,
                    change.set_by,
                    free_text(change.comment),
                    change.policy_json,
                ),
            )

        return self._write(write)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.close()
        self._reader.close()
        os.close(self._lock)

    # ------------------------------------------------------------ the writer

    def _write(self, fn: _Write) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def _run(self) -> None:
        conn = self._writer
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            results: list[BaseException | None] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, _, _ in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        fn(conn)
                        conn.execute("RELEASE w")
                        results.append(None)
                    except Exception as exc:  # one bad write must not undo the batch
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        results.append(exc)
                conn.execute("COMMIT")
            except Exception as exc:
                log.exception("store commit failed")
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [exc] * len(batch)
            for (_, fut, loop), error in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, fut, error)
            if stop:
                return


def hold_lock(path: Path) -> int:
    """An exclusive lock on `<path>.lock`, held by this process until it closes the file
    descriptor returned: two brokers on one database would each believe their memory."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InvalidConfig(f"cannot open broker database {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FailedPrecondition(
            f"broker database {path} is in use by another process (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def open_store(path: Path) -> sqlite3.Connection:
    """The write connection, or InvalidConfig naming the file if it cannot be one."""
    try:
        conn = connect(path)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise InvalidConfig(f"{path} is not a broker database ({exc})") from exc
    return conn


def migrate(path: Path | str) -> tuple[int, int]:
    """Bring the SQLite store at `path` to SCHEMA_VERSION in one transaction; returns
    (from, to). A new file gets the current schema; a newer schema is refused, and so is
    a database a broker is using."""
    path = Path(path)
    lock = hold_lock(path)
    try:
        return _migrate(path)
    finally:
        os.close(lock)


def _migrate(path: Path) -> tuple[int, int]:
    conn = open_store(path)
    try:
        before = schema.version(conn)
        if before is None:
            schema.create(conn)
            return 0, SCHEMA_VERSION
        if before > SCHEMA_VERSION:
            raise SchemaError(_version_message(Path(path), before))
        schema.upgrade(conn, before)
        return before, SCHEMA_VERSION
    finally:
        conn.close()


def _version_message(path: Path, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (
            f"broker database {path} has schema version {version}, newer than this broker's "
            f"{SCHEMA_VERSION}: run the icx release that wrote it, or a newer one"
        )
    return (
        f"broker database {path} has schema version {version}; this broker uses "
        f"{SCHEMA_VERSION}: back it up, then run `icx broker migrate --db {path}`"
    )


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# ---------------------------------------------------------------- rows


class Columns(Protocol):
    """A row read by column name: sqlite3.Row here, a dict in the PostgreSQL store."""

    def __getitem__(self, key: str, /) -> Any: ...


def _dicts(db: sqlite3.Connection, query: str) -> Iterator[dict[str, Any]]:
    """The rows of `query` as dicts: a large load reads each row's columns by name many
    times, which costs less in a dict than in a sqlite3.Row."""
    cursor = db.cursor()
    cursor.row_factory = None
    cursor.execute(query)
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def free_text(value: str) -> str:
    """Free text as every store keeps it (a job's reason and explanation, an event's
    message, a policy change's comment): each NUL replaced by U+FFFD, since a PostgreSQL
    text column cannot hold NUL. One rule on both stores, so a job reads back the same
    from either."""
    return value.replace("\0", "\ufffd")


def _state_values(job: Job) -> tuple[Any, ...]:
    return (
        job.state.value,
        job.updated_at_ms,
        job.center_id,
        job.pool_id,
        job.claim_id,
        ",".join(str(i) for i in job.device_indices),
        job.attempts,
        job.exit_code,
        free_text(job.reason),
        free_text(job.explanation),
        job.broker,
        job.home,
    )


def _insert_event(conn: sqlite3.Connection, event: JobEvent) -> None:
    conn.execute(
        "INSERT INTO events (job_id, seq, at_ms, state, center_id, message)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            event.job_id,
            event.seq,
            event.at_ms,
            event.state.value,
            event.center_id,
            free_text(event.message),
        ),
    )


# The columns a job's spec is read from: equal columns, equal (immutable) spec.
_SPEC_KEY = tuple(c.strip() for c in schema.SPEC_COLUMNS.split(","))


def _job_from_row(row: Columns, specs: dict[tuple[object, ...], JobSpec] | None = None) -> Job:
    """The job of a row; `specs` (when given) holds the specs already read, so that a
    large load parses and checks each distinct spec once."""
    indices = row["device_indices"]
    key = tuple(row[c] for c in _SPEC_KEY) if specs is not None else ()
    spec = specs.get(key) if specs is not None else None
    if spec is None:
        spec = _spec_from_row(row)
        if specs is not None:
            specs[key] = spec
    return Job(
        job_id=JobId(row["job_id"]),
        tenant=row["tenant"],
        spec=spec,
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
        broker=row["broker"],
        home=row["home"],
    )


def _spec_from_row(row: Columns) -> JobSpec:
    return JobSpec(
        name=row["name"],
        accelerator=row["accelerator"],
        devices=row["devices"],
        estimated_s=row["estimated_s"],
        allowed_regions=tuple(json.loads(row["allowed_regions"])),
        max_price_minor=row["max_price_minor"],
        deadline_ms=row["deadline_ms"],
        priority=row["priority"],
        data_region=row["data_region"],
        data_mb=row["data_mb"],
        command=tuple(json.loads(row["command"])),
        env=tuple((k, v) for k, v in json.loads(row["env"])),
        image=row["image"],
        memory_mb=row["memory_mb"],
        millicpus=row["millicpus"],
        network=bool(row["network"]),
    )


def _claim_from_row(
    row: Columns, refs: dict[tuple[str, str, str], PoolRef] | None = None
) -> ClaimRecord:
    """The claim record of a row; `refs` (when given) holds the pool references already
    made, shared by the claims on one pool."""
    where = (row["broker"], row["center_id"], row["pool_id"])
    pool = refs.get(where) if refs is not None else None
    if pool is None:
        pool = PoolRef(broker=where[0], center_id=CenterId(where[1]), pool_id=PoolId(where[2]))
        if refs is not None:
            refs[where] = pool
    return ClaimRecord(
        claim_id=ClaimId(row["claim_id"]),
        job_id=JobId(row["job_id"]),
        tenant=row["tenant"],
        pool=pool,
        accelerator=row["accelerator"],
        devices=row["devices"],
        price_minor_per_device_hour=row["price_minor_per_device_hour"],
        power_w=row["power_w"],
        pue_milli=row["pue_milli"],
        grid_g_co2_per_kwh=row["grid_g_co2_per_kwh"],
        claimed_at_ms=row["claimed_at_ms"],
        started_at_ms=row["started_at_ms"],
        ended_at_ms=row["ended_at_ms"],
        billed_record_id=row["billed_record_id"],
    )


def _pool_from_row(row: Columns) -> Pool:
    return Pool(
        pool_id=PoolId(row["pool_id"]),
        accelerator=row["accelerator"],
        devices_total=row["devices_total"],
        devices_free=row["devices_free"],
        memory_gb=row["memory_gb"],
        fp16_tflops=row["fp16_tflops"],
        power_w=row["power_w"],
        price_minor_per_device_hour=row["price_minor_per_device_hour"],
    )


def _center_from_row(row: Columns, pools: list[Pool]) -> CenterDescriptor:
    return CenterDescriptor(
        center_id=CenterId(row["center_id"]),
        name=row["name"],
        region=row["region"],
        latitude=row["latitude"],
        longitude=row["longitude"],
        pue_milli=row["pue_milli"],
        grid_g_co2_per_kwh=row["grid_g_co2_per_kwh"],
        pools=tuple(pools),
        images=tuple(json.loads(row["images"])),
    )
