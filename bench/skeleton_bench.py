"""The walking skeleton's benchmarks (issue 3), side by side in one run:

1. durable submits per second through a real broker process, with 1 and 4 concurrent
   client processes, beside one SQLite commit per submit on the same disk (measured
   just before each run: what group commit buys) and beside a unary call that does
   nothing on the same broker (the ceiling of its gRPC server on this machine);
2. end-to-end jobs per second (submit, match, claim, launch `true`, report) through the
   broker and 17 node agents (one process each) and 200 node agents (hosted 50 to a
   process), with the broker's default matcher and with the greedy baseline;
3. the broker's CPU use with 1,000 connected node agents heartbeating (hosted 250 to a
   process), from /proc/PID/stat.

    .venv/bin/python -m bench.skeleton_bench [--quick] [--json FILE]

Each broker runs as a member of a throw-away federation (cli.federation.LocalFederation:
its --identity), and every client and agent is a member too, so each figure includes
mutual TLS. Every child process is ended before the run returns, also on Ctrl-C or SIGTERM. The
figures are printed as they come, then as the markdown table that docs/benchmarks.md
keeps.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._skeleton_roles import bench_center, trivial_spec
from broker import _sqlite_schema
from broker.sqlite_store import connect
from cli.federation import LocalFederation
from client import AsyncBrokerClient
from identity import Role

# What `icx broker serve` runs without --solver.
DEFAULT_SOLVER = "auto"
# The tenant whose user submits every benchmark job.
BENCH_TENANT = "default"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Published figures a user would compare with (see docs/benchmarks.md for the sources).
SLURM_SUBMITS = "Slurm: 'can accept 1,000 job submissions per second' (slurm.schedmd.com)"
SLURM_JOBS = "Slurm: 500 simple batch jobs/s sustained (slurm.schedmd.com/high_throughput.html)"
CONDOR_JOBS = "HTCondor 7.6 schedd, out of the box: >= 55 jobs/s submitted, started, completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How long and how big each part runs."""

    baseline_s: float
    submit_s: float
    window: int
    jobs: int
    e2e_timeout_s: float
    heartbeat_window_s: float
    heartbeat_settle_s: float


QUICK = Plan(
    baseline_s=1.5,
    submit_s=3.0,
    window=32,
    jobs=500,
    e2e_timeout_s=60.0,
    heartbeat_window_s=10.0,
    heartbeat_settle_s=3.0,
)
FULL = Plan(
    baseline_s=3.0,
    submit_s=8.0,
    window=32,
    jobs=2000,
    e2e_timeout_s=150.0,
    heartbeat_window_s=30.0,
    heartbeat_settle_s=5.0,
)


@dataclass(slots=True, kw_only=True)
class Figure:
    """One measured number and what to read it against."""

    part: str
    what: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None
    compare: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU seconds of some processes over a wall-clock window."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._wall = time.monotonic()
        self._cpu = sum(cpu_seconds(p) for p in self.pids)

    def used_s(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids) - self._cpu

    def percent_of_one_core(self) -> float:
        return 100.0 * self.used_s() / (time.monotonic() - self._wall)


def load_1m() -> float:
    """The machine's 1-minute load average: other work on these shared cores shows here."""
    return round(os.getloadavg()[0], 1)


