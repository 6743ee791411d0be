"""The PostgreSQL stores (jobs and ledger) when the database misbehaves, on the tests' real
server: both keep working after their sessions are ended from the server side; a COMMIT
whose reply was lost (a relay that cuts the connection there) is neither reported as
failed nor run twice; once a broker's lease lapsed, its fenced writes are refused and
nothing is stored; every connection carries the settings that notice a silent server."""

from __future__ import annotations

import asyncio
import dataclasses
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Literal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from broker.lease import Lease, LeaseLost
from broker.pg_ledger_store import PostgresLedgerStore
from broker.pg_store import LIVENESS, PostgresStore, connect_url, connection_info
from cli.postgres_local import PostgresCluster
from core.national import PolicyVersion
from ledger import merkle
from tests.conftest import wait_for_async
from tests.store.contract import event, job

APP = "icx-test-failures"
POLICY = PolicyVersion(
    version=1, policy_json="{}", set_by="coordinator", set_at_ms=1_000, comment="first"
)


def _leaves(names: str) -> list[tuple[str | None, str, bytes]]:
    return [(f"c/{n}", "usage", f"leaf {n}".encode()) for n in names]


def _sessions(cluster: PostgresCluster) -> int:
    """How many sessions this module's stores have open."""
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
        ).fetchone()
    return int(row[0]) if row else 0


def _end_sessions(cluster: PostgresCluster) -> int:
    """End every session of this module's stores from a superuser session, as an
    operator's pg_terminate_backend or a server restart does; how many there were."""
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
            " FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_both_stores_keep_working_after_the_server_ended_their_sessions(
    pg_cluster: PostgresCluster, pg_url: str
) -> None:
    url = f"{pg_url}&application_name={APP}"

    async def main() -> None:
        store, ledger = PostgresStore(url), PostgresLedgerStore(url)
        try:
            j1, j2, j3 = job("j-1"), job("j-2"), job("j-3")
            await store.insert_job(j1, event(j1, 1))
            ledger.append(_leaves("a"))
            # the writer, a pooled reader and the ledger's (the pool opens its reader in
            # the background)
            await wait_for_async(
                lambda: _sessions(pg_cluster) >= 3, 10, "the stores' three sessions"
            )
            assert _end_sessions(pg_cluster) >= 3
            # reads first
            assert [s.job.job_id for s in store.load().jobs] == ["j-1"]
            found = ledger.find("c/a")
            assert found is not None and found.index == 0
            await store.insert_job(j2, event(j2, 1))
            assert ledger.append(_leaves("b")) == 1
            ledger.add_checkpoint(2, "note at 2")
            await wait_for_async(
                lambda: _sessions(pg_cluster) >= 3, 10, "the stores' three sessions"
            )
            assert _end_sessions(pg_cluster) >= 3
            # writes first
            await store.insert_job(j3, event(j3, 1))
            assert ledger.append(_leaves("c")) == 2
            ledger.add_checkpoint(3, "note at 3")
            assert sorted(s.job.job_id for s in store.load().jobs) == ["j-1", "j-2", "j-3"]
            assert [e.seq for e in store.events_after(j3.job_id, 0)] == [1]
            assert [e.record_id for e in ledger.entries()] == ["c/a", "c/b", "c/c"]
            assert [size for size, _, _ in ledger.checkpoints()] == [2, 3]
            hashes = [merkle.hash_leaf(leaf) for _, _, leaf in _leaves("abc")]
            assert ledger.root() == ledger.root_at(3) == merkle.root(hashes)
        finally:
            store.close()
            ledger.close()

    asyncio.run(main())


