"""The PostgreSQL store on a real server (tests/pg_cluster.py): the contract suite, its
schema version, the lock that keeps a second broker off its database, and what a URL
that does not work says."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from broker.pg_store import PostgresStore, describe_url, migrate
from broker.store import SCHEMA_VERSION, SchemaError, Store
from cli.postgres_local import PASSWORD_ROLE, PostgresCluster
from core.errors import FailedPrecondition, InvalidConfig, NotFound, PermissionDenied, Unavailable
from core.ports import free_port
from tests.pg_cluster import DATABASE
from tests.store.contract import StoreContract, event, job


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def make_store(self) -> Store:
        return PostgresStore(self.url)

    def reopen(self, store: Store) -> Store:
        store.close()
        return PostgresStore(self.url)


def test_a_newer_schema_is_refused_by_the_broker_and_by_migrate(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    where = describe_url(pg_url)
    expected = (
        f"broker database {where} has schema version {SCHEMA_VERSION + 1}, newer than this "
        f"broker's {SCHEMA_VERSION}: run the icx release that wrote it, or a newer one"
    )
    with pytest.raises(SchemaError) as info:
        PostgresStore(pg_url)
    assert str(info.value) == expected
    with pytest.raises(SchemaError, match="newer than this broker's"):
        migrate(pg_url)
    with psycopg.connect(pg_url) as conn:  # refusing changed nothing
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (
            SCHEMA_VERSION + 1,
        )


def test_a_second_broker_on_the_database_is_refused_until_the_first_closes(pg_url: str) -> None:
    async def main() -> None:
        first = PostgresStore(pg_url)
        try:
            with pytest.raises(FailedPrecondition, match="is in use by another broker"):
                PostgresStore(pg_url)
            with pytest.raises(FailedPrecondition, match="in use by a broker: stop it first"):
                migrate(pg_url)
            j = job("j-1")
            await first.insert_job(j, event(j, 1))  # the first one goes on
        finally:
            first.close()
        second = PostgresStore(pg_url)
        try:
            assert [s.job.job_id for s in second.load().jobs] == ["j-1"]
        finally:
            second.close()

    asyncio.run(main())


def test_a_closed_store_lets_go_of_its_lock_before_close_returns(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    # No wait: a store opened next (or a migration) must not find the old session's lock.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        taken = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (0x696378,)
        ).fetchone()
    assert taken == (True,)


def test_stores_in_two_schemas_of_one_database_do_not_exclude_each_other(
    pg_cluster: PostgresCluster, pg_url: str
) -> None:
    other_url = pg_cluster.create_schema("other_store", DATABASE)
    first = PostgresStore(pg_url)
    try:
        second = PostgresStore(other_url)  # another store: not refused
        second.close()
        with pytest.raises(FailedPrecondition, match="is in use by another broker"):
            PostgresStore(pg_url)  # the same one: refused
    finally:
        first.close()
        pg_cluster.sql("DROP SCHEMA other_store CASCADE", DATABASE)


def test_migrate_makes_an_empty_database_current_and_then_has_nothing_to_do(
    pg_url: str,
) -> None:
    assert migrate(pg_url) == (0, SCHEMA_VERSION)
    assert migrate(pg_url) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_a_database_of_something_else_is_not_taken_for_a_broker_one(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
    with pytest.raises(InvalidConfig, match="is not a broker database"):
        PostgresStore(pg_url)


def test_urls_that_do_not_work_say_why_without_the_password(
    pg_cluster: PostgresCluster, pg_url: str
) -> None:
    pg_cluster.sql(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
    pg_cluster.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-one'")
    port = pg_cluster.port
    with pytest.raises(PermissionDenied) as refused:
        PostgresStore(f"postgresql://{PASSWORD_ROLE}:wrong-secret@127.0.0.1:{port}/icx")
    assert str(refused.value).startswith(
        f"PostgreSQL at postgresql://127.0.0.1:{port}/icx refused the credentials: "
    )
    with pytest.raises(PermissionDenied) as no_password:  # no PGPASSWORD, no ~/.pgpass line
        PostgresStore(f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{port}/icx?passfile=/nonexistent")
    assert str(no_password.value) == (
        f"PostgreSQL at postgresql://127.0.0.1:{port}/icx asks for a password and none was"
        " given: set PGPASSWORD, or add a ~/.pgpass line for this host, port, database and user"
    )
    closed = free_port()  # a port where nothing listens
    with pytest.raises(Unavailable) as unreachable:
        PostgresStore(f"postgresql://u:wrong-secret@127.0.0.1:{closed}/icx")
    assert str(unreachable.value).startswith(
        f"PostgreSQL at postgresql://127.0.0.1:{closed}/icx is unreachable: "
    )
    with pytest.raises(NotFound, match='database "nowhere" does not exist'):
        PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/nowhere")
    with pytest.raises(InvalidConfig, match="not a PostgreSQL URL"):
        PostgresStore("postgresql://[bad")
    for error in (refused.value, unreachable.value):
        assert "wrong-secret" not in str(error)
