"""The broker's two stores side by side in one run (issue 14):

1. durable submits per second through a real broker process (`icx broker serve --db FILE`
   beside `--store postgresql://...`): one client process keeping 1 and then 8 SubmitJob
   calls in flight; every reply counted is a job committed before the reply, and the
   benchmark checks afterwards that the store holds every acknowledged job. Beside each,
   the raw commit rate of the same disk (one job and its event per transaction, one
   connection, no broker): what group commit buys on each store;
2. end-to-end jobs per second: short jobs (`true`) from submit to SUCCEEDED through the
   broker and a few node agents (one process each, the process backend).

PostgreSQL runs in a throw-away cluster started for the run (cli/postgres_local.py) with
`durable=True`: fsync, synchronous_commit and full_page_writes on, as in production, on
the same disk as the SQLite files. Each broker gets a new database. The stores alternate
run by run (`--rounds`), so that a slower minute of the shared machine does not fall on
one store only; the ratio is PostgreSQL / SQLite of the medians.

    .venv/bin/python -m bench.store_bench [--quick] [--rounds N] [--json FILE]

Each broker runs as a member of a throw-away federation (cli.federation.LocalFederation),
so each figure includes mutual TLS. Every child process and the cluster are ended before
the run returns, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench._skeleton_roles import bench_center, trivial_spec
from bench.load_bench import profile_start, profile_top
from bench.skeleton_bench import (
    CpuMeter,
    connected_centers,
    cpu_seconds,
    end_all,
    fmt,
    load_1m,
    machine,
    revision,
    spawn_role,
    sqlite_baseline,
    submit_many,
    user_identity,
    wait_until,
)
from cli.federation import LocalFederation
from cli.postgres_local import PostgresCluster, start_cluster

SQLITE = "sqlite"
POSTGRES = "postgresql"
TERMINAL = "('succeeded', 'failed', 'cancelled')"
GOAL_RATIO = 0.5  # PostgreSQL within 2x of SQLite on durable submits


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    baseline_s: float
    submit_s: float
    windows: tuple[int, ...]
    agents: int
    jobs: int
    e2e_timeout_s: float


QUICK = Plan(baseline_s=1.0, submit_s=3.0, windows=(8,), agents=4, jobs=300, e2e_timeout_s=60)
FULL = Plan(baseline_s=2.0, submit_s=6.0, windows=(1, 8), agents=4, jobs=800, e2e_timeout_s=120)


@dataclass(slots=True, kw_only=True)
class Run:
    """One measured run of one store."""

    store: str
    part: str
    value: float
    detail: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ the stores


class Target:
    """One store under test: how a broker is pointed at it and how to read it back."""

    def __init__(self, kind: str, root: Path, cluster: PostgresCluster | None, n: int) -> None:
        self.kind = kind
        self.root = root
        self.cluster = cluster
        self.url = ""
        if kind == POSTGRES:
            assert cluster is not None
            self.url = cluster.create_database(f"bench_{n}")

    def federation(self) -> LocalFederation:
        return LocalFederation(root=self.root, store=self.url)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == SQLITE:
            db = sqlite3.connect(f"file:{self.root / 'broker.db'}?mode=ro", uri=True)
            try:
                return db.execute(sql).fetchall()
            finally:
                db.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql.encode()).fetchall()

    def server_cpu_s(self) -> float:
        """CPU seconds of the PostgreSQL server's processes (0 for SQLite: in the broker)."""
        if self.cluster is None:
            return 0.0
        return postgres_cpu_s(self.cluster)

    def commits(self) -> int:
        """Transactions committed in this database so far (PostgreSQL only)."""
        if self.kind == SQLITE:
            return 0
        row = self.query(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(row[0][0])


def postgres_cpu_s(cluster: PostgresCluster) -> float:
    """utime + stime of the postmaster and its children (the backends, the WAL writer)."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            pid = int(stat.parent.name)
            if pid == postmaster or ppid == postmaster:
                total += cpu_seconds(pid)
    return total


def postgres_baseline(cluster: PostgresCluster, seconds: float) -> float:
    """One commit per submit on PostgreSQL: a job row and its event per transaction, one
    connection, on the benchmark's durable cluster. Commits per second."""
    url = cluster.create_database("bench_baseline")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, tenant TEXT, command TEXT,"
                " state TEXT, submitted_at_ms BIGINT)"
            )
            conn.execute(
                "CREATE TABLE events (job_id TEXT, seq INT, state TEXT, message TEXT,"
                " PRIMARY KEY (job_id, seq))"
            )
            command = json.dumps(list(trivial_spec().command))
            n = 0
            started = time.perf_counter()
            while time.perf_counter() < started + seconds:
                n += 1
                job_id = f"j-{n:012d}"
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO jobs VALUES (%s, 'default', %s, 'queued', 0)",
                        (job_id, command),
                    )
                    conn.execute(
                        "INSERT INTO events VALUES (%s, 1, 'queued', 'accepted')", (job_id,)
                    )
            return n / (time.perf_counter() - started)
    finally:
        cluster.drop_database("bench_baseline")


