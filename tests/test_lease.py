"""The active broker's lease in a real PostgreSQL (tests/pg_cluster.py): one holder at a
time, a standby takes over once the holder stops renewing, and the old holder is fenced
out of every write transaction."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.lease import Lease, LeaseLost
from broker.pg_store import describe_url
from cli.federation import LocalFederation
from identity import Role
from tests.conftest import FAST_BROKER, run_icx, wait_for, wait_for_async

DURATION_S = 1.0


def _fenced(url: str, lease: Lease) -> bool:
    """Whether a write transaction of `lease`'s holder would be refused."""
    statement, params = lease.fence()
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).fetchone() is None


def _expires_at(url: str) -> dt.datetime:
    """When the lease ends, by the database's clock."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT expires_at FROM icx_broker_lease WHERE id = 1").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _past(url: str, moment: dt.datetime) -> bool:
    """Whether the database's clock is past `moment`."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now() > %s", (moment,)).fetchone()
    return bool(row and row[0])


def test_one_holder_at_a_time_and_a_standby_takes_over_when_it_stops_renewing(pg_url: str) -> None:
    async def scenario() -> None:
        active = Lease(pg_url, "east", duration_s=DURATION_S)
        standby = Lease(pg_url, "east", duration_s=DURATION_S)
        assert await active.acquire() == 1
        first_end = _expires_at(pg_url)
        active.start_keeping()
        waited: list[str] = []
        taking = asyncio.create_task(standby.acquire(waiting=waited.append))
        # Two durations past the end of the first lease: only renewals kept it the active's.
        await wait_for_async(
            lambda: _past(pg_url, first_end + dt.timedelta(seconds=2 * DURATION_S)),
            10,
            "two lease durations to pass",
        )
        assert not taking.done()
        assert waited == [active.holder]
        assert not _fenced(pg_url, active)

        active.stop_keeping()  # the active broker dies: nobody renews
        stopped = time.monotonic()
        assert await asyncio.wait_for(taking, 5 * DURATION_S) == 2
        assert time.monotonic() - stopped <= DURATION_S + 1.0
        assert _fenced(pg_url, active)
        assert not _fenced(pg_url, standby)

        # The old holder comes back (it was only paused): its first renewal finds the
        # lease taken and it stops.
        active.start_keeping()
        with pytest.raises(LeaseLost, match="another broker took the lease"):
            await asyncio.wait_for(active.kept(), 3 * DURATION_S)

    asyncio.run(scenario())


def test_a_released_lease_is_taken_at_once(pg_url: str) -> None:
    async def scenario() -> None:
        first = Lease(pg_url, "east", duration_s=30.0)
        second = Lease(pg_url, "east", duration_s=30.0)
        await first.acquire()
        waited: list[str] = []
        taking = asyncio.create_task(second.acquire(waiting=waited.append))
        await wait_for_async(lambda: waited, 5, "the second broker to stand by")
        assert not taking.done()
        await first.release()
        assert await asyncio.wait_for(taking, 3.0) == 2  # a standby looks every second
        assert _fenced(pg_url, first)

    asyncio.run(scenario())


def test_an_expired_lease_fences_its_holder_even_before_anyone_takes_it(pg_url: str) -> None:
    async def scenario() -> None:
        lease = Lease(pg_url, "east", duration_s=DURATION_S)
        await lease.acquire()
        assert not _fenced(pg_url, lease)
        # Not renewed: fenced once the database's clock passes its end.
        await wait_for_async(lambda: _fenced(pg_url, lease), 5, "the lease to lapse")
        assert _past(pg_url, _expires_at(pg_url))

    asyncio.run(scenario())


def test_a_lease_that_cannot_be_renewed_is_given_up_within_its_duration(pg_url: str) -> None:
    async def scenario() -> None:
        lease = Lease(pg_url, "east", duration_s=DURATION_S)
        await lease.acquire()
        lease.url = "postgresql://postgres@127.0.0.1:1/nowhere"  # the database unreachable
        started = time.monotonic()
        lease.start_keeping()
        with pytest.raises(LeaseLost, match="could not be renewed"):
            await asyncio.wait_for(lease.kept(), 5 * DURATION_S)
        assert time.monotonic() - started <= DURATION_S + 0.7

    asyncio.run(scenario())


