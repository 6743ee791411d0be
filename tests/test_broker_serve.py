"""`icx broker serve` and `icx broker migrate` as an operator runs them: a taken port is
one clear error and a non-zero exit, never a second broker sharing the port; a database
from before schema versions is refused until migrated, then served with its jobs."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.store import SCHEMA_VERSION
from cli.federation import LocalFederation
from identity import Role

FIXTURE = Path(__file__).parent / "fixtures" / "broker-schema0.db"


def icx(*args: str, cwd: Path, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
    )


def broker_identity(root: Path) -> str:
    """An admitted broker's member folder in a throw-away federation under `root`."""
    fed = LocalFederation(root=root / "fed-id")
    return str(fed.member("broker", Role.BROKER, region="TF"))


def serve(*args: str, identity: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`icx broker serve ARGS --identity DIR`: a broker that would run for real."""
    return icx("broker", "serve", *args, "--identity", identity, cwd=cwd)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_second_broker_on_a_port_in_use_fails_and_says_so(
    federation: LocalFederation, tmp_path: Path
) -> None:
    listen = federation.address
    identity = str(federation.member("broker", Role.BROKER, region=federation.broker_region))
    out = serve("--listen", listen, "--db", str(tmp_path / "b.db"), identity=identity, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"icx: error: cannot listen on {listen}: the port is in use or the address is not "
        "this host's"
    )
    assert list(tmp_path.glob("b.db*")) == []  # refused before the database was opened


def test_a_metrics_port_in_use_is_one_line_and_exit_1(tmp_path: Path, taken_port: int) -> None:
    out = serve(
        "--listen", "127.0.0.1:0", "--db", str(tmp_path / "b.db"), "--metrics", str(taken_port),
        identity=broker_identity(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"icx: error: cannot serve metrics on 127.0.0.1:{taken_port}: Address already in use"
    )
    assert "Traceback" not in out.stderr


def test_an_old_database_is_refused_then_migrated_and_served(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    shutil.copy(FIXTURE, db)
    refused = serve(
        "--listen", "127.0.0.1:0", "--db", str(db), identity=broker_identity(tmp_path), cwd=tmp_path
    )
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].endswith(
        f"back it up, then run `icx broker migrate --db {db}`"
    )

    migrated = icx("broker", "migrate", "--db", str(db), "--json", cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"db": str(db), "from": 0, "to": SCHEMA_VERSION}
    again = icx("broker", "migrate", "--db", str(db), cwd=tmp_path)
    assert again.stdout.strip() == f"{db}: schema version {SCHEMA_VERSION}, already current"

    fed = LocalFederation(root=tmp_path / "fed")
    fed.root.mkdir()
    shutil.copy(db, fed.db)
    try:
        fed.start_broker(port=0)
        # The coordinator lists every tenant's jobs; a user only its own tenant's.
        for identity, count in (
            (fed.authority.folder / "coordinator", 42),
            (fed.member("default.user", Role.USER, tenant="default"), 40),
            (fed.member("lab-a.user", Role.USER, tenant="lab-a"), 1),
        ):
            jobs = icx(
                "jobs", "--all", "--json", "--broker", fed.address, "--identity", str(identity),
                cwd=tmp_path,
            )  # fmt: skip
            assert jobs.returncode == 0, jobs.stderr
            listed = json.loads(jobs.stdout)
            rows = listed["jobs"] if isinstance(listed, dict) else listed
            assert len(rows) == count, identity
    finally:
        fed.stop()


def test_migrate_names_a_missing_database(tmp_path: Path) -> None:
    out = icx("broker", "migrate", "--db", str(tmp_path / "nope.db"), cwd=tmp_path)
    assert (out.returncode, out.stderr.strip()) == (
        4,
        f"icx: error: no database at {tmp_path / 'nope.db'}",
    )
    assert not (tmp_path / "nope.db").exists()


def test_a_second_broker_on_a_database_in_use_is_refused(
    federation: LocalFederation, tmp_path: Path
) -> None:
    db = federation.db
    before = db.read_bytes()
    identity = str(federation.member("broker", Role.BROKER, region=federation.broker_region))
    out = serve("--listen", "127.0.0.1:0", "--db", str(db), identity=identity, cwd=tmp_path)
    assert out.returncode == 1
    pid = federation.broker.proc.pid if federation.broker else 0
    assert out.stderr.splitlines()[-1] == (
        f"icx: error: broker database {db} is in use by another process (pid {pid})"
    )
    migrating = icx("broker", "migrate", "--db", str(db), cwd=tmp_path)
    assert migrating.returncode == 1 and "is in use by another process" in migrating.stderr
    assert db.read_bytes() == before


def test_files_that_are_not_broker_databases_are_refused(tmp_path: Path) -> None:
    identity = broker_identity(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE entries (idx INTEGER)")
    for path, expected in (
        (text, f"icx: error: {text} is not a broker database (file is not a database)"),
        (other, f"icx: error: {other} is not a broker database (it holds tables entries)"),
    ):
        for args in (
            ("migrate", "--db", str(path)),
            ("serve", "--listen", "127.0.0.1:0", "--db", str(path), "--identity", identity),
        ):
            out = icx("broker", *args, cwd=tmp_path)
            assert (out.returncode, out.stderr.splitlines()[-1]) == (2, expected), args
    with sqlite3.connect(other) as conn:  # unchanged: still only its own table
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["entries"]
    missing = serve(
        "--listen", "127.0.0.1:0", "--db", str(tmp_path / "no" / "b.db"),
        identity=identity, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[-1].startswith(
        f"icx: error: cannot open broker database {tmp_path / 'no' / 'b.db'}"
    )


def test_a_broker_without_membership_refuses_to_start(tmp_path: Path) -> None:
    """Neither --identity nor --insecure: one line naming both, nothing served or made."""
    db = tmp_path / "b.db"
    out = icx("broker", "serve", "--listen", "127.0.0.1:0", "--db", str(db), cwd=tmp_path)
    assert (out.returncode, out.stdout) == (1, "")
    assert "Traceback" not in out.stderr and not db.exists()
    assert out.stderr.splitlines()[-1] == (
        "icx: error: a broker needs its membership: --identity DIR (icx broker init, then the "
        "coordinator's certificate), or --insecure for a loopback-only development broker"
    )
    # A member folder of another role is not a broker's.
    user = LocalFederation(root=tmp_path / "fed-id").member("u", Role.USER, tenant="lab-a")
    other = serve("--listen", "127.0.0.1:0", "--db", str(db), identity=str(user), cwd=tmp_path)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert other.stderr.splitlines()[-1] == (
        f"icx: error: {user} holds the certificate of a user, not a broker"
    )
    # --insecure serves loopback only.
    wide = icx(
        "broker", "serve", "--insecure", "--listen", "0.0.0.0:0", "--db", str(db), cwd=tmp_path
    )
    assert wide.returncode != 0 and "Traceback" not in wide.stderr
    assert wide.stderr.splitlines()[-1] == (
        "icx: error: --insecure serves loopback only (127.0.0.1, ::1, localhost), not '0.0.0.0'"
    )
