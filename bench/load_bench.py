"""The broker under a read flood (issue 9, "Load"), side by side in one run:

One real broker process holds a backlog of queued jobs (no centers, so they stay
queued). Then, each phase for the same number of seconds, on the same broker:

1. unloaded: one submitting client process (`BrokerClient.submit`, one call in flight)
   and one gRPC health probe process (grpc.health.v1 `Check` every few ms, latency of
   each);
2. loaded: the same two, while 4 reader processes flood reads, each one call in flight,
   round-robin over what users call: `ListJobs` first page (`icx jobs`), one page after a
   random job (a raw `ListJobsRequest(limit, page_token)`), `ListJobs` of running jobs
   (`icx jobs --state running`: none is running, so the broker walks the whole backlog),
   `GetJob` and `WatchJob` (a snapshot of a random job's events);
3. unloaded again, to bracket the loaded phase against drift in what else the shared
   machine is doing.

The goals: under load, health p99 < 100 ms and the submit rate >= half the unloaded rate
(the mean of phases 1 and 3).

    .venv/bin/python -m bench.load_bench [--quick] [--backlog N] [--seconds S]
        [--profile FILE] [--json FILE]

The broker runs with its membership (--identity) in a throw-away federation, and every
client process presents a user's member folder: each call pays for mutual TLS, as a
deployment's do.

`--profile FILE` records the broker with py-spy (when it is installed) during the loaded
phase, as collapsed stacks, and prints its top functions. The figures are printed as
they come, then as the markdown table that docs/benchmarks.md keeps. Every child process
is ended before the run returns, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import datetime as dt
import itertools
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._skeleton_roles import die_with_parent, trivial_spec, write_json
from bench.skeleton_bench import (
    BENCH_TENANT,
    CpuMeter,
    end_all,
    federation,
    load_1m,
    machine,
    revision,
    submit_many,
    user_identity,
    wait_until,
)
from cli.federation import LocalFederation
from client import BrokerClient
from core.errors import IcxError
from core.states import JobState
from icx.v1 import broker_pb2, broker_pb2_grpc, types_pb2
from identity import Credentials
from identity.tls import channel as member_channel

HEALTH_GOAL_MS = 100.0
SUBMIT_GOAL_RATIO = 0.5
READERS = 4
PAGE = 100
READ_KINDS = ("list_first", "list_after", "list_running", "get", "watch")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    backlog: int
    phase_s: float
    probe_every_s: float
    reads: tuple[str, ...] = READ_KINDS
    readers_nice: int = 0


QUICK = Plan(backlog=5_000, phase_s=6.0, probe_every_s=0.01)
FULL = Plan(backlog=30_000, phase_s=20.0, probe_every_s=0.01)


# ------------------------------------------------------------------ the roles


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) in ms; None without samples."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(latencies_s: list[float], errors: int) -> dict[str, Any]:
    return {
        "calls": len(latencies_s),
        "errors": errors,
        "p50_ms": percentile_ms(latencies_s, 0.50),
        "p99_ms": percentile_ms(latencies_s, 0.99),
        "max_ms": percentile_ms(latencies_s, 1.0),
    }


def wait_start(out: Path, start_file: Path) -> float:
    """Say this client is warmed up (`out` + ".ready"), wait for the orchestrator's start
    time (Unix s) in `start_file`, then for that instant; return it."""
    out.with_suffix(".ready").touch()
    while not start_file.exists():
        time.sleep(0.005)
    start_at = float(start_file.read_text())
    time.sleep(max(0.0, start_at - time.time()))
    return start_at


def run_submitter(
    address: str, creds: Credentials, start_file: Path, seconds: float, out: Path
) -> None:
    """One client, one SubmitJob in flight: each reply is a job on the broker's disk."""
    spec = trivial_spec()
    latencies: list[float] = []
    errors = 0
    with BrokerClient(address, creds, timeout_s=30) as client:
        for _ in range(5):  # connect and warm up before the clock starts
            client.submit(spec)
        end_at = wait_start(out, start_file) + seconds
        while time.time() < end_at:
            sent = time.perf_counter()
            try:
                client.submit(spec)
            except IcxError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)
    write_json(out, {"rate": len(latencies) / seconds, **summary(latencies, errors)})