@contextlib.contextmanager
def broker(target: Target) -> Iterator[LocalFederation]:
    fed = target.federation()
    target.root.mkdir(parents=True, exist_ok=True)
    try:
        fed.start_broker(port=0, timeout_s=30)
        yield fed
    finally:
        fed.stop()


# ------------------------------------------------------------------ 1. submits


def durable_submits(target: Target, plan: Plan, window: int, profile: bool = False) -> Run:
    """One client process keeping `window` SubmitJob calls in flight for plan.submit_s;
    `profile`: record the broker with py-spy meanwhile and print where its time went."""
    with broker(target) as fed:
        assert fed.broker is not None
        start_at = time.time() + 3.0  # the client imports, connects and warms up first
        out = target.root / "client.json"
        proc = spawn_role(
            [
                "submit", "--broker", fed.address, "--identity", str(user_identity(fed)),
                "--start-at", repr(start_at), "--seconds", repr(plan.submit_s),
                "--window", str(window), "--out", str(out),
            ],
            target.root / "logs" / "client.log",
        )  # fmt: skip
        try:
            time.sleep(max(0.0, start_at - time.time()))
            load = load_1m()
            meter = CpuMeter([fed.broker.pid])
            server_cpu = target.server_cpu_s()
            commits = target.commits()
            stacks = target.root / "broker.stacks"
            spy = profile_start(fed.broker.pid, plan.submit_s, stacks) if profile else None
            time.sleep(plan.submit_s)
            broker_cpu_s = meter.used_s()
            server_cpu_s = target.server_cpu_s() - server_cpu
            commits = target.commits() - commits
            proc.wait(timeout=60)
            if spy is not None:
                spy.wait(timeout=60)
                print(f"-- broker profile, {target.kind}, x{window}\n{profile_top(stacks, 40)}")
        finally:
            end_all([proc])
        result = json.loads(out.read_text())
        replied = result["accepted"] + result["accepted_after_window"] + result["warmup"]
        stored = int(target.query("SELECT COUNT(*) FROM jobs")[0][0])
    if stored < replied:
        raise AssertionError(f"{target.kind}: {replied} submits acknowledged, {stored} stored")
    accepted = int(result["accepted"])
    detail: dict[str, Any] = {
        "accepted": accepted,
        "acknowledged_total": replied,
        "stored": stored,
        "errors": result["errors"],
        "p50_ms": round(result["p50_ms"] or 0, 2),
        "p99_ms": round(result["p99_ms"] or 0, 2),
        "broker_cpu_us_per_submit": round(1e6 * broker_cpu_s / max(1, accepted)),
        "load_1m": load,
    }
    if target.kind == POSTGRES:
        detail["server_cpu_us_per_submit"] = round(1e6 * server_cpu_s / max(1, accepted))
        # Every transaction of the database in the window: the writer's groups, and the
        # few reads (each one a transaction of its own).
        detail["submits_per_commit"] = round(accepted / max(1, commits), 1)
    return Run(
        store=target.kind,
        part=f"submits x{window}",
        value=accepted / plan.submit_s,
        detail=detail,
    )


# ------------------------------------------------------------------ 2. end to end


