"""The production store: PostgreSQL through psycopg 3, written by one thread that owns the
write connection and commits in groups, as the SQLite store does.

Each write is queued in the order the broker changed its memory; the writer runs a batch
of them in one transaction (`StoreConnection.transact`, the one place a write transaction
opens), commits once, then resolves each caller's future, so nothing is acknowledged before
PostgreSQL has it (with the server's `synchronous_commit`, on by default). A batch runs
without savepoints; if a write in it fails, the batch is rolled back and run again
with each write under its own savepoint, so one failure does not undo the others (a
failed write is rare: a duplicate request id, an unknown job). A job's row and its event
go in one statement (a data-modifying WITH), one round trip to the server each. Reads
come from a small connection pool on the caller's (the event loop's) thread and see only
committed data. Free text is kept as on SQLite: NUL, which a PostgreSQL text column
cannot hold, becomes U+FFFD (`free_text`).

While a store is open, its write connection holds a session advisory lock on the
store (its database and schema), so a second broker on the same store is refused (the lock
is released when that connection ends, a killed broker's included; a store that closes
releases it first, so that the next one to open does not wait for the session to end).
Brokers that share a database under a lease (broker/lease.py) open it with
`exclusive=False` and a `fence`: a check that runs inside every write transaction before
its writes; raising there fails the whole batch.

The write connection is a `StoreConnection` (the ledger's too): reopened when the server
dropped it (a restart, `pg_terminate_backend`), and sure of each transaction's outcome even
when the reply to its COMMIT was lost, so a committed batch is neither reported as failed
nor run twice. A batch whose connection dropped before COMMIT runs once more on a new one;
one whose outcome cannot be found out fails with Unavailable, never run again. Reads take a
pooled connection that is checked first, so a dropped one is replaced, not used.

Every connection of both stores, the read pool's included, is made from `connection_info`:
libpq's keepalives, `tcp_user_timeout` and a `connect_timeout`, so that a database host
that stops answering is noticed within seconds, not after the kernel's 15 minutes.

`connect_url` turns what libpq says about a URL that does not work into the error tree:
unreachable (Unavailable), refused credentials (PermissionDenied), no such database
(NotFound), a malformed URL (InvalidConfig). `describe_url` is the location shown in
logs and errors: host, port and database, never a password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from broker import _pg_schema as schema
from broker._sqlite_schema import SPEC_COLUMNS, STATE_COLUMNS, spec_values
from broker.claims import ClaimRecord
from broker.sqlite_store import (
    _center_from_row,
    _claim_from_row,
    _job_from_row,
    _pool_from_row,
    _resolve,
    _state_values,
    free_text,
)
from broker.store import SCHEMA_VERSION, SchemaError, Snapshot, StoredCenter, StoredJob
from core.errors import (
    FailedPrecondition,
    IcxError,
    InvalidConfig,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from core.national import PolicyVersion
from core.states import JobState
from core.types import CenterDescriptor, CenterId, Job, JobEvent, JobId, LogChunk, Pool

log = logging.getLogger("icx.broker.store")

_STOP = object()
_MAX_BATCH = 512
# The advisory lock a broker holds on its store: the two-key form, this fixed number ("icx")
# and the schema's name hashed, so that stores in two schemas of one database are apart.
_LOCK = "%s, hashtext(current_schema())"
_LOCK_KEY = 0x696378
# How long a starting broker (or a migration) waits for the lock: a killed broker's session
# ends moments after its process.
_LOCK_WAIT_MS = 3_000
# How long a transaction whose COMMIT got no reply may stay "in progress" on the server (its
# session ending) before its outcome counts as unknown.
_OUTCOME_WAIT_S = 10.0

# libpq's defaults leave a silent server host to the kernel (about 15 minutes). With these,
# an idle connection is found dead after 5 s + 3 probes 2 s apart, one with data
# unacknowledged after 10 s, and a connection attempt gives up after 5 s.
LIVENESS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

Conn = psycopg.Connection[tuple[Any, ...]]
Fence = Callable[[Conn], None]
_Write = Callable[[Conn], None]
T = TypeVar("T")


def describe_url(url: str) -> str:
    """`postgresql://HOST:PORT/DB`: where a URL points, without user or password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise InvalidConfig(f"--store: not a PostgreSQL URL: {_first_line(exc)}") from exc
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    port = str(parts.get("port") or "5432")
    return f"postgresql://{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


