"""The broker's durable store: SQLite in WAL mode with synchronous=FULL, written by one
thread that owns the only write connection and commits in groups.

Callers enqueue write functions in the order they changed the broker's memory; the
writer runs a batch of them in one transaction (each under its own savepoint, so one
failure does not undo the others), commits once, then resolves each caller's future.
A reply that depends on a write awaits that future, so nothing is acknowledged before
it is on disk, and many concurrent submits share one fsync (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("icx.broker.store")

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    request_id TEXT,
    spec BLOB NOT NULL,            -- icx.v1.JobSpec bytes (storage only, never signed)
    state TEXT NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    center_id TEXT,
    pool_id TEXT,
    claim_id TEXT,
    device_indices TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    explanation TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request ON jobs(tenant, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
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
CREATE TABLE IF NOT EXISTS centers (
    center_id TEXT PRIMARY KEY,
    descriptor BLOB NOT NULL,      -- icx.v1.CenterDescriptor bytes
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
"""

_STOP = object()
_MAX_BATCH = 512


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, not only a process crash.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Store:
    """Owns the write connection (on its own thread) and a read connection for the loop."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer = connect(self.path)
        self._writer.executescript(SCHEMA)
        self.reader = connect(self.path)
        self.reader.row_factory = sqlite3.Row
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="icx-store-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.writes = 0

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Enqueue fn; the returned future resolves after the commit that includes it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.close()
        self.reader.close()

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
            results: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, _, _ in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        results.append((True, fn(conn)))
                        conn.execute("RELEASE w")
                    except Exception as exc:  # one bad write must not undo the batch
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        results.append((False, exc))
                conn.execute("COMMIT")
            except Exception as exc:
                log.exception("store commit failed")
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(False, exc)] * len(batch)
            self.commits += 1
            self.writes += len(batch)
            for (_, fut, loop), (ok, value) in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, fut, ok, value)
            if stop:
                return


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