def test_a_migration_is_refused_while_a_broker_holds_the_lease(pg_url: str) -> None:
    async def scenario() -> None:
        lease = Lease(pg_url, "east@127.0.0.1:7700", duration_s=30.0)
        await lease.acquire()
        refused = run_icx("broker", "migrate", "--store", pg_url)
        assert (refused.returncode, refused.stderr.strip()) == (
            1,
            f"icx: error: broker database {describe_url(pg_url)} is in use by the broker "
            "east@127.0.0.1:7700: stop it (and its standbys) first",
        )
        with psycopg.connect(pg_url) as conn:  # nothing was created
            assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)
        await lease.release()
        done = run_icx("broker", "migrate", "--store", pg_url, "--json")
        assert done.returncode == 0, done.stderr

    asyncio.run(scenario())


class _BlackHole:
    """A TCP relay to PostgreSQL that, once frozen, holds every byte and keeps every
    connection open: a database host that stops answering without resetting anything.
    Once `reset`, it closes every connection and each new one at once (a database that
    restarts), until `restored`."""

    def __init__(self, target_port: int) -> None:
        self.resetting = threading.Event()
        self.frozen = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                if self.resetting.is_set():
                    client.close()
                    continue
                self._sockets.append(client)
                if self.frozen.is_set():
                    continue  # accepted, never answered
                server = socket.create_connection(("127.0.0.1", self._target))
                self._sockets.append(server)
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                self._thawed.wait()  # held while frozen
                b.sendall(data)

    def freeze(self) -> None:
        self._thawed.clear()
        self.frozen.set()

    def reset(self) -> None:
        self.resetting.set()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets = []

    def restore(self) -> None:
        self.resetting.clear()

    def close(self) -> None:
        self.frozen.clear()
        self._thawed.set()
        for s in (self._listener, *self._sockets):
            s.close()


def test_a_database_that_stops_answering_costs_the_lease_within_its_duration(
    pg_url: str,
) -> None:
    port = int(pg_url.split("@127.0.0.1:")[1].split("/")[0])
    hole = _BlackHole(port)
    try:

        async def scenario() -> None:
            lease = Lease(pg_url.replace(f":{port}/", f":{hole.port}/"), "east", duration_s=1.5)
            await lease.acquire()
            first_end = _expires_at(pg_url)
            lease.start_keeping()
            await wait_for_async(lambda: _expires_at(pg_url) > first_end, 5, "a renewal")
            hole.freeze()
            frozen = time.monotonic()
            with pytest.raises(LeaseLost, match="could not be renewed"):
                await asyncio.wait_for(lease.kept(), 10)
            assert time.monotonic() - frozen <= 1.5 + 1.0
            lease.stop_keeping()

        asyncio.run(scenario())
    finally:
        hole.close()


def test_brokers_starting_together_on_a_new_database_both_start(pg_url: str) -> None:
    async def scenario() -> None:
        leases = [Lease(pg_url, f"b{i}", duration_s=30.0) for i in range(4)]
        tasks = [asyncio.create_task(lease.acquire()) for lease in leases]
        done, pending = await asyncio.wait(tasks, timeout=3.0)
        assert [t.result() for t in done] == [1]  # one holds it; the others stand by
        assert len(pending) == 3
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    asyncio.run(scenario())


def test_a_broker_says_not_serving_while_its_database_is_away_and_serving_once_back(
    pg_url: str, tmp_path: Path
) -> None:
    """The database restarts (every connection reset, new ones refused) for less than
    the lease: the broker's health says NOT_SERVING meanwhile and SERVING after, and it
    keeps the lease (it does not stop)."""
    port = int(pg_url.split("@127.0.0.1:")[1].split("/")[0])
    hole = _BlackHole(port)
    url = pg_url.replace(f":{port}/", f":{hole.port}/")
    args = (*FAST_BROKER, "--failover-s", "12")
    try:
        with (
            LocalFederation(root=tmp_path / "fed", broker_args=args, store=url) as fed,
            fed.channel(Role.COORDINATOR) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            hole.reset()
            wait_for(
                lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
                10,
                "NOT_SERVING while the database is away",
            )
            hole.restore()
            wait_for(
                lambda: status() == health_pb2.HealthCheckResponse.SERVING,
                10,
                "SERVING once the database answers",
            )
            assert fed.broker is not None and fed.broker.alive()
            log = fed.broker.log_path.read_text()
            assert "the database does not answer: NOT_SERVING" in log
            assert "the database answers again: serving" in log
            assert "this broker stops" not in log
    finally:
        hole.close()