def connection_info(url: str) -> str:
    """`url` as a libpq connection string with `LIVENESS` added where `url` does not set
    those parameters itself (the operator's URL wins). Every connection to a broker
    database is made from it: `psycopg.connect(connection_info(url), ...)`. Raises
    psycopg.ProgrammingError for a malformed URL."""
    return make_conninfo("", **{**LIVENESS, **conninfo_to_dict(url)})


def connect_url(url: str, *, autocommit: bool = True) -> Conn:
    """A connection to `url` (with `LIVENESS`), or the error tree's reason it cannot be
    one."""
    where = describe_url(url)
    try:
        return psycopg.connect(connection_info(url), autocommit=autocommit)
    except psycopg.ProgrammingError as exc:
        raise InvalidConfig(f"--store: not a PostgreSQL URL: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise connect_error(where, exc) from exc


def connect_error(where: str, exc: psycopg.OperationalError) -> Exception:
    text = str(exc)
    reason = _first_line(exc).removeprefix("connection failed: ")
    if "no password supplied" in text:
        return PermissionDenied(
            f"PostgreSQL at {where} asks for a password and none was given: set PGPASSWORD,"
            " or add a ~/.pgpass line for this host, port, database and user"
        )
    if "authentication failed" in text or "pg_hba.conf rejects" in text or "role" in text:
        return PermissionDenied(f"PostgreSQL at {where} refused the credentials: {reason}")
    if "does not exist" in text and "database" in text:
        return NotFound(f"PostgreSQL at {where}: {reason}")
    return Unavailable(f"PostgreSQL at {where} is unreachable: {reason}")


def _first_line(exc: BaseException) -> str:
    # libpq's last line names what failed; the ones before it, each address it tried.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    failed = [line for line in lines if "failed" in line or "FATAL" in line]
    return (failed[-1] if failed else lines[0] if lines else type(exc).__name__)[:300]


class CommitUnknown(psycopg.OperationalError):
    """The connection dropped after COMMIT was sent and what became of the transaction
    could not be found out: it may have committed, so it must not be run again."""


class StoreConnection:
    """The one connection a store writes through (the ledger reads through it too): opened
    with `connect_url`, reopened when the server dropped it, `on_open` run on each new
    connection (the store's advisory lock), `fence` first in every write transaction.

    `transact` knows each transaction's outcome. It reads the transaction's id before
    COMMIT; if the connection drops before COMMIT's reply, it asks the server on a new
    connection (`txid_status`) what became of it: committed is success, aborted is run
    once more, and still unknown after `_OUTCOME_WAIT_S` raises CommitUnknown. A
    transaction whose connection dropped before COMMIT did not commit (the server aborts
    it) and runs once more too. Errors are the driver's (after the first connection):
    callers choose how to show them. Not thread-safe: one owner."""

    def __init__(
        self,
        url: str,
        location: str,
        *,
        fence: Fence | None = None,
        on_open: Callable[[Conn], None] | None = None,
    ) -> None:
        self._url = url
        self._location = location
        self._fence = fence
        self._on_open = on_open
        self._conn = connect_url(url)
        self._opened(self._conn)

    def _opened(self, conn: Conn) -> None:
        if self._on_open is not None:
            try:
                self._on_open(conn)
            except BaseException:
                conn.close()
                raise

    def get(self) -> Conn:
        """The connection, opened anew if the server dropped it."""
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            conn: Conn = psycopg.connect(connection_info(self._url), autocommit=True)
            self._opened(conn)
            self._conn = conn
            log.warning("%s: connection to the database reopened", self._location)
        return self._conn

    def close(self, *, release: bool = False) -> None:
        """Close the connection; with `release`, its session's advisory locks are let go
        first, so that whoever waits for them need not wait for the session to end."""
        if release and not (self._conn.closed or self._conn.broken):
            # On an error the session's end releases them all the same.
            with suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock_all()")
        self._conn.close()

    def read(self, body: Callable[[Conn], T]) -> T:
        """`body` (reads only) on the connection; once more on a new one if the server
        had dropped it."""
        conn = self.get()
        try:
            return body(conn)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
        return body(self.get())

    def transact(self, body: Callable[[Conn], T]) -> T:
        """`body` in one write transaction (BEGIN, the fence, `body`, COMMIT); its result
        once committed. See the class for a connection that drops on the way."""
        for attempt in (1, 2):
            conn = self.get()
            txid = 0
            committing = False
            try:
                with conn.transaction():
                    if self._fence is not None:
                        self._fence(conn)
                    row = conn.execute("SELECT txid_current()").fetchone()
                    txid = int(row[0]) if row else 0
                    result = body(conn)
                    committing = True
                return result
            except psycopg.OperationalError as exc:
                if not conn.broken:
                    raise
                if committing and self._outcome(txid, exc) == "committed":
                    log.warning("%s: COMMIT's reply was lost; it did commit", self._location)
                    return result
                if attempt == 2:
                    raise
                log.warning(
                    "%s: connection dropped before the transaction committed; running it again",
                    self._location,
                )
        raise AssertionError("unreachable")

    def _outcome(self, txid: int, cause: BaseException) -> str:
        """What became of transaction `txid`: "committed" or "aborted"; CommitUnknown if
        the server cannot say within `_OUTCOME_WAIT_S`."""
        deadline = time.monotonic() + _OUTCOME_WAIT_S
        try:
            while True:
                row = self.get().execute("SELECT txid_status(%s)", (txid,)).fetchone()
                status = None if row is None or row[0] is None else str(row[0])
                if status in ("committed", "aborted"):
                    return status
                if status != "in progress" or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)  # its session is ending on the server
        except (psycopg.Error, IcxError) as exc:  # the server away, or the lock not free
            raise CommitUnknown(
                f"the connection dropped during COMMIT and its outcome cannot be asked:"
                f" {_first_line(exc)}"
            ) from cause
        raise CommitUnknown(
            f"the connection dropped during COMMIT and transaction {txid} is {status or 'unknown'}"
        ) from cause