def end_to_end(target: Target, plan: Plan) -> Run:
    """plan.jobs trivial jobs through plan.agents agents, until every one is final. The
    rate is jobs / (last final commit - first submit), on the broker's clock, from its
    store."""
    with broker(target) as fed:
        assert fed.broker is not None
        for i in range(plan.agents):
            fed.start_agent(bench_center(i))
        wait_until(
            lambda: connected_centers(fed) >= plan.agents,
            timeout_s=90,
            what=f"{plan.agents} centers connected",
            every_s=0.3,
        )
        load = load_1m()
        meter = CpuMeter([fed.broker.pid])
        server_cpu = target.server_cpu_s()
        asyncio.run(submit_many(fed, plan.jobs, window=8))

        def final() -> int:
            return int(target.query(f"SELECT COUNT(*) FROM jobs WHERE state IN {TERMINAL}")[0][0])

        timed_out = False
        try:
            wait_until(lambda: final() >= plan.jobs, timeout_s=plan.e2e_timeout_s, what="final")
        except TimeoutError:
            timed_out = True
        broker_cpu_s = meter.used_s()
        server_cpu_s = target.server_cpu_s() - server_cpu
        first_ms, last_ms = target.query(
            f"SELECT MIN(submitted_at_ms), MAX(updated_at_ms) FROM jobs WHERE state IN {TERMINAL}"
        )[0]
        by_state = dict(target.query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    finished = sum(n for s, n in by_state.items() if s in ("succeeded", "failed", "cancelled"))
    span_s = max(0.001, (last_ms - first_ms) / 1000) if finished else float("nan")
    detail = {
        "jobs": plan.jobs,
        "by_state": by_state,
        "span_s": round(span_s, 2),
        "timed_out": timed_out,
        "broker_cpu_ms_per_job": round(1000 * broker_cpu_s / plan.jobs, 2),
        "load_1m": load,
    }
    if target.kind == POSTGRES:
        detail["server_cpu_ms_per_job"] = round(1000 * server_cpu_s / plan.jobs, 2)
    return Run(store=target.kind, part="end to end", value=finished / span_s, detail=detail)


# ------------------------------------------------------------------ report


def median_of(runs: Sequence[Run], store: str, part: str) -> float:
    return statistics.median(r.value for r in runs if r.store == store and r.part == part)


def markdown(runs: Sequence[Run], baselines: dict[str, list[float]], plan: Plan) -> str:
    lines = [
        "| figure | SQLite | PostgreSQL | PostgreSQL / SQLite | goal (issue 14) |",
        "|---|---|---|---|---|",
    ]
    for part in dict.fromkeys(r.part for r in runs):
        s, p = median_of(runs, SQLITE, part), median_of(runs, POSTGRES, part)
        if part.startswith("submits"):
            what = f"durable submits, 1 client x {part.split('x')[1]} in flight"
            unit, goal = "/s", ">= 0.50 x" if part == "submits x8" else ""
            if goal:
                goal += " (met)" if p / s >= GOAL_RATIO else " (**missed**)"
        else:
            what = f"end to end (`true`), {plan.agents} agents, {plan.jobs} jobs"
            unit, goal = " jobs/s", ""
        each = {
            k: ", ".join(fmt(r.value) for r in runs if r.store == k and r.part == part)
            for k in (SQLITE, POSTGRES)
        }
        lines.append(
            f"| {what} | {fmt(s)}{unit} ({each[SQLITE]}) | {fmt(p)}{unit} ({each[POSTGRES]})"
            f" | {p / s:.2f} x | {goal} |"
        )
    if baselines[SQLITE]:
        s = statistics.median(baselines[SQLITE])
        p = statistics.median(baselines[POSTGRES])
        lines.append(
            f"| baseline: one commit per submit, one connection, no broker | {fmt(s)}/s"
            f" | {fmt(p)}/s | {p / s:.2f} x | |"
        )
    return "\n".join(lines)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each store (default 2)")
    parser.add_argument("--only", choices=("submit", "e2e"), action="append")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the broker during each submit run"
    )
    parser.add_argument("--json", type=Path, help="also write every run here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    parts = set(args.only or ("submit", "e2e"))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    root = Path(tempfile.mkdtemp(prefix="icx-store-bench-"))
    root.chmod(0o711)  # the server runs as its own user and must reach its folder in here
    started = time.monotonic()
    runs: list[Run] = []
    baselines: dict[str, list[float]] = {SQLITE: [], POSTGRES: []}
    # The cluster's folder sits beside the SQLite files: the same disk for both.
    cluster = start_cluster(root / "pg", durable=True)
    n = 0

    def measure(kind: str, how: Callable[[Target], Run]) -> None:
        nonlocal n
        n += 1
        target = Target(kind, root / f"{n:02d}-{kind}", cluster if kind == POSTGRES else None, n)
        run = how(target)
        runs.append(run)
        print(f"{run.part}, {kind}: {fmt(run.value)}/s  {json.dumps(run.detail)}", flush=True)

    try:
        for round_ in range(args.rounds):
            # Alternate which store goes first, round by round.
            order = (SQLITE, POSTGRES) if round_ % 2 == 0 else (POSTGRES, SQLITE)
            if "submit" in parts:
                baselines[SQLITE].append(
                    sqlite_baseline(root / f"baseline-{round_}.db", plan.baseline_s).value
                )
                baselines[POSTGRES].append(postgres_baseline(cluster, plan.baseline_s))
                print(
                    f"baseline, one commit per submit: sqlite {fmt(baselines[SQLITE][-1])}/s,"
                    f" postgresql {fmt(baselines[POSTGRES][-1])}/s",
                    flush=True,
                )
                for window in plan.windows:
                    for kind in order:
                        measure(
                            kind,
                            functools.partial(
                                durable_submits, plan=plan, window=window, profile=args.profile
                            ),
                        )
            if "e2e" in parts:
                for kind in order:
                    measure(kind, functools.partial(end_to_end, plan=plan))
    finally:
        cluster.stop()
        if args.keep:
            print(f"working folder kept: {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    command = "python -m bench.store_bench" + (" --quick" if args.quick else "")
    if args.rounds != 2:
        command += f" --rounds {args.rounds}"
    print(f"\n(ran {time.monotonic() - started:.0f} s)\n")
    print(f"Measured {when} on {machine()}, {revision()}, with `{command}`.\n")
    print(markdown(runs, baselines, plan))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"when": when, "machine": machine(), "revision": revision(), "command": command,
                 "baselines": baselines, "runs": [asdict(r) for r in runs]},
                indent=2,
                default=str,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