def run_probe(
    address: str, creds: Credentials, start_file: Path, seconds: float, every_s: float, out: Path
) -> None:
    """A health Check every `every_s` (or right after the last one, when that took
    longer), as a load balancer or `icx health` would probe; the latency of each."""
    latencies: list[float] = []
    errors = 0
    request = health_pb2.HealthCheckRequest()
    with member_channel(address, creds) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for _ in range(5):
            check(request, timeout=10)
        end_at = wait_start(out, start_file) + seconds
        next_at = time.perf_counter()
        while time.time() < end_at:
            sent = time.perf_counter()
            try:
                reply = check(request, timeout=10)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    errors += 1
            except grpc.RpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)
            next_at += every_s
            time.sleep(max(0.0, next_at - time.perf_counter()))
            next_at = max(next_at, time.perf_counter())
    write_json(out, summary(latencies, errors))


def run_reader(
    address: str,
    creds: Credentials,
    start_file: Path,
    seconds: float,
    seed: int,
    kinds: Sequence[str],
    out: Path,
) -> None:
    """Flood reads, one call in flight, round-robin over `kinds` (of READ_KINDS), until
    the end."""
    rng = random.Random(seed)
    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    errors = dict.fromkeys(kinds, 0)
    with (
        BrokerClient(address, creds, timeout_s=60) as client,
        member_channel(address, creds) as channel,
    ):
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        ids = [j.job_id for j in client.list_jobs(limit=1_000).jobs]
        running = [types_pb2.JOB_STATE_RUNNING]

        def list_after() -> None:
            # One raw page, as a client following pages sends it.
            stub.ListJobs(
                broker_pb2.ListJobsRequest(limit=PAGE, page_token=rng.choice(ids)), timeout=60
            )

        def list_running() -> None:
            stub.ListJobs(broker_pb2.ListJobsRequest(limit=PAGE, states=running), timeout=60)

        calls: dict[str, Callable[[], object]] = {
            "list_first": lambda: client.list_jobs(limit=PAGE),
            "list_after": list_after,
            "list_running": list_running,
            "get": lambda: client.get_job(rng.choice(ids)),
            "watch": lambda: list(client.watch(rng.choice(ids), follow=False)),
        }
        for kind in kinds:  # warm up every call
            calls[kind]()
        end_at = wait_start(out, start_file) + seconds
        for kind in itertools.cycle(kinds):
            if time.time() >= end_at:
                break
            sent = time.perf_counter()
            try:
                calls[kind]()
            except (grpc.RpcError, IcxError):
                errors[kind] += 1
                continue
            latencies[kind].append(time.perf_counter() - sent)
    write_json(out, {k: summary(latencies[k], errors[k]) for k in kinds})


