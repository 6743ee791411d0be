"""A PostgreSQL cluster of its own on one machine, for the tests and the benchmarks: on a
private port and socket folder, started and stopped here.

Debian's `postgresql` is installed when absent (`cli.debian.ensure_debian`); its programs
live under /usr/lib/postgresql/<version>/bin. The server refuses to run as root, so as
root the cluster's folder belongs to the `postgres` user (which the package creates) and
`initdb` and `pg_ctl` run as that user. The cluster listens on 127.0.0.1 and on a socket
in its own folder, with trust authentication on those two only, so nothing outside the
machine can reach it and the machine's own cluster (if any) is never touched. Each caller
gets a database of its own (`create_database`).

    cluster = start_cluster()
    url = cluster.create_database("t1")     # postgresql://postgres@127.0.0.1:PORT/t1
    ...
    cluster.stop()                          # server stopped, folder removed
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cli.debian import SetupError, ensure_debian
from core.ports import free_port

SERVER_USER = "postgres"
SUPERUSER = "postgres"
# The one role that must give its password (a test creates it to see credentials refused).
PASSWORD_ROLE = "icx_password"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# For tests: nothing here must survive a power loss, only a killed client, so the server
# skips fsync. A benchmark of durable commits passes durable=True.
_FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(slots=True)
class PostgresCluster:
    """A running server: `port` on 127.0.0.1, `socket_dir` its socket's folder."""

    root: Path
    bin_dir: Path
    port: int
    user: str | None
    setup_s: dict[str, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database `name` (lower-case letters, digits, _); its URL."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}, got {name!r}")
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def create_schema(self, name: str, database: str = "postgres") -> str:
        """A new, empty schema `name` in `database`; the URL of a database session that
        sees only it (its search_path): as good as a new database, in a few milliseconds."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"schema name must match {_DATABASE_NAME.pattern}, got {name!r}")
        self.sql(f"CREATE SCHEMA {name}", database)
        return f"{self.url(database)}?options=-csearch_path%3D{name}"

    def drop_database(self, name: str) -> None:
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}, got {name!r}")
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE DATABASE cannot run in one)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement.encode())

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and remove its folder."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            done = _run(
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                 "-w", "-t", str(int(STOP_TIMEOUT_S))],
                self.user, check=False,
            )  # fmt: skip
            if done.returncode != 0 and pid_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def server_bin_dir() -> Path | None:
    """The newest installed server's programs (/usr/lib/postgresql/<version>/bin)."""
    found = [
        d / "bin"
        for d in Path("/usr/lib/postgresql").glob("*")
        if d.name.isdigit() and (d / "bin" / "postgres").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def start_cluster(
    root: Path | None = None, *, durable: bool = False, settings: Mapping[str, str] = {}
) -> PostgresCluster:
    """Install the server when absent, `initdb` a cluster in `root` (a new folder under
    the system's temporary folder by default), start it on a free port and wait until it
    answers. `durable`: fsync every commit, as a production server does (the tests do
    not need it). Raises SetupError saying what failed."""
    started = time.monotonic()
    bin_dir = server_bin_dir()
    if bin_dir is None:
        ensure_debian({"pg_ctlcluster": "postgresql"})
        bin_dir = server_bin_dir()
        if bin_dir is None:
            raise SetupError("installed postgresql but found no server in /usr/lib/postgresql")
    installed = time.monotonic()
    user = SERVER_USER if os.geteuid() == 0 else None
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="icx-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "socket").mkdir(exist_ok=True)
    if user is not None:
        _give_to(root, user)
    cluster = PostgresCluster(root=root, bin_dir=bin_dir, port=0, user=user)
    try:
        _run(
            [str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            user,
        )  # fmt: skip
        initialised = time.monotonic()
        # Only the private socket and loopback, both trusted, but for PASSWORD_ROLE (for
        # tests of refused credentials); nothing else is accepted.
        (cluster.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        options = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(cluster.socket_dir),
            "max_connections": "200",
            "shared_buffers": "64MB",
            **({} if durable else _FAST),
            **settings,
        }
        cluster.port = _start(cluster, options)
    except BaseException as exc:
        cluster.stop()
        if isinstance(exc, SetupError):
            raise
        raise SetupError(f"PostgreSQL under {root} did not start: {exc}") from exc
    done = time.monotonic()
    cluster.setup_s = {
        "install": installed - started,
        "initdb": initialised - installed,
        "start": done - initialised,
    }
    return cluster


def _start(cluster: PostgresCluster, options: Mapping[str, str]) -> int:
    """Start on a free port; another process can take the port between the pick and the
    bind, so a start that fails on its port is tried again on another."""
    log = cluster.root / "server.log"
    for _ in range(3):
        port = free_port()
        conf = "\n".join(f"{k} = '{v}'" for k, v in {**options, "port": str(port)}.items())
        (cluster.data_dir / "postgresql.auto.conf").write_text(conf + "\n")
        done = _run(
            [str(cluster.bin_dir / "pg_ctl"), "start", "-D", str(cluster.data_dir),
             "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S)), "-s"],
            cluster.user, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return port
        tail = log.read_text(errors="replace") if log.exists() else ""
        if "could not bind" not in tail and "Address already in use" not in tail:
            lines = (tail or done.stderr or done.stdout).strip().splitlines()[-5:]
            raise SetupError(f"pg_ctl start failed ({done.returncode}): {' / '.join(lines)}")
    raise SetupError("PostgreSQL found no free port on 127.0.0.1 in 3 tries")


def _give_to(root: Path, user: str) -> None:
    """`root` and its contents to `user`, and every folder above it passable, so that the
    server (not root) can reach its data."""
    entry = pwd.getpwnam(user)
    for path in (root, *root.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in root.parents:
        if parent.stat().st_mode & 0o001 == 0:
            raise SetupError(
                f"{parent} is closed to other users: user {user} cannot reach {root}"
                " (give a folder under /tmp)"
            )


def _run(argv: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        user=user,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 10,
        env={"PATH": os.defpath, "LC_ALL": "C"},
        check=False,
    )
    if check and done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{Path(argv[0]).name} failed ({done.returncode}): {' / '.join(lines)}")
    return done
