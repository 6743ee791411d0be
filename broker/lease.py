"""One active broker per database: a lease held in PostgreSQL.

A region may run two or more broker processes on one PostgreSQL database: one active, the
others standing by (docs/deploy.md says why active-standby and not active-active). The
active broker holds the lease, a single row renewed every third of its duration; a
standby does not listen on its gRPC port, so agents and clients given every address of
the region (`--broker A,B`) reach the active one, and waits until the lease lapses, then
takes it with a higher epoch, loads the store and serves.

The database's clock decides expiry (`now()`), so brokers' clocks need not agree. Every
write transaction of the stores checks, in the transaction, that this broker still holds
the lease at its epoch (`FENCE`, with a share lock that a taker's update waits for): a
broker that lost its lease (paused past its expiry, cut off from the database) cannot
commit anything after another took over. It also stops by itself once it could not renew
within the lease's duration (`Lease.kept` raises `LeaseLost`).

    lease = Lease(url, "broker-east@host:7700", duration_s=10)
    epoch = await lease.acquire()     # waits while another broker holds it
    lease.start_keeping()             # renews on a thread of its own
    await lease.kept()                # raises LeaseLost once lost
    await lease.release()             # a clean stop: a standby takes over at once
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from broker.pg_store import connect_error, connect_url, connection_info, describe_url
from core.errors import FailedPrecondition, Unavailable

log = logging.getLogger("icx.broker.lease")

TABLE = """
CREATE TABLE IF NOT EXISTS icx_broker_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
)
"""

# In a store's write transaction: the row exists only while this holder's lease lives.
FENCE = """
SELECT 1 FROM icx_broker_lease
WHERE id = 1 AND holder = %s AND epoch = %s AND expires_at > now()
FOR SHARE
"""


# An advisory lock key (any 64-bit number no other part uses) for creating the table.
_CREATE_LOCK = 0x1C5_1EA5E


class LeaseLost(FailedPrecondition):
    """Another broker holds the lease now, or it could not be renewed in time."""


class Lease:
    def __init__(self, url: str, name: str, *, duration_s: float = 10.0) -> None:
        self.url = url
        # Unique per process: a restarted broker is a new holder and waits like any other.
        self.holder = f"{name}#{secrets.token_hex(4)}"
        self.duration_s = duration_s
        self.epoch = 0
        self._renewed = 0.0  # monotonic time of the last acquire or renewal asked
        self._failing = False  # the last renewal failed (the database refused or dropped)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: asyncio.Future[None] | None = None

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        try:
            return await psycopg.AsyncConnection.connect(connection_info(self.url), autocommit=True)
        except psycopg.OperationalError as exc:
            raise connect_error(describe_url(self.url), exc) from exc

    async def acquire(self, *, waiting: Callable[[str], None] | None = None) -> int:
        """Wait until this broker holds the lease; its epoch. `waiting(holder)` is called
        once when another broker holds it. A database that cannot be reached at first is
        an error (Unavailable, with the reason); one lost later, while standing by, is
        waited out."""
        told = False
        reached = False
        while True:
            try:
                async with await self._connect() as conn:
                    reached = True
                    await self._create(conn)
                    while True:
                        epoch = await self._take(conn)
                        if epoch is not None:
                            return epoch
                        if not told:
                            held = await (
                                await conn.execute(
                                    "SELECT holder FROM icx_broker_lease WHERE id = 1"
                                )
                            ).fetchone()
                            if waiting is not None and held is not None:
                                waiting(str(held[0]))
                            told = True
                        await asyncio.sleep(self._poll_s)
            except (psycopg.OperationalError, Unavailable) as exc:
                if not reached:
                    raise
                log.warning("standing by: lost the database (%s); reconnecting", exc)
                await asyncio.sleep(self._poll_s)

    @property
    def _poll_s(self) -> float:
        return min(self.duration_s / 5, 1.0)

    async def _create(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """The lease's table and row, once (brokers starting together on a new database
        take turns: CREATE TABLE IF NOT EXISTS alone races)."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            await conn.execute(TABLE)
            await conn.execute(
                "INSERT INTO icx_broker_lease VALUES (1, '', 0, '-infinity') "
                "ON CONFLICT (id) DO NOTHING"
            )

    async def _take(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int | None:
        """The new epoch if the lease had lapsed and is this broker's now."""
        self._renewed = time.monotonic()
        row = await (
            await conn.execute(
                "UPDATE icx_broker_lease SET holder = %s, epoch = epoch + 1,"
                " expires_at = now() + make_interval(secs => %s)"
                " WHERE id = 1 AND expires_at <= now() RETURNING epoch",
                (self.holder, self.duration_s),
            )
        ).fetchone()
        if row is None:
            return None
        self.epoch = int(str(row[0]))
        log.info("holds the lease (epoch %d, %g s)", self.epoch, self.duration_s)
        return self.epoch

    def start_keeping(self) -> None:
        """Renew from now on, every third of the duration, on a thread of its own (a
        busy event loop, a long start-up or matching round, must not cost the lease);
        `kept` raises LeaseLost once another broker took the lease or no renewal
        succeeded within the duration (the database unreachable)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._lost = future
        self._stop.clear()

        def lost(exc: LeaseLost) -> None:
            if not future.done():
                future.set_exception(exc)

        def keep() -> None:
            exc = self._keep()
            if exc is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                    loop.call_soon_threadsafe(lost, exc)

        self._thread = threading.Thread(target=keep, name="icx-lease", daemon=True)
        self._thread.start()

    async def kept(self) -> None:
        """Wait while the lease is kept; LeaseLost when it is lost. Also a watchdog: a
        renewal stuck on a database that stopped answering (no reply, no reset) cannot
        hold the thread's own deadline check, so the deadline is watched here too."""
        lost = self._lost
        assert lost is not None, "start_keeping first"
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(lost), self.duration_s / 3)
                return
            except TimeoutError:
                if time.monotonic() - self._renewed >= self.duration_s:
                    self._stop.set()
                    lost.cancel()  # what the stuck thread reports later goes nowhere
                    raise LeaseLost(
                        f"the lease could not be renewed for {self.duration_s:g} s"
                        " (the database does not answer)"
                    ) from None

    def answering(self) -> bool:
        """Whether the database answers this broker: the last renewal did not fail, and
        no more than two renewals' time (two thirds of the lease) passed since one
        succeeded (a renewal waiting on a database that stopped answering fails only
        when the lease ends)."""
        return not self._failing and time.monotonic() - self._renewed < 2 * self.duration_s / 3

    def stop_keeping(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.duration_s)
            self._thread = None

    def _keep(self) -> LeaseLost | None:
        """Renew until lost (the reason) or stopped (None)."""
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        step_s = self.duration_s / 3
        try:
            while True:
                ours: bool | None  # None: unknown, the database did not answer
                asked = time.monotonic()  # the database's expiry counts from no earlier
                try:
                    if conn is None or conn.closed or conn.broken:
                        # The stores' liveness settings, tightened to a third of the lease.
                        conn = psycopg.connect(
                            connection_info(self.url),
                            autocommit=True,
                            connect_timeout=max(1, int(step_s)),
                            tcp_user_timeout=max(1000, int(step_s * 1000)),
                        )
                        conn.execute(f"SET statement_timeout = {max(1, int(step_s * 1000))}")
                    ours = self._renew(conn)
                except (psycopg.Error, OSError) as exc:
                    log.warning("cannot renew the lease: %s", exc)
                    if conn is not None:
                        conn.close()
                    conn, ours = None, None
                self._failing = ours is None
                if ours is False:
                    return LeaseLost(f"another broker took the lease (epoch {self.epoch} ended)")
                if ours:
                    self._renewed = asked
                elif time.monotonic() - self._renewed >= self.duration_s:
                    return LeaseLost(f"the lease could not be renewed for {self.duration_s:g} s")
                if self._stop.wait(step_s):
                    return None
        finally:
            if conn is not None:
                conn.close()

    def _renew(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        """True: renewed; False: not ours any more."""
        cur = conn.execute(
            "UPDATE icx_broker_lease SET expires_at = now() + make_interval(secs => %s)"
            " WHERE id = 1 AND holder = %s AND epoch = %s AND expires_at > now()",
            (self.duration_s, self.holder, self.epoch),
        )
        return cur.rowcount == 1

    async def release(self) -> None:
        """Stop renewing and let a standby take over at once (a clean stop)."""
        self.stop_keeping()
        async with await self._connect() as conn:
            await conn.execute(
                "UPDATE icx_broker_lease SET expires_at = '-infinity'"
                " WHERE id = 1 AND holder = %s AND epoch = %s",
                (self.holder, self.epoch),
            )

    def check(self, conn: psycopg.Connection[Any]) -> None:
        """The fence a store runs first in each write transaction (on its own, blocking
        connection): LeaseLost when this broker no longer holds the lease."""
        if conn.execute(FENCE, (self.holder, self.epoch)).fetchone() is None:
            raise LeaseLost(f"this broker's lease (epoch {self.epoch}) is no longer held")

    def fence(self) -> tuple[str, tuple[str, int]]:
        """The statement and parameters a store runs first in each write transaction; a
        transaction where it returns no row must not commit."""
        return FENCE, (self.holder, self.epoch)


def active_holder(url: str) -> str | None:
    """The broker that holds a live lease on the database at `url`, if any (a migration
    must not run under a serving broker)."""
    with connect_url(url) as conn:
        exists = conn.execute("SELECT to_regclass('icx_broker_lease')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute(
            "SELECT holder FROM icx_broker_lease WHERE id = 1 AND expires_at > now()"
        ).fetchone()
        return None if row is None else str(row[0])