def role_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_bench role")
    parser.add_argument("role", choices=("submitter", "probe", "reader"))
    parser.add_argument("--broker", required=True)
    parser.add_argument("--identity", type=Path, required=True, help="a user's member folder")
    parser.add_argument("--start-file", type=Path, required=True, help="holds the start time")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--every", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reads", default=",".join(READ_KINDS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    creds = Credentials.load(args.identity)
    if args.role == "submitter":
        run_submitter(args.broker, creds, args.start_file, args.seconds, args.out)
    elif args.role == "probe":
        run_probe(args.broker, creds, args.start_file, args.seconds, args.every, args.out)
    else:
        kinds = args.reads.split(",")
        run_reader(args.broker, creds, args.start_file, args.seconds, args.seed, kinds, args.out)
    return 0


# ------------------------------------------------------------------ the run


def spawn(role: str, args: list[str], log: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    niced = ["nice", "-n", str(nice)] if nice else []
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*niced, sys.executable, "-m", "bench.load_bench", "role", role, *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def profile_start(
    pid: int, seconds: float, out: Path, native: bool = False
) -> subprocess.Popen[bytes] | None:
    """py-spy on the broker for the loaded phase, as collapsed stacks (one line a stack,
    then its sample count); None when py-spy is not installed. `native`: with the C and
    Cython frames (gRPC's own work), sampling only the thread that holds the GIL."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed; no profile", flush=True)
        return None
    return subprocess.Popen(
        [
            py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", "100", "--format", "raw", "-o", str(out),
            *(["--native", "--gil"] if native else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile_top(collapsed: Path, n: int = 25) -> str:
    """The functions that hold the broker's samples: inclusive share (on the stack) and
    self share (on top), from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "no samples"
    rows = [f"{total} samples"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        rows.append(f"-- {title}")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:n]:
            rows.append(f"{100 * count / total:5.1f}%  {frame}")
    return "\n".join(rows)


def phase(
    name: str, fed: LocalFederation, broker_pid: int, plan: Plan, root: Path, readers: int,
    profile: Path | None = None, native: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One measured window: a submitter, a probe and `readers` readers, all started at
    the same instant after they have connected and warmed up."""
    folder = root / name
    folder.mkdir(parents=True)
    start_file = folder / "start"
    common = ["--broker", fed.address, "--identity", str(user_identity(fed))]
    common += ["--start-file", str(start_file)]
    common += ["--seconds", repr(plan.phase_s)]
    submitter_out, probe_out = folder / "submitter.json", folder / "probe.json"
    reader_outs = [folder / f"reader-{i}.json" for i in range(readers)]
    procs = [
        spawn("submitter", [*common, "--out", str(submitter_out)], folder / "submitter.log"),
        spawn(
            "probe",
            [*common, "--every", repr(plan.probe_every_s), "--out", str(probe_out)],
            folder / "probe.log",
        ),
    ]
    for i, out in enumerate(reader_outs):
        procs.append(
            spawn(
                "reader",
                [*common, "--seed", str(i), "--reads", ",".join(plan.reads), "--out", str(out)],
                folder / f"r{i}.log",
                nice=plan.readers_nice,
            )
        )
    profiler: subprocess.Popen[bytes] | None = None
    outs = [submitter_out, probe_out, *reader_outs]
    try:
        # Every client imports, connects and warms up before the clock starts.
        wait_until(
            lambda: all(o.with_suffix(".ready").exists() for o in outs),
            timeout_s=120,
            what=f"the {name} clients ready",
            procs=procs,
            every_s=0.05,
        )
        start_at = time.time() + 0.5
        tmp = start_file.with_suffix(".tmp")
        tmp.write_text(repr(start_at))
        tmp.replace(start_file)
        time.sleep(max(0.0, start_at - time.time()))
        load = load_1m()
        broker_meter = CpuMeter([broker_pid])
        clients_meter = CpuMeter([p.pid for p in procs])
        if profile is not None:
            profiler = profile_start(broker_pid, plan.phase_s, profile, native=native)
        time.sleep(plan.phase_s)
        broker_cpu_s = broker_meter.used_s()
        clients_cpu_s = clients_meter.used_s()
        for p in procs:
            p.wait(timeout=120)
            if p.returncode:
                raise RuntimeError(f"a {name} client exited with {p.returncode}; see {folder}")
        if profiler is not None:
            profiler.wait(timeout=120)
    finally:
        end_all(procs)
    reads: dict[str, dict[str, Any]] = {}
    for out in reader_outs:
        for kind, s in json.loads(out.read_text()).items():
            reads.setdefault(kind, {"calls": 0, "errors": 0, "p50_ms": [], "p99_ms": []})
            reads[kind]["calls"] += s["calls"]
            reads[kind]["errors"] += s["errors"]
            reads[kind]["p50_ms"].append(s["p50_ms"])
            reads[kind]["p99_ms"].append(s["p99_ms"])
    for r in reads.values():  # the worst reader's percentiles
        r["p50_ms"] = max((v for v in r["p50_ms"] if v is not None), default=None)
        r["p99_ms"] = max((v for v in r["p99_ms"] if v is not None), default=None)
    return {
        "phase": name,
        "readers": readers,
        "submit": json.loads(submitter_out.read_text()),
        "health": json.loads(probe_out.read_text()),
        "reads": reads,
        "reads_per_s": sum(r["calls"] for r in reads.values()) / plan.phase_s,
        "broker_cpu_pct": 100 * broker_cpu_s / plan.phase_s,
        "clients_cpu_pct": 100 * clients_cpu_s / plan.phase_s,
        "load_1m": load,
    }


def count_jobs(fed: LocalFederation) -> int:
    with fed.client(BENCH_TENANT, timeout_s=60) as client:
        return client.list_jobs([JobState.QUEUED], limit=1).total


def preload(fed: LocalFederation, jobs: int) -> float:
    started = time.monotonic()
    asyncio.run(submit_many(fed, jobs, window=64))
    return jobs / (time.monotonic() - started)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def markdown(result: dict[str, Any]) -> str:
    before, loaded, after = result["phases"]
    lines = [
        f"Measured {result['when']} on {result['machine']}, {result['revision']}, with"
        f" `{result['command']}`; backlog {result['backlog']:,} queued jobs before the first"
        f" phase, {result['phase_s']:.0f} s per phase; the readers call"
        f" {', '.join(result['reads'])} in turn"
        + (f", at niceness {result['readers_nice']}." if result["readers_nice"] else "."),
        "",
        "| figure | unloaded (before) | loaded: 4 readers | unloaded (after) | loaded / unloaded"
        " | goal | met |",
        "|---|---|---|---|---|---|---|",
        f"| submits, 1 client, 1 in flight | {before['submit']['rate']:,.0f}/s"
        f" | {loaded['submit']['rate']:,.0f}/s | {after['submit']['rate']:,.0f}/s"
        f" | {result['submit_ratio']:.2f} | >= {SUBMIT_GOAL_RATIO} | "
        f"{'yes' if result['submit_met'] else '**no**'} |",
        f"| submit p50 / p99 | {fmt_ms(before['submit']['p50_ms'])} /"
        f" {fmt_ms(before['submit']['p99_ms'])} | {fmt_ms(loaded['submit']['p50_ms'])} /"
        f" {fmt_ms(loaded['submit']['p99_ms'])} | {fmt_ms(after['submit']['p50_ms'])} /"
        f" {fmt_ms(after['submit']['p99_ms'])} | | | |",
    ]
    for q in ("p50", "p99"):
        goal = f"< {HEALTH_GOAL_MS:.0f} ms" if q == "p99" else ""
        met = ("yes" if result["health_met"] else "**no**") if q == "p99" else ""
        ratio = (loaded["health"][f"{q}_ms"] or float("nan")) / HEALTH_GOAL_MS
        lines.append(
            f"| health {q} (probe every {1000 * result['probe_every_s']:.0f} ms)"
            f" | {fmt_ms(before['health'][f'{q}_ms'])} | {fmt_ms(loaded['health'][f'{q}_ms'])}"
            f" | {fmt_ms(after['health'][f'{q}_ms'])} | {ratio:.2f} x goal | {goal} | {met} |"
        )
    lines.append(
        f"| health max | {fmt_ms(before['health']['max_ms'])} |"
        f" {fmt_ms(loaded['health']['max_ms'])} | {fmt_ms(after['health']['max_ms'])} | | | |"
    )
    lines.append(f"| reads answered (all kinds) | | {loaded['reads_per_s']:,.0f}/s | | | | |")
    for kind in (k for k in READ_KINDS if k in loaded["reads"]):
        r = loaded["reads"][kind]
        lines.append(
            f"| read `{kind}` p50 / p99 (worst reader) | | {fmt_ms(r['p50_ms'])} /"
            f" {fmt_ms(r['p99_ms'])} ({r['calls']:,} calls, {r['errors']} errors) | | | | |"
        )
    lines.append(
        f"| broker CPU, % of one core | {before['broker_cpu_pct']:.0f}%"
        f" | {loaded['broker_cpu_pct']:.0f}% | {after['broker_cpu_pct']:.0f}% | | | |"
    )
    lines.append(
        f"| load average (1 min) at the start | {before['load_1m']} | {loaded['load_1m']}"
        f" | {after['load_1m']} | | | |"
    )
    return "\n".join(lines)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["role"]:
        return role_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.load_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small backlog, short phases")
    parser.add_argument("--backlog", type=int, help="queued jobs before the first phase")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    parser.add_argument(
        "--reads",
        default=",".join(READ_KINDS),
        help=f"the readers' calls, comma-separated (default: all of {','.join(READ_KINDS)})",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy collapsed stacks of the broker in the loaded phase"
    )
    parser.add_argument(
        "--nice-readers",
        type=int,
        default=0,
        metavar="N",
        help="run the readers at this niceness (1-19): the broker and the submitter get the"
        " CPU first, which separates the broker's limits from the machine's",
    )
    parser.add_argument(
        "--native", action="store_true", help="profile C and Cython frames, GIL holder only"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(
        backlog=args.backlog if args.backlog is not None else plan.backlog,
        phase_s=args.seconds if args.seconds is not None else plan.phase_s,
        probe_every_s=plan.probe_every_s,
        reads=tuple(args.reads.split(",")),
        readers_nice=args.nice_readers,
    )
    if not plan.reads or not set(plan.reads) <= set(READ_KINDS):
        parser.error(f"--reads takes some of {','.join(READ_KINDS)}, got {args.reads!r}")
    command = "python -m bench.load_bench" + " ".join(
        [""] + [a for a in argv if a not in ("--keep",)]
    )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    root = Path(tempfile.mkdtemp(prefix="icx-load-bench-"))
    started = time.monotonic()
    phases: list[dict[str, Any]] = []
    try:
        with federation(root / "fed") as fed:
            assert fed.broker is not None
            rate = preload(fed, plan.backlog)
            print(f"backlog: {plan.backlog:,} jobs submitted ({rate:,.0f}/s)", flush=True)
            for name, readers in (("unloaded-before", 0), ("loaded", READERS),
                                  ("unloaded-after", 0)):  # fmt: skip
                queued = count_jobs(fed)
                p = phase(
                    name, fed, fed.broker.pid, plan, root, readers,
                    profile=args.profile if readers else None, native=args.native,
                )  # fmt: skip
                p["queued_at_start"] = queued
                phases.append(p)
                print(
                    f"{name}: submits {p['submit']['rate']:,.0f}/s, health p50"
                    f" {fmt_ms(p['health']['p50_ms'])} p99 {fmt_ms(p['health']['p99_ms'])},"
                    f" reads {p['reads_per_s']:,.0f}/s, broker CPU {p['broker_cpu_pct']:.0f}%,"
                    f" backlog {queued:,}",
                    flush=True,
                )
                print(f"    {json.dumps(p, default=str)}", flush=True)
    finally:
        if args.keep:
            print(f"working folder kept: {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    before, loaded, after = phases
    unloaded_rate = statistics.mean([before["submit"]["rate"], after["submit"]["rate"]])
    result: dict[str, Any] = {
        "when": when,
        "machine": machine(),
        "revision": revision(),
        "command": command,
        "backlog": plan.backlog,
        "phase_s": plan.phase_s,
        "probe_every_s": plan.probe_every_s,
        "reads": list(plan.reads),
        "readers_nice": plan.readers_nice,
        "phases": phases,
        "unloaded_submit_rate": unloaded_rate,
        "submit_ratio": loaded["submit"]["rate"] / unloaded_rate,
        "submit_met": loaded["submit"]["rate"] >= SUBMIT_GOAL_RATIO * unloaded_rate,
        "health_met": (loaded["health"]["p99_ms"] or float("inf")) < HEALTH_GOAL_MS,
    }
    print(f"\n(ran {time.monotonic() - started:.0f} s)\n")
    print(markdown(result))
    if args.profile is not None and args.profile.exists():
        print(f"\nprofile of the broker in the loaded phase ({args.profile}):")
        print(profile_top(args.profile))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