class CuttingRelay:
    """A TCP relay to the tests' PostgreSQL that cuts a connection at its next COMMIT, once
    armed: `after` the server committed and answered, so the answer never reaches the
    store (a reply lost), or `before` passing COMMIT on (the server aborts). A real
    connection cut at a moment no server can be asked to pick."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # to see `close`
        self.port: int = self._listener.getsockname()[1]
        self._armed: Literal["before", "after"] | None = None
        self.cuts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, pg_url: str) -> str:
        """`pg_url` through this relay (in clear text, so COMMIT can be seen)."""
        return pg_url.replace(f":{self._target}/", f":{self.port}/") + "&sslmode=disable"

    def cut_at_next_commit(self, when: Literal["before", "after"]) -> None:
        with self._lock:
            self._armed = when

    def close(self) -> None:
        self._stop.set()
        self._accepting.join()
        self._listener.close()
        for t in self._threads:
            t.join()

    def _take(self) -> Literal["before", "after"] | None:
        with self._lock:
            when, self._armed = self._armed, None
            if when is not None:
                self.cuts += 1
            return when

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            t = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self._target), timeout=10)
        except OSError:
            client.close()  # the store sees its connection refused, as from the server
            return
        other = {client: server, server: client}
        with client, server, selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(server, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client and b"COMMIT\x00" in data:
                        when = self._take()
                        if when == "after":
                            server.sendall(data)
                            server.recv(65536)  # the server's answer: it has committed
                        if when is not None:
                            return  # both ends closed: the store never hears
                    other[source].sendall(data)


@pytest.fixture
def relay(pg_cluster: PostgresCluster) -> Iterator[CuttingRelay]:
    r = CuttingRelay(pg_cluster.port)
    try:
        yield r
    finally:
        r.close()


def test_a_commit_whose_reply_was_lost_is_neither_failed_nor_run_twice(
    relay: CuttingRelay, pg_url: str
) -> None:
    async def main() -> None:
        store = PostgresStore(relay.url(pg_url))
        try:
            j1, j2 = job("j-1"), job("j-2")
            second = dataclasses.replace(POLICY, version=2, comment="second")
            relay.cut_at_next_commit("after")  # committed, the reply lost
            await store.insert_job(j1, event(j1, 1), request_id="r-1")  # no error
            relay.cut_at_next_commit("after")
            await store.put_policy_change(POLICY)
            relay.cut_at_next_commit("before")  # not committed: run again
            await store.insert_job(j2, event(j2, 1), request_id="r-2")
            relay.cut_at_next_commit("before")
            await store.put_policy_change(second)
            assert relay.cuts == 4
        finally:
            store.close()
        store = PostgresStore(pg_url)  # straight to the server
        try:
            snap = store.load()
            assert sorted((s.job.job_id, s.request_id) for s in snap.jobs) == [
                ("j-1", "r-1"),
                ("j-2", "r-2"),
            ]
            assert snap.event_seq == {j1.job_id: 1, j2.job_id: 1}
            assert [len(store.events_after(j.job_id, 0)) for j in (j1, j2)] == [1, 1]
            assert list(snap.policy_changes) == [POLICY, second]
        finally:
            store.close()

    asyncio.run(main())


def test_a_ledger_commit_whose_reply_was_lost_is_neither_failed_nor_run_twice(
    relay: CuttingRelay, pg_url: str
) -> None:
    ledger = PostgresLedgerStore(relay.url(pg_url))
    try:
        relay.cut_at_next_commit("after")
        assert ledger.append(_leaves("ab")) == 0
        relay.cut_at_next_commit("before")
        assert ledger.append(_leaves("c")) == 2
        relay.cut_at_next_commit("after")
        ledger.add_statement("tenant/lab", "2026-11", b"signed")
        relay.cut_at_next_commit("before")
        ledger.add_conflict("c/a", b"other", "already logged")
        assert ledger.append(_leaves("d")) == 3
        assert relay.cuts == 4
    finally:
        ledger.close()
    with PostgresLedgerStore(pg_url) as again:
        assert [e.record_id for e in again.entries()] == ["c/a", "c/b", "c/c", "c/d"]
        hashes = [merkle.hash_leaf(leaf) for _, _, leaf in _leaves("abcd")]
        assert again.root() == merkle.root(hashes)
        assert again.statements() == [("tenant/lab", "2026-11", b"signed")]
        assert again.conflicts() == [("c/a", b"other", "already logged")]


def test_writes_are_refused_and_nothing_stored_once_the_lease_lapsed(pg_url: str) -> None:
    async def main() -> None:
        # Long enough for the stores' set-up and the writes it must let through on a busy
        # machine; the test then ends it in the database (the lease's end is its row's).
        lease = Lease(pg_url, "broker-a", duration_s=30.0)
        await lease.acquire()  # never kept
        store = PostgresStore(pg_url, fence=lease.check, exclusive=False)
        ledger = PostgresLedgerStore(pg_url, fence=lease.check)
        try:
            j1, j2 = job("j-1"), job("j-2")
            await store.insert_job(j1, event(j1, 1))  # held: the fence lets it through
            ledger.append(_leaves("a"))
            root = ledger.root()

            def lapsed(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
                row = conn.execute("SELECT expires_at <= now() FROM icx_broker_lease").fetchone()
                return bool(row and row[0])

            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("UPDATE icx_broker_lease SET expires_at = now() + interval '0.5 s'")
                await wait_for_async(lambda: lapsed(conn), 5, "the lease to lapse")
            refused = f"this broker's lease \\(epoch {lease.epoch}\\) is no longer held"
            with pytest.raises(LeaseLost, match=refused):
                await store.insert_job(j2, event(j2, 1))
            with pytest.raises(LeaseLost, match=refused):
                ledger.append(_leaves("b"))
            with pytest.raises(LeaseLost, match=refused):
                ledger.add_checkpoint(1, "note at 1")
            assert [s.job.job_id for s in store.load().jobs] == ["j-1"]
            assert (ledger.size, ledger.root()) == (1, root)
            assert [e.record_id for e in ledger.entries()] == ["c/a"]
            assert ledger.checkpoints() == []
        finally:
            store.close()
            ledger.close()

    asyncio.run(main())


def test_every_connection_notices_a_silent_server_in_seconds(pg_url: str) -> None:
    options = conninfo_to_dict(connection_info(f"{pg_url}&keepalives_idle=9"))
    assert {k: options[k] for k in LIVENESS} == {**LIVENESS, "keepalives_idle": "9"}
    assert options["options"] == conninfo_to_dict(pg_url)["options"]  # the URL's own kept
    with connect_url(pg_url) as conn:
        given = conn.info.get_parameters()
        assert {k: given.get(k) for k in LIVENESS} == LIVENESS
