"""A real PostgreSQL for the tests: one cluster per test session (cli/postgres_local.py:
`initdb` and `pg_ctl` on a free port on 127.0.0.1 and a private socket folder, trust on
those only), installed from Debian when absent, stopped and removed at the session's end.

`pg_cluster` is the cluster; `pg_url` a fresh, empty database for one test: a schema of
its own in the database `icx` (the URL sets its search_path), which takes milliseconds
where a CREATE DATABASE takes a quarter of a second. Both are registered in
tests/conftest.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from cli.postgres_local import PostgresCluster, start_cluster

DATABASE = "icx"
_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    started = time.monotonic()
    cluster = start_cluster()
    cluster.create_database(DATABASE)
    setup = ", ".join(f"{k} {v:.2f} s" for k, v in cluster.setup_s.items())
    print(f"\nPostgreSQL for the tests: {time.monotonic() - started:.2f} s ({setup})")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    name = f"t{next(_names)}"
    yield pg_cluster.create_schema(name, DATABASE)
    pg_cluster.sql(f"DROP SCHEMA {name} CASCADE", DATABASE)
