"""`icx demo`: a federation of the 17 reference centers on this machine, a Philly-shaped
workload through it, live progress, and the allocation by hub and center."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cli._output import EXIT_FAILED, EXIT_OK, command, print_json, print_table
from cli.federation import LocalFederation
from core import wire
from icx.v1 import broker_pb2, broker_pb2_grpc, types_pb2

STALL_S = 3.0
TERMINAL = (
    types_pb2.JOB_STATE_SUCCEEDED,
    types_pb2.JOB_STATE_FAILED,
    types_pb2.JOB_STATE_CANCELLED,
)


@dataclass(slots=True)
class Progress:
    """Progress on stderr: one rewritten line on a terminal, a line every few s otherwise."""

    quiet: bool
    tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    _last: float = 0.0

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def update(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - self._last >= 3.0:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)


def _counts(jobs: list[types_pb2.Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs:
        name = str(wire.state_from_proto(j.state))
        counts[name] = counts.get(name, 0) + 1
    return counts


def _progress_line(elapsed: float, submitted: int, total: int, counts: dict[str, int]) -> str:
    order = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
    parts = " ".join(f"{s} {counts[s]}" for s in order if counts.get(s))
    return f"[{elapsed:5.1f}s] submitted {submitted}/{total}  {parts}"


def summarise(jobs: list[types_pb2.Job], centers: list[broker_pb2.CenterStatus]) -> dict[str, Any]:
    """Allocation by center and hub: jobs, device-hours and charge at the pool's price
    (trace hours), energy (devices x power x hours x PUE) and carbon (energy x grid)."""
    from matcher import JobRequest, PoolSlot, carbon_g, energy_wh, job_charge_minor

    info = {c.center.center_id: c.center for c in centers}
    by_center: dict[str, dict[str, Any]] = {}
    for j in jobs:
        if j.state != types_pb2.JOB_STATE_SUCCEEDED:
            continue
        center = info[j.center_id]
        pool = next(p for p in center.pools if p.pool_id == j.pool_id)
        slot = PoolSlot(
            pool_id=j.pool_id,
            center_id=j.center_id,
            region=center.region,
            accelerator=pool.accelerator,
            free=pool.devices_total,
            memory_gb=pool.memory_gb_per_device,
            tflops=pool.fp16_tflops_per_device,
            power_w=pool.power_w_per_device,
            pue_milli=center.pue_milli,
            grid_g_per_kwh=center.grid_g_co2_per_kwh,
            price_minor_per_device_hour=pool.price_minor_per_device_hour,
        )
        req = JobRequest(
            job_id=j.job_id,
            accelerator="any",
            devices=j.spec.devices,
            seconds=j.spec.estimated_seconds,
        )
        row = by_center.setdefault(
            j.center_id,
            {"center_id": j.center_id, "hub": center.region, "name": center.name, "jobs": 0,
             "device_seconds": 0, "charge_minor": 0, "energy_wh": 0, "carbon_g": 0},
        )  # fmt: skip
        row["jobs"] += 1
        row["device_seconds"] += j.spec.devices * j.spec.estimated_seconds
        row["charge_minor"] += job_charge_minor(req, slot)
        row["energy_wh"] += energy_wh(req, slot)
        row["carbon_g"] += carbon_g(req, slot)
    by_hub: dict[str, dict[str, Any]] = {}
    for row in by_center.values():
        hub = by_hub.setdefault(
            row["hub"],
            {"hub": row["hub"], "centers": 0, "jobs": 0, "device_seconds": 0, "charge_minor": 0,
             "energy_wh": 0, "carbon_g": 0},
        )  # fmt: skip
        hub["centers"] += 1
        for key in ("jobs", "device_seconds", "charge_minor", "energy_wh", "carbon_g"):
            hub[key] += row[key]
    for row in (*by_center.values(), *by_hub.values()):
        row["device_hours"] = round(row.pop("device_seconds") / 3600, 2)
    counts = _counts(jobs)
    return {
        "jobs_submitted": len(jobs),
        "jobs_succeeded": counts.get("succeeded", 0),
        "jobs_failed": counts.get("failed", 0),
        "jobs_cancelled": counts.get("cancelled", 0),
        "jobs_unplaced": sum(1 for j in jobs if j.state == types_pb2.JOB_STATE_QUEUED),
        "jobs_unfinished": sum(
            1 for j in jobs if j.state in (types_pb2.JOB_STATE_CLAIMED, types_pb2.JOB_STATE_RUNNING)
        ),
        "unplaced": [
            {"job_id": j.job_id, "reason": j.explanation or j.reason}
            for j in jobs
            if j.state == types_pb2.JOB_STATE_QUEUED
        ],
        "by_hub": sorted(by_hub.values(), key=lambda r: -r["device_hours"]),
        "by_center": sorted(by_center.values(), key=lambda r: r["center_id"]),
    }


def print_report(summary: dict[str, Any], seconds: dict[str, float]) -> None:
    def yuan(fen: int) -> str:
        return f"{fen / 100:,.0f}"

    print()
    print(
        f"{summary['jobs_submitted']} jobs: {summary['jobs_succeeded']} succeeded, "
        f"{summary['jobs_failed']} failed, {summary['jobs_unplaced']} unplaceable, "
        f"{summary['jobs_unfinished']} unfinished "
        f"(up in {seconds['up']:.1f} s, all done in {seconds['total']:.1f} s)"
    )
    print("\nAllocation by hub (device-hours and charges at the trace's real durations):")
    print_table(
        ["HUB", "CENTERS", "JOBS", "DEVICE-H", "CHARGE YUAN", "ENERGY KWH", "CARBON KG"],
        [
            (h["hub"], h["centers"], h["jobs"], h["device_hours"], yuan(h["charge_minor"]),
             round(h["energy_wh"] / 1000, 1), round(h["carbon_g"] / 1000, 1))
            for h in summary["by_hub"]
        ],
    )  # fmt: skip
    ledger = summary.get("ledger")
    if ledger:
        print(
            f"\nLedger: {ledger['usage_records']} usage records, each signed by its center and "
            f"countersigned by the broker;\n  checkpoint {ledger['origin']} size "
            f"{ledger['entries']} root {ledger['root']}\n  audit it offline: "
            f"icx ledger audit --db {ledger['db']}"
        )
    if summary["unplaced"]:
        print("\nUnplaceable now (they stay queued, with the matcher's reason):")
        for u in summary["unplaced"][:8]:
            print(f"  {u['job_id']}: {u['reason']}")
        if len(summary["unplaced"]) > 8:
            print(f"  ... and {len(summary['unplaced']) - 8} more (icx jobs --state queued)")
    print("\nBy center:")
    print_table(
        ["CENTER", "HUB", "JOBS", "DEVICE-H", "CHARGE YUAN", "CARBON KG", "NAME"],
        [
            (c["center_id"], c["hub"], c["jobs"], c["device_hours"], yuan(c["charge_minor"]),
             round(c["carbon_g"] / 1000, 1), c["name"])
            for c in summary["by_center"]
        ],
    )  # fmt: skip


@command
def demo(args: argparse.Namespace) -> int:
    from scenario import demo_workload, load_centers, region_latency_ms

    progress = Progress(quiet=args.json and not args.keep)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="icx-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    centers = load_centers(scale=args.scale, min_devices=4)
    workload = demo_workload(args.jobs, span_s=args.span)
    policy = root / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "weights": {"cost": 1, "carbon": args.carbon_weight, "latency": 0},
                "carbon_price_yuan_per_tonne": 100,
                "latency_ms": region_latency_ms({c.center_id: c.region for c in centers}),
            },
            indent=1,
        )
    )
    fed = LocalFederation(
        root=root, broker_args=("--center-expiry-ms", "5000", "--policy", str(policy))
    )
    started = time.monotonic()
    keep = False
    try:
        progress.say(f"starting a broker and {len(centers)} centers in {root}")
        fed.start_broker(port=args.port)
        for center in centers:
            fed.start_agent(center)
        with grpc.insecure_channel(fed.address) as channel:
            stub = broker_pb2_grpc.BrokerServiceStub(channel)
            _wait_connected(stub, len(centers), timeout_s=30)
            up_s = time.monotonic() - started
            progress.say(
                f"federation up in {up_s:.1f} s: broker {fed.address}, {len(centers)} centers"
            )
            if args.keep and args.jobs == 0:
                keep = True
                return _print_keep(fed, args.json)
            progress.say(
                f"submitting {len(workload)} jobs shaped like the Philly trace "
                f"over {args.span:.0f} s"
            )
            t0 = time.monotonic()
            ids: list[str] = []
            pending = list(workload)
            deadline = t0 + args.timeout
            jobs: list[types_pb2.Job] = []
            last_change, last_counts = time.monotonic(), dict[str, int]()
            while time.monotonic() < deadline:
                now = time.monotonic() - t0
                while pending and pending[0].at_s <= now:
                    item = pending.pop(0)
                    reply = stub.SubmitJob(
                        broker_pb2.SubmitJobRequest(spec=wire.spec_to_proto(item.spec)), timeout=10
                    )
                    ids.append(reply.job.job_id)
                jobs = list(stub.ListJobs(broker_pb2.ListJobsRequest(), timeout=10).jobs)
                counts = _counts(jobs)
                done = sum(1 for j in jobs if j.state in TERMINAL)
                progress.update(
                    _progress_line(time.monotonic() - started, len(ids), len(workload), counts)
                )
                if not pending and done == len(ids):
                    break
                # What is left can wait for capacity that will not come: nothing runs,
                # and the queue has not moved for a while.
                active = sum(counts.get(s, 0) for s in ("claimed", "running"))
                if pending or active or counts != last_counts:
                    last_change, last_counts = time.monotonic(), counts
                elif time.monotonic() - last_change > STALL_S:
                    break
                time.sleep(0.25)
            progress.update(
                _progress_line(time.monotonic() - started, len(ids), len(workload), _counts(jobs)),
                final=True,
            )
            summary = summarise(
                jobs, list(stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=10).centers)
            )
            summary["ledger"] = _ledger_summary(channel, fed, len(centers))
        total_s = time.monotonic() - started
        summary["seconds_up"] = round(up_s, 2)
        summary["seconds_total"] = round(total_s, 2)
        if args.keep:
            keep = True
            if not args.json:
                print_report(summary, {"up": up_s, "total": total_s})
            return _print_keep(fed, args.json)
        if args.json:
            print_json(summary)
        else:
            print_report(summary, {"up": up_s, "total": total_s})
        ok = summary["jobs_unfinished"] == 0 and summary["jobs_failed"] == 0
        return EXIT_OK if ok else EXIT_FAILED
    finally:
        if not keep:
            progress.say("stopping the federation")
            fed.stop()


def _ledger_summary(channel: grpc.Channel, fed: LocalFederation, centers: int) -> dict[str, Any]:
    """The signed usage log after the run: records are acknowledged just after each job
    ends, so wait briefly for the last ones."""
    from broker.ledger import ledger_paths
    from icx.v1 import ledger_pb2, ledger_pb2_grpc

    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    size, previous, deadline = 0, -1, time.monotonic() + 5
    note = ""
    while size != previous and time.monotonic() < deadline:
        previous = size
        time.sleep(0.5)
        note = stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=10).note
        size = int(note.splitlines()[1])
    lines = note.splitlines()
    return {
        "entries": size,
        "usage_records": size - 1 - centers,  # less the log's own key and each center's
        "origin": lines[0],
        "root": lines[2],
        "db": str(ledger_paths(fed.db)[0]),
    }


def _wait_connected(stub: broker_pb2_grpc.BrokerServiceStub, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = stub.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
        if sum(1 for c in reply.centers if c.connected and c.HasField("offer")) >= n:
            return
        time.sleep(0.1)
    from core.errors import Unavailable

    raise Unavailable(f"not all {n} centers connected within {timeout_s} s")


def _print_keep(fed: LocalFederation, as_json: bool) -> int:
    pids: dict[str, int | None] = {
        "broker": fed.broker.pid if fed.broker else None,
        **{f"agent-{cid}": child.pid for cid, child in fed.agents.items()},
    }
    info = {
        "broker": fed.address,
        "db": str(fed.db),
        "root": str(fed.root),
        "metrics_port": fed.metrics_port,
        "pids": pids,
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    pid_list = " ".join(str(p) for p in pids.values() if p)
    # The command as this shell can run it (make demo runs the one in .venv/bin).
    icx = "icx" if shutil.which("icx") else str(Path(sys.executable).parent / "icx")
    print(
        f"""