def spawn_role(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bench._skeleton_roles", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def end_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM each, wait, SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def user_identity(fed: LocalFederation) -> Path:
    """The member folder of the user (of BENCH_TENANT) that submits and reads."""
    return fed.member(f"{BENCH_TENANT}.user", Role.USER, tenant=BENCH_TENANT)


@contextlib.contextmanager
def federation(root: Path, *broker_args: str) -> Iterator[LocalFederation]:
    """A broker started with its membership (--identity) in a new federation in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    fed = LocalFederation(root=root, broker_args=broker_args)
    try:
        fed.start_broker(port=0)
        yield fed
    finally:
        fed.stop()


@contextlib.contextmanager
def agent_hosts(fed: LocalFederation, root: Path, agents: int, hosts: int) -> Iterator[list[int]]:
    """`agents` node agents spread over `hosts` processes; yields the host pids once every
    agent is connected."""
    per = -(-agents // hosts)
    procs: list[subprocess.Popen[bytes]] = []
    statuses: list[Path] = []
    for i in range(agents):  # each center's member folder and usage key, in fed.root/centers
        center = bench_center(i)
        fed.center_identity(center.center_id, center.region)
    try:
        for h in range(hosts):
            first, count = h * per, min(per, agents - h * per)
            if count <= 0:
                break
            status = root / f"host-{h}.json"
            statuses.append(status)
            procs.append(
                spawn_role(
                    [
                        "agents", "--broker", fed.address,
                        "--first", str(first), "--count", str(count),
                        "--root", str(root), "--centers", str(fed.root / "centers"),
                        "--status", str(status),
                    ],
                    root / "logs" / f"host-{h}.log",
                )
            )  # fmt: skip
        wait_until(
            lambda: sum(_connected(s) for s in statuses) >= agents,
            timeout_s=60 + agents / 10,
            what=f"{agents} agents connected",
            procs=procs,
        )
        yield [p.pid for p in procs]
    finally:
        end_all(procs)


def _connected(status: Path) -> int:
    try:
        return int(json.loads(status.read_text())["connected"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_until(
    predicate: Any,
    *,
    timeout_s: float,
    what: str,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    every_s: float = 0.1,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a helper exited ({p.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout_s:.0f} s")
        time.sleep(every_s)


def connected_centers(fed: LocalFederation) -> int:
    with fed.client(BENCH_TENANT, timeout_s=30) as client:
        return sum(1 for c in client.centers() if c.connected and c.offer is not None)


# ------------------------------------------------------------ 1. submits


def sqlite_baseline(path: Path, seconds: float) -> Figure:
    """One commit per submit: the rows the broker writes for a submit (a job and its first
    event), each in its own transaction, WAL with synchronous=FULL, on the same disk."""
    conn = connect(path)
    _sqlite_schema.create(conn)
    command = json.dumps(list(trivial_spec().command))
    n = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        n += 1
        job_id = f"j-{n:012d}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO jobs (job_id, tenant, request_id, accelerator, devices, estimated_s,"
            " command, submitted_at_ms, state, updated_at_ms)"
            " VALUES (?, 'default', NULL, 'any', 1, 1, ?, 0, 'queued', 0)",
            (job_id, command),
        )
        conn.execute(
            "INSERT INTO events (job_id, seq, at_ms, state, center_id, message)"
            " VALUES (?, 1, 0, 'queued', NULL, 'accepted')",
            (job_id,),
        )
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - started)
    conn.close()
    return Figure(
        part="submit",
        what="baseline: one SQLite commit per submit (WAL, synchronous=FULL, same disk)",
        value=rate,
        unit="commits/s",
        detail={"commits": n},
    )


def unary_calls(root: Path, plan: Plan, clients: int, window: int, call: str) -> dict[str, Any]:
    """`clients` client processes, each keeping `window` calls in flight, against a fresh
    broker. For SubmitJob every reply counted is a job committed before the reply."""
    with federation(root) as fed:
        assert fed.broker is not None
        start_at = time.time() + 3.0  # the clients import, connect and warm up first
        outs = [root / f"client-{i}.json" for i in range(clients)]
        procs = [
            spawn_role(
                [
                    "submit", "--broker", fed.address, "--identity", str(user_identity(fed)),
                    "--start-at", repr(start_at),
                    "--seconds", repr(plan.submit_s), "--window", str(window),
                    "--out", str(out), "--call", call,
                ],
                root / "logs" / f"client-{i}.log",
            )
            for i, out in enumerate(outs)
        ]  # fmt: skip
        try:
            time.sleep(max(0.0, start_at - time.time()))
            load = load_1m()
            meter = CpuMeter([fed.broker.pid])
            clients_meter = CpuMeter([p.pid for p in procs])
            time.sleep(plan.submit_s)
            broker_cpu_s = meter.used_s()
            clients_cpu_s = clients_meter.used_s()
            for p in procs:
                p.wait(timeout=60)
        finally:
            end_all(procs)
        results = [json.loads(o.read_text()) for o in outs]
        accepted = sum(r["accepted"] for r in results)
        replied = sum(r["accepted"] + r["accepted_after_window"] + r["warmup"] for r in results)
        db = sqlite3.connect(fed.db)
        stored = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        db.close()
    if call == "submit" and stored < replied:
        raise AssertionError(f"{replied} submits acknowledged but only {stored} jobs stored")
    return {
        "rate": accepted / plan.submit_s,
        "accepted": accepted,
        "acknowledged_total": replied,
        "stored": stored,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max(r["p50_ms"] or 0 for r in results),
        "p99_ms": max(r["p99_ms"] or 0 for r in results),
        "broker_cpu_pct": 100 * broker_cpu_s / plan.submit_s,
        "broker_cpu_us_per_call": 1e6 * broker_cpu_s / max(1, accepted),
        "clients_cpu_pct": 100 * clients_cpu_s / plan.submit_s,
        "load_1m": load,
    }


def durable_submits(root: Path, plan: Plan, clients: int, window: int) -> Figure:
    result = unary_calls(root, plan, clients, window, "submit")
    rate = float(result.pop("rate"))
    plural = "es" if clients > 1 else ""
    return Figure(
        part="submit",
        what=f"durable submits, {clients} client process{plural} x {window} in flight",
        value=rate,
        unit="submits/s",
        goal=">= 2,000/s" if window > 1 else "",
        met=rate >= 2000 if window > 1 else None,
        compare=SLURM_SUBMITS,
        detail=result,
    )


def grpc_ceiling(root: Path, plan: Plan, clients: int, window: int) -> Figure:
    result = unary_calls(root, plan, clients, window, "health")
    for key in ("stored", "acknowledged_total"):
        result.pop(key)
    return Figure(
        part="submit",
        what=f"ceiling: a unary call that does nothing (health Check), {clients} client"
        f" processes x {window} in flight, same broker process",
        value=float(result.pop("rate")),
        unit="calls/s",
        detail=result,
    )


# ------------------------------------------------------------ 2. end to end


async def submit_many(fed: LocalFederation, n: int, window: int = 32) -> None:
    spec = trivial_spec()
    left = n
    creds = fed.credentials(Role.USER, tenant=BENCH_TENANT)
    async with AsyncBrokerClient(fed.address, creds, timeout_s=60) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.submit(spec)

        await asyncio.gather(*(worker() for _ in range(window)))


def run_jobs(fed: LocalFederation, plan: Plan, agent_pids: Sequence[int]) -> dict[str, Any]:
    """Submit plan.jobs trivial jobs and wait until the store holds every one of them in a
    final state. The rate is jobs / (last final commit - first submit), on the broker's
    clock, read from its database."""
    assert fed.broker is not None
    load = load_1m()
    meter = CpuMeter([fed.broker.pid])
    agents_meter = CpuMeter(agent_pids)
    wall = time.monotonic()
    asyncio.run(submit_many(fed, plan.jobs))
    submitted_s = time.monotonic() - wall
    db = sqlite3.connect(f"file:{fed.db}?mode=ro", uri=True)
    marks = ",".join("?" * len(TERMINAL_STATES))

    def done() -> int:
        return int(
            db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", TERMINAL_STATES
            ).fetchone()[0]
        )

    timed_out = False
    try:
        wait_until(lambda: done() >= plan.jobs, timeout_s=plan.e2e_timeout_s, what="all jobs final")
    except TimeoutError:
        timed_out = True
    broker_cpu_s = meter.used_s()
    agents_cpu_s = agents_meter.used_s()
    first_ms, last_ms = db.execute(
        f"SELECT MIN(submitted_at_ms), MAX(updated_at_ms) FROM jobs WHERE state IN ({marks})",
        TERMINAL_STATES,
    ).fetchone()
    by_state = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    centers_used = db.execute("SELECT COUNT(DISTINCT center_id) FROM jobs").fetchone()[0]
    db.close()
    finished = sum(by_state.get(s, 0) for s in TERMINAL_STATES)
    span_s = max(0.001, (last_ms - first_ms) / 1000) if finished else float("nan")
    return {
        "jobs": plan.jobs,
        "finished": finished,
        "by_state": by_state,
        "span_s": span_s,
        "rate": finished / span_s,
        "submit_phase_s": submitted_s,
        "timed_out": timed_out,
        "centers_used": centers_used,
        "broker_cpu_ms_per_job": 1000 * broker_cpu_s / plan.jobs,
        "agents_cpu_ms_per_job": 1000 * agents_cpu_s / plan.jobs,
        "load_1m_before": load,
        "load_1m_after": load_1m(),
    }


def e2e_figure(agents: int, how: str, solver: str, result: dict[str, Any]) -> Figure:
    ok = not result["timed_out"] and result["by_state"].get("succeeded", 0) == result["jobs"]
    rate = float(result["rate"])
    return Figure(
        part="e2e",
        what=f"end-to-end jobs (`true`), {agents} agents ({how}), matcher {solver}",
        value=rate,
        unit="jobs/s",
        goal=">= 200/s",
        met=ok and rate >= 200,
        compare=f"{SLURM_JOBS}; {CONDOR_JOBS}",
        detail=result,
    )


def solver_args(solver: str) -> tuple[str, ...]:
    return () if solver == DEFAULT_SOLVER else ("--solver", solver)


def e2e_process_agents(root: Path, plan: Plan, agents: int, solver: str) -> Figure:
    with federation(root, *solver_args(solver)) as fed:  # stops the agents too
        for i in range(agents):
            fed.start_agent(bench_center(i))
        wait_until(
            lambda: connected_centers(fed) >= agents,
            timeout_s=90,
            what=f"{agents} centers connected",
            every_s=0.5,
        )
        result = run_jobs(fed, plan, [c.pid for c in fed.agents.values()])
    return e2e_figure(agents, "one process each", solver, result)


def e2e_hosted_agents(root: Path, plan: Plan, agents: int, hosts: int, solver: str) -> Figure:
    with (
        federation(root, *solver_args(solver)) as fed,
        agent_hosts(fed, root, agents, hosts) as host_pids,
    ):
        wait_until(
            lambda: connected_centers(fed) >= agents,
            timeout_s=60,
            what=f"{agents} centers with offers",
            every_s=0.5,
        )
        result = run_jobs(fed, plan, host_pids)
    how = f"{agents // hosts} per process in {hosts} processes"
    return e2e_figure(agents, how, solver, result)


# ------------------------------------------------------------ 3. heartbeats


def heartbeat_cpu(root: Path, plan: Plan, agents: int, hosts: int) -> Figure:
    with (
        federation(root) as fed,
        agent_hosts(fed, root, agents, hosts) as host_pids,
    ):
        assert fed.broker is not None
        time.sleep(plan.heartbeat_settle_s)  # let the connection storm pass
        before = connected_centers(fed)
        load = load_1m()
        meter = CpuMeter([fed.broker.pid])
        hosts_meter = CpuMeter(host_pids)
        time.sleep(plan.heartbeat_window_s)
        broker_cpu = meter.percent_of_one_core()
        hosts_cpu = hosts_meter.percent_of_one_core()
        after = connected_centers(fed)
    return Figure(
        part="heartbeat",
        what=f"broker CPU, {agents} connected agents heartbeating every 1 s",
        value=broker_cpu,
        unit="% of one core",
        goal="< 50%",
        met=broker_cpu < 50 and after >= agents,
        compare="the broker's share of one of this machine's 2 cores",
        detail={
            "agents": agents,
            "hosts": hosts,
            "connected_before": before,
            "connected_after": after,
            "window_s": plan.heartbeat_window_s,
            "agent_hosts_cpu_pct": hosts_cpu,
            "load_1m_before": load,
            "load_1m_after": load_1m(),
        },
    )


# ------------------------------------------------------------------ report


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {python}"


def revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown revision"
    return f"commit {head or 'unknown'}" + (" with uncommitted changes" if dirty else "")


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def markdown(figures: Sequence[Figure], command: str, when: str) -> str:
    lines = [
        f"Measured {when} on {machine()}, {revision()}, with `{command}`.",
        "",
        "| figure | measured | goal | met | compare with |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.what} | {fmt(f.value)} {f.unit} | {f.goal} | {met} | {f.compare} |")
    return "\n".join(lines)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.skeleton_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (under ~2 minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument(
        "--only",
        choices=("submit", "e2e", "heartbeat"),
        action="append",
        help="run only these parts (default: all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, dbs)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    parts = set(args.only or ("submit", "e2e", "heartbeat"))
    command = "python -m bench.skeleton_bench" + (" --quick" if args.quick else "")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    figures: list[Figure] = []

    def show(f: Figure) -> None:
        figures.append(f)
        met = "" if f.met is None else (" (goal met)" if f.met else " (GOAL MISSED)")
        print(f"{f.what}: {fmt(f.value)} {f.unit}{met}", flush=True)
        print(f"    {json.dumps(f.detail, default=str)}", flush=True)

    # A SIGTERM or SIGHUP ends the run through the `finally` blocks that stop every child.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    tmp = tempfile.mkdtemp(prefix="icx-skeleton-bench-")
    root = Path(tmp)
    started = time.monotonic()
    try:
        if "submit" in parts:
            # The disk's fsync time drifts with other work on the machine, so the
            # one-commit-per-submit baseline is measured just before each submit run.
            baselines: list[float] = []
            submits: list[Figure] = []
            for clients, window in ((1, 1), (1, plan.window), (4, plan.window)):
                base = sqlite_baseline(root / f"baseline-{len(baselines)}.db", plan.baseline_s)
                baselines.append(base.value)
                f = durable_submits(root / f"submit-{clients}x{window}", plan, clients, window)
                f.detail["one_commit_per_submit_before"] = round(base.value)
                f.detail["x_one_commit_per_submit"] = round(f.value / base.value, 2)
                submits.append(f)
            ceiling = grpc_ceiling(root / "ceiling", plan, clients=4, window=plan.window)
            for f in submits:
                f.detail["of_grpc_ceiling"] = round(f.value / ceiling.value, 2)
            show(
                Figure(
                    part="submit",
                    what="baseline: one SQLite commit per submit (WAL, synchronous=FULL, "
                    "same disk), median of the runs before each submit run",
                    value=statistics.median(baselines),
                    unit="commits/s",
                    detail={"runs": [round(b) for b in baselines]},
                )
            )
            for f in (*submits, ceiling):
                show(f)
        if "e2e" in parts:
            # The broker's default matcher, and the greedy baseline beside it.
            for solver in (DEFAULT_SOLVER, "greedy"):
                show(e2e_process_agents(root / f"e2e-17-{solver}", plan, 17, solver))
                show(e2e_hosted_agents(root / f"e2e-200-{solver}", plan, 200, 4, solver))
        if "heartbeat" in parts:
            show(heartbeat_cpu(root / "heartbeat", plan, agents=1000, hosts=4))
    finally:
        if args.keep:
            print(f"working folder kept: {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    print(f"\n(ran {time.monotonic() - started:.0f} s)\n")
    print(markdown(figures, command, when))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"when": when, "machine": machine(), "revision": revision(), "command": command,
                 "figures": [asdict(f) for f in figures]},
                indent=2,
                default=str,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