class PostgresStore:
    """broker.store.Store on one PostgreSQL database. Creates the schema in an empty
    database; refuses one of another schema version (see `migrate`)."""

    def __init__(
        self,
        url: str,
        *,
        fence: Fence | None = None,
        exclusive: bool = True,
        pool_size: int = 4,
    ) -> None:
        self._location = describe_url(url)
        self._exclusive = exclusive
        self._writer = StoreConnection(
            url, f"store {self._location}", fence=fence, on_open=self._hold_lock
        )
        try:
            conn = self._writer.get()
            with conn.transaction():
                found = schema.version(conn, self._location)
                if found is None:
                    schema.upgrade(conn, None)
                elif found != SCHEMA_VERSION:
                    raise SchemaError(version_message(self._location, found))
            # Each pooled connection is checked as it is taken: one the server dropped is
            # replaced, not handed to a read.
            self._pool: ConnectionPool[Conn] = ConnectionPool(
                connection_info(url),
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                check=ConnectionPool.check_connection,
                open=True,
                name="icx-store-read",
            )
        except BaseException:
            self._writer.close()
            raise
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="icx-store-writer", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        return self._location

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return schema.version(conn, self._location) or 0

    # ------------------------------------------------------------------- reads

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur

    def load(self) -> Snapshot:
        with self._read() as db, db.connection.transaction():
            jobs = [
                StoredJob(job=_job_from_row(r), request_id=r["request_id"] or "")
                for r in db.execute("SELECT * FROM jobs").fetchall()
            ]
            pools: dict[str, list[Pool]] = {}
            for r in db.execute("SELECT * FROM pools ORDER BY center_id, position").fetchall():
                pools.setdefault(r["center_id"], []).append(_pool_from_row(r))
            centers = [
                StoredCenter(
                    center=_center_from_row(r, pools.get(r["center_id"], [])),
                    first_seen_ms=r["first_seen_ms"],
                    last_seen_ms=r["last_seen_ms"],
                )
                for r in db.execute("SELECT * FROM centers").fetchall()
            ]
            event_seq = {
                JobId(r["job_id"]): int(r["seq"])
                for r in db.execute(
                    "SELECT job_id, MAX(seq) AS seq FROM events GROUP BY job_id"
                ).fetchall()
            }
            log_seq: dict[JobId, int] = {}
            log_bytes: dict[JobId, int] = {}
            for r in db.execute(
                "SELECT job_id, MAX(seq) AS seq, SUM(LENGTH(data)) AS size FROM logs"
                " GROUP BY job_id"
            ).fetchall():
                log_seq[JobId(r["job_id"])] = int(r["seq"])
                log_bytes[JobId(r["job_id"])] = int(r["size"])
            claims = [_claim_from_row(r) for r in db.execute("SELECT * FROM claims").fetchall()]
            policy_changes = [
                PolicyVersion(
                    version=r["seq"],
                    policy_json=r["policy_json"],
                    set_by=r["who"],
                    set_at_ms=r["at_ms"],
                    comment=r["comment"],
                )
                for r in db.execute("SELECT * FROM policy_changes ORDER BY seq").fetchall()
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
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = %s AND seq > %s ORDER BY seq", (job_id, seq)
            ).fetchall()
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
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM logs WHERE job_id = %s AND seq > %s ORDER BY seq", (job_id, seq)
            ).fetchall()
        return [
            LogChunk(job_id=JobId(r["job_id"]), seq=r["seq"], stream=r["stream"], data=r["data"])
            for r in rows
        ]

    # ------------------------------------------------------------------ writes

    def insert_job(self, job: Job, event: JobEvent, request_id: str = "") -> asyncio.Future[None]:
        values = (
            job.job_id,
            job.tenant,
            request_id or None,
            *spec_values(job.spec),
            job.submitted_at_ms,
            *_state_values(job),
            *_event_values(event),
        )
        # The job and its first event in one statement (one round trip): ON CONFLICT DO
        # NOTHING makes a duplicate a refusal (no row, so no event), not an error that
        # would abort the batch's transaction.
        sql = (
            f"WITH job AS (INSERT INTO jobs (job_id, tenant, request_id, {SPEC_COLUMNS},"
            f" submitted_at_ms, {STATE_COLUMNS}) VALUES ({_marks(len(values) - 5)})"
            f" ON CONFLICT DO NOTHING RETURNING job_id) {_EVENT_AFTER}"
        ).encode()

        def write(conn: Conn) -> None:
            if conn.execute(sql, values).rowcount == 0:
                raise FailedPrecondition(
                    f"job {job.job_id} or request {request_id!r} of tenant {job.tenant!r}"
                    " is already stored"
                )

        return self._write(write)

    def update_job(self, job: Job, event: JobEvent | None = None) -> asyncio.Future[None]:
        assignments = ", ".join(f"{c.strip()} = %s" for c in STATE_COLUMNS.split(","))
        update = f"UPDATE jobs SET {assignments} WHERE job_id = %s"
        values: tuple[Any, ...] = (*_state_values(job), job.job_id)
        if event is not None:  # the change and its event in one statement (one round trip)
            update = f"WITH job AS ({update} RETURNING job_id) {_EVENT_AFTER}"
            values += _event_values(event)
        sql = update.encode()

        def write(conn: Conn) -> None:
            if conn.execute(sql, values).rowcount == 0:
                raise NotFound(f"no job {job.job_id!r} in the store")

        return self._write(write)

    def insert_log(self, chunk: LogChunk) -> asyncio.Future[None]:
        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO logs (job_id, seq, stream, data) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (chunk.job_id, chunk.seq, chunk.stream, chunk.data),
            )

        return self._write(write)

    def upsert_center(self, center: CenterDescriptor, at_ms: int) -> asyncio.Future[None]:
        def write(conn: Conn) -> None:
            _upsert_center(conn, center, at_ms)

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

        def write(conn: Conn) -> None:
            conn.execute(_UPSERT_CLAIM, values)

        return self._write(write)

    def put_policy_change(self, change: PolicyVersion) -> asyncio.Future[None]:
        def write(conn: Conn) -> None:
            # The next version only: a concurrent writer's row makes the insert conflict.
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM policy_changes").fetchone()
            latest = int(row[0]) if row else 0
            if change.version != latest + 1:
                raise FailedPrecondition(
                    f"policy version {change.version} does not follow the stored {latest}"
                )
            conn.execute(
                "INSERT INTO policy_changes (seq, at_ms, who, comment, policy_json)"
                " VALUES (%s, %s, %s, %s, %s)",
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
        self._pool.close()
        self._writer.close(release=self._exclusive)

    # ------------------------------------------------------------ the writer

    def _write(self, fn: _Write) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def _run(self) -> None:
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
            results = self._commit(batch)
            for (_, fut, loop), error in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, fut, error)
            if stop:
                return

    def _commit(self, batch: list[tuple[_Write, Any, Any]]) -> list[BaseException | None]:
        """Commit `batch` in one transaction; each write's error, or None. If a write
        fails, the batch runs again with each write under its own savepoint."""
        writes = [fn for fn, _, _ in batch]
        write_failed = False

        def together(conn: Conn) -> list[BaseException | None]:
            nonlocal write_failed
            for fn in writes:
                try:
                    fn(conn)
                except Exception:
                    write_failed = not conn.broken  # the write's fault, not the connection's
                    raise
            return [None] * len(writes)

        def each_alone(conn: Conn) -> list[BaseException | None]:
            results: list[BaseException | None] = []
            for fn in writes:
                try:
                    with conn.transaction():  # a savepoint
                        fn(conn)
                    results.append(None)
                except Exception as exc:  # one bad write must not undo the batch
                    if conn.broken:
                        raise
                    results.append(_domain_error(self._location, exc))
            return results

        try:
            return self._writer.transact(together)
        except Exception as exc:
            if not write_failed:  # the fence, the connection or COMMIT: all fail alike
                return self._not_committed(len(writes), exc)
        try:
            return self._writer.transact(each_alone)
        except Exception as exc:
            return self._not_committed(len(writes), exc)

    def _not_committed(self, n: int, exc: Exception) -> list[BaseException | None]:
        error = _domain_error(self._location, exc)
        log.warning(
            "store %s: %d writes not committed: %s",
            self._location,
            n,
            error,
            exc_info=not isinstance(exc, psycopg.Error | IcxError),  # a bug: its traceback
        )
        return [error] * n

    def _hold_lock(self, conn: Conn) -> None:
        """The database's broker lock, for as long as `conn` lives (unless the store is
        not `exclusive`); FailedPrecondition if another broker holds it."""
        if not self._exclusive:
            return
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {_LOCK_WAIT_MS}".encode())
                conn.execute(f"SELECT pg_advisory_lock({_LOCK})".encode(), (_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise FailedPrecondition(
                f"broker database {self._location} is in use by another broker"
            ) from None


def version_message(location: str, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (
            f"broker database {location} has schema version {version}, newer than this "
            f"broker's {SCHEMA_VERSION}: run the icx release that wrote it, or a newer one"
        )
    return (
        f"broker database {location} has schema version {version}; this broker uses "
        f"{SCHEMA_VERSION}: back it up, then run `icx broker migrate --store URL`"
    )


def migrate(url: str) -> tuple[int, int]:
    """Bring the PostgreSQL store at `url` to SCHEMA_VERSION in one transaction; returns
    (from, to). An empty database gets the current schema; a newer schema is refused, and
    so is a database a broker is using."""
    location = describe_url(url)
    conn = connect_url(url)
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {_LOCK_WAIT_MS}".encode())
            try:
                conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK})".encode(), (_LOCK_KEY,))
            except psycopg.errors.LockNotAvailable:
                raise FailedPrecondition(
                    f"broker database {location} is in use by a broker: stop it first"
                ) from None
            before = schema.version(conn, location)
            if before is not None and before > SCHEMA_VERSION:
                raise SchemaError(version_message(location, before))
            if before is not None and before < schema.FIRST_VERSION:
                raise SchemaError(
                    f"broker database {location} has schema version {before}, older than any"
                    " PostgreSQL store"
                )
            schema.upgrade(conn, before)
        return before or 0, SCHEMA_VERSION
    finally:
        conn.close()


def _domain_error(location: str, exc: BaseException) -> BaseException:
    """A write's error as the broker sees it: ours as they are, the driver's as
    Unavailable (the server went away) or the error itself."""
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable(f"store {location}: {_first_line(exc)}")
    return exc


# ---------------------------------------------------------------- rows


def _event_values(event: JobEvent) -> tuple[Any, ...]:
    return (event.seq, event.at_ms, event.state.value, event.center_id, free_text(event.message))


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


# The event of the job the statement before it (`job`) wrote; no row when there is none.
_EVENT_AFTER = (
    "INSERT INTO events (job_id, seq, at_ms, state, center_id, message)"
    " SELECT job_id, %s::integer, %s::bigint, %s::text, %s::text, %s::text FROM job"
)


def _upsert_center(conn: Conn, center: CenterDescriptor, at_ms: int) -> None:
    conn.execute(
        "INSERT INTO centers (center_id, name, region, latitude, longitude, pue_milli,"
        " grid_g_co2_per_kwh, images, first_seen_ms, last_seen_ms)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (center_id) DO UPDATE SET name = excluded.name,"
        " region = excluded.region, latitude = excluded.latitude,"
        " longitude = excluded.longitude, pue_milli = excluded.pue_milli,"
        " grid_g_co2_per_kwh = excluded.grid_g_co2_per_kwh, images = excluded.images,"
        " last_seen_ms = excluded.last_seen_ms",
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
    conn.execute("DELETE FROM pools WHERE center_id = %s", (center.center_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pools (center_id, pool_id, position, accelerator, devices_total,"
            " devices_free, memory_gb, fp16_tflops, power_w, price_minor_per_device_hour)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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


_UPSERT_CLAIM = (
    "INSERT INTO claims (claim_id, job_id, tenant, broker, center_id, pool_id, accelerator,"
    " devices, price_minor_per_device_hour, power_w, pue_milli, grid_g_co2_per_kwh,"
    " claimed_at_ms, started_at_ms, ended_at_ms, billed_record_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (claim_id) DO UPDATE SET job_id = excluded.job_id,"
    " tenant = excluded.tenant, broker = excluded.broker, center_id = excluded.center_id,"
    " pool_id = excluded.pool_id, accelerator = excluded.accelerator,"
    " devices = excluded.devices,"
    " price_minor_per_device_hour = excluded.price_minor_per_device_hour,"
    " power_w = excluded.power_w, pue_milli = excluded.pue_milli,"
    " grid_g_co2_per_kwh = excluded.grid_g_co2_per_kwh,"
    " claimed_at_ms = excluded.claimed_at_ms, started_at_ms = excluded.started_at_ms,"
    " ended_at_ms = excluded.ended_at_ms, billed_record_id = excluded.billed_record_id"
)