The federation keeps running (logs in {fed.root}/logs):
  export ICX_BROKER={fed.address}
  {icx} centers     # the 17 centers and their free devices
  {icx} quote --devices 2 --accelerator ascend-910 --hours 1
  {icx} submit --devices 2 --accelerator ascend-910 --hours 1 -- sh -c 'echo hi; sleep 5'
  {icx} jobs        # newest first
  {icx} logs -f JOB # follow a job's output
  {icx} ledger checkpoint --broker {fed.address}
  curl -s 127.0.0.1:{fed.metrics_port}/metrics | grep icx_
Stop it with:
  kill {pid_list}"""
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the 17 reference centers and a Philly-shaped workload on this machine",
        description=(
            "Start a broker and the 17 reference centers as local processes (SQLite in a "
            "temporary folder), submit a workload shaped like the Philly GPU trace, show "
            "progress, print the allocation by hub and center, and stop."
        ),
    )
    p.add_argument(
        "--jobs", type=int, default=240, help="jobs to submit (default 240; 0 with --keep: none)"
    )
    p.add_argument(
        "--span", type=float, default=20.0, help="seconds over which the jobs arrive (default 20)"
    )
    p.add_argument(
        "--scale", type=int, default=256, help="divide each center's devices by this (default 256)"
    )
    p.add_argument(
        "--timeout", type=float, default=110.0, help="give up after this many seconds (default 110)"
    )
    p.add_argument(
        "--carbon-weight",
        type=int,
        default=0,
        help="the policy's carbon weight (default 0: cost only; try 20 to see work move to "
        "clean grids)",
    )
    p.add_argument("--port", type=int, default=0, help="broker port (default: any free one)")
    p.add_argument(
        "--dir", help="keep the databases and logs here (default: a new temporary folder)"
    )
    p.add_argument(
        "--keep", action="store_true", help="leave the federation running and print how to use it"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON summary (with --keep: addresses and pids)",
    )
    p.set_defaults(func=demo)
