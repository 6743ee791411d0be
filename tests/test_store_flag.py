"""`icx broker serve --store URL` and `icx broker migrate --store URL` on bad input: one
clear line, the CLI's exit codes, no password echoed, nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from broker.store import SCHEMA_VERSION
from core.ports import free_port
from tests.conftest import run_icx


def test_store_and_db_together_are_a_usage_error(tmp_path: Path) -> None:
    done = run_icx("broker", "serve", "--db", str(tmp_path / "b.db"), "--store", "postgresql://x")
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_is_not_a_postgresql_url_is_refused(tmp_path: Path) -> None:
    done = run_icx("broker", "serve", "--insecure", "--store", "mysql://u:pw@h/db")
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "icx: error: --store must be a PostgreSQL URL postgresql://USER@HOST:PORT/DB, got"
        " 'mysql'... (the SQLite store is --db FILE)",
    )


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://icx:hunter2@127.0.0.1:{port}/icx"
    for args in (
        ("broker", "serve", "--insecure", "--listen", "127.0.0.1:0", "--store", url,
         "--state-dir", str(tmp_path)),
        ("broker", "migrate", "--store", url),
    ):  # fmt: skip
        done = run_icx(*args)
        assert done.returncode == 3, done.stderr
        [line] = [x for x in done.stderr.splitlines() if x.startswith("icx: error:")]
        assert line.startswith(
            f"icx: error: PostgreSQL at postgresql://127.0.0.1:{port}/icx is unreachable: "
        )
        assert "hunter2" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no key made for a broker that never started


def test_migrate_a_newer_schema_is_refused_and_leaves_it(pg_url: str) -> None:
    done = run_icx("broker", "migrate", "--store", pg_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["to"] == SCHEMA_VERSION
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    done = run_icx("broker", "migrate", "--store", pg_url)
    assert done.returncode == 1
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this broker's" in done.stderr
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert rows[-1] == (SCHEMA_VERSION + 1,)


def test_a_bad_listen_address_or_failover_is_one_line_and_nothing_is_written(
    pg_url: str, tmp_path: Path
) -> None:
    base = ("broker", "serve", "--insecure", "--store", pg_url, "--state-dir", str(tmp_path))
    failover = "icx: error: --failover-s must be more than 0 and at most 3600, got"
    for extra, message in (
        (
            ("--listen", "127.0.0.1:abc"),
            "icx: error: --listen must be HOST:PORT, got '127.0.0.1:abc'",
        ),
        (("--listen", "localhost"), "icx: error: --listen must be HOST:PORT, got 'localhost'"),
        (("--failover-s", "nan"), f"{failover} nan"),
        (("--failover-s", "0"), f"{failover} 0.0"),
    ):
        done = run_icx(*base, *extra)
        assert (done.returncode, done.stderr.strip()) == (2, message)
    assert list(tmp_path.iterdir()) == []
    with psycopg.connect(pg_url) as conn:  # no lease taken, no schema made
        assert conn.execute("SELECT to_regclass('icx_broker_lease')").fetchone() == (None,)
