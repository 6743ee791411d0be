"""`icx demo`: a federation of the 17 reference centers on this machine, a Philly-shaped
workload through it, live progress, and the allocation by hub and center as the ledger
recorded it."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli._output import EXIT_FAILED, EXIT_OK, command, print_json, print_table
from core.errors import InvalidArgument
from core.money import CURRENCY, format_major
from core.states import JobState
from core.types import CenterDescriptor, Job
from core.views import CenterStatus

if TYPE_CHECKING:
    from cli.federation import LocalFederation
    from cli.slurm_local import LocalSlurm
    from client import BrokerClient
    from ledger import UsageRecord

STALL_S = 3.0
# The demo's tenants: each submits its share of the workload as one of its users, and
# the coordinator (who sees every tenant's jobs) watches the whole queue.
TENANTS = ("lab-a", "lab-b", "lab-c")
FIGURES = (
    f"Figures are the ledger's: each run as its center metered and signed it (real "
    f"device-seconds at the pool's price, in {CURRENCY}). The demo runs the trace's jobs "
    "shortened to 1-5 s, so they are seconds of work, not the trace's hours, which a quote "
    "prices."
)
_SUMS = ("jobs", "runs", "device_s", "charge_minor", "energy_wh", "carbon_g")


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


def _counts(jobs: Iterable[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[str(j.state)] = counts.get(str(j.state), 0) + 1
    return counts


def _progress_line(elapsed: float, submitted: int, total: int, counts: dict[str, int]) -> str:
    order = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
    parts = " ".join(f"{s} {counts[s]}" for s in order if counts.get(s))
    return f"[{elapsed:5.1f}s] submitted {submitted}/{total}  {parts}"


def _zero(**keys: Any) -> dict[str, Any]:
    return {**keys, **dict.fromkeys(_SUMS, 0), "currency": CURRENCY}


def _total(rows: Sequence[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    total = _zero(**keys)
    for row in rows:
        for key in _SUMS:
            total[key] += row[key]
    return total


def summarise(
    jobs: Sequence[Job], centers: Sequence[CenterStatus], records: Iterable[UsageRecord]
) -> dict[str, Any]:
    """Allocation by center and hub: every center (those that ran nothing too) and a
    totals row. Jobs are the broker's succeeded jobs; runs, device-seconds, charge,
    energy and carbon are the ledger's usage records, as the centers signed them."""
    by_center: dict[str, dict[str, Any]] = {
        c.center.center_id: _zero(center_id=c.center.center_id, hub=c.center.region,
                                  name=c.center.name)
        for c in centers
    }  # fmt: skip
    for j in jobs:
        if j.state == JobState.SUCCEEDED and j.center_id in by_center:
            by_center[j.center_id]["jobs"] += 1
    for r in records:
        row = by_center.get(r.producer)
        if row is None:  # a center of an earlier run of this database
            continue
        row["runs"] += 1
        row["device_s"] += r.device_s
        row["charge_minor"] += r.charge_minor
        row["energy_wh"] += r.energy_wh
        row["carbon_g"] += r.carbon_g
    hubs: dict[str, list[dict[str, Any]]] = {}
    for row in by_center.values():
        hubs.setdefault(row["hub"], []).append(row)
    by_hub = [_total(rows, hub=hub, centers=len(rows)) for hub, rows in hubs.items()]
    counts = _counts(jobs)
    return {
        "jobs_submitted": len(jobs),
        "jobs_succeeded": counts.get("succeeded", 0),
        "jobs_failed": counts.get("failed", 0),
        "jobs_cancelled": counts.get("cancelled", 0),
        "jobs_unplaced": counts.get("queued", 0),
        "jobs_unfinished": counts.get("claimed", 0) + counts.get("running", 0),
        "unplaced": [
            {"job_id": j.job_id, "reason": j.explanation or j.reason}
            for j in jobs
            if j.state == JobState.QUEUED
        ],
        "figures": FIGURES,
        "by_hub": sorted(by_hub, key=lambda r: (-r["device_s"], r["hub"])),
        "by_center": sorted(by_center.values(), key=lambda r: r["center_id"]),
        "totals": _total(list(by_center.values()), centers=len(by_center)),
    }


def _allocation_rows(
    rows: Sequence[dict[str, Any]], total: dict[str, Any], first: Sequence[str]
) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for r in [*rows, total]:
        out.append(
            (*(r[k] for k in first), r["jobs"], r["runs"], r["device_s"],
             format_major(r["charge_minor"]), r["energy_wh"], r["carbon_g"])
        )  # fmt: skip
    return out


def print_report(summary: dict[str, Any], seconds: dict[str, float]) -> None:
    print()
    print(
        f"{summary['jobs_submitted']} jobs: {summary['jobs_succeeded']} succeeded, "
        f"{summary['jobs_failed']} failed, {summary['jobs_unplaced']} unplaceable, "
        f"{summary['jobs_unfinished']} unfinished "
        f"(up in {seconds['up']:.1f} s, all done in {seconds['total']:.1f} s)"
    )
    money = ["JOBS", "RUNS", "DEVICE-S", f"CHARGE {CURRENCY}", "ENERGY WH", "CARBON G"]
    totals = summary["totals"]
    print()
    print(textwrap.fill(FIGURES, width=88))
    print("\nAllocation by hub:")
    print_table(
        ["HUB", "CENTERS", *money],
        _allocation_rows(summary["by_hub"], {**totals, "hub": "total"}, ("hub", "centers")),
    )
    through = summary.get("slurm")
    if through:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(through["states"].items()))
        print(
            f"\nCenter {through['center']} ran its jobs through a real Slurm: "
            f"{through['slurm_jobs']} Slurm jobs ({states or 'none'}); "
            f"its logs in {through['root']}/log"
        )
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
        ["CENTER", "HUB", *money, "NAME"],
        [
            (*row, name)
            for row, name in zip(
                _allocation_rows(
                    summary["by_center"],
                    {**totals, "center_id": "total", "hub": ""},
                    ("center_id", "hub"),
                ),
                [*(c["name"] for c in summary["by_center"]), ""],
                strict=True,
            )
        ],
    )


@command
def demo(args: argparse.Namespace) -> int:
    from cli.federation import LocalFederation
    from identity import Role
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
    slurm_center = _slurm_center(centers, args.slurm_center) if args.backend == "slurm" else None
    slurm: LocalSlurm | None = None
    started = time.monotonic()
    keep = False
    try:
        if slurm_center is not None:
            from cli.slurm_local import LocalSlurm

            gpus = slurm_center.pools[0].devices_total
            slurm = LocalSlurm(root=root / "slurm", gpus=gpus, cpus=max(16, gpus))
            progress.say(f"starting a one-node Slurm with {gpus} fake GPUs in {slurm.root}")
            slurm.start()
        progress.say(f"starting a broker and {len(centers)} centers in {root}")
        fed.start_broker(port=args.port)
        for center in centers:
            if slurm is not None and center is slurm_center:
                progress.say(f"center {center.center_id} runs its jobs through Slurm")
                fed.start_agent(center, backend_toml=slurm.backend_toml([center.pools[0].pool_id]))
            else:
                fed.start_agent(center)
        with contextlib.ExitStack() as clients:
            # Over mutual TLS: the coordinator reads the queue, the allocation and the
            # ledger; each tenant's user submits that tenant's jobs.
            client = clients.enter_context(fed.client(role=Role.COORDINATOR))
            users = {t: clients.enter_context(fed.client(t)) for t in TENANTS}
            _wait_connected(client, len(centers), timeout_s=30)
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
            jobs: tuple[Job, ...] = ()
            last_change, last_counts = time.monotonic(), dict[str, int]()
            while time.monotonic() < deadline:
                now = time.monotonic() - t0
                while pending and pending[0].at_s <= now:
                    user = users[TENANTS[len(ids) % len(TENANTS)]]
                    ids.append(user.submit(pending.pop(0).spec).job_id)
                jobs = client.list_jobs().jobs
                counts = _counts(jobs)
                done = sum(1 for j in jobs if j.state.terminal)
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
            ran = sum(1 for j in jobs if j.state.terminal and j.center_id is not None)
            ledger = _ledger_summary(client, fed, len(centers), ran)
            summary = summarise(jobs, client.centers(), _ledger_records(Path(ledger["db"])))
            summary["ledger"] = ledger
            if slurm is not None and slurm_center is not None:
                summary["slurm"] = _slurm_summary(slurm, slurm_center.center_id)
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
            # Even when no one reads any more (`icx demo | head`), stop every process.
            with contextlib.suppress(BrokenPipeError):
                progress.say("stopping the federation")
            fed.stop()
            if slurm is not None:
                slurm.stop()
            if not args.dir:  # a folder of our own, with the throw-away root key: gone
                shutil.rmtree(root, ignore_errors=True)
        elif slurm is not None:
            print(
                f"Slurm keeps running too (SLURM_CONF={slurm.conf}); stop it with:\n"
                f"  kill {' '.join(map(str, slurm.pids))}",
                file=sys.stderr,
            )


def _slurm_center(centers: Sequence[CenterDescriptor], center_id: str) -> CenterDescriptor:
    """The center whose jobs go through Slurm: `center_id`, else the largest center
    with one pool."""
    if center_id:
        for center in centers:
            if center.center_id == center_id and len(center.pools) == 1:
                return center
        raise InvalidArgument(f"--slurm-center {center_id!r}: no such center with one pool")
    single = [c for c in centers if len(c.pools) == 1]
    if not single:
        raise InvalidArgument("--backend slurm needs a center with one pool; the demo has none")
    return max(single, key=lambda c: c.pools[0].devices_total)


def _slurm_summary(slurm: LocalSlurm, center_id: str) -> dict[str, Any]:
    """What Slurm itself says it ran for the center."""
    from node_agent.backends._slurm import JOB_PREFIX, job_states

    mine = [j for j in slurm.jobs() if str(j.get("name", "")).startswith(JOB_PREFIX)]
    states: dict[str, int] = {}
    for j in mine:
        state = "/".join(sorted(job_states(j)))
        states[state] = states.get(state, 0) + 1
    return {"center": center_id, "slurm_jobs": len(mine), "states": states, "root": str(slurm.root)}


def _ledger_summary(
    client: BrokerClient, fed: LocalFederation, centers: int, ran: int
) -> dict[str, Any]:
    """The signed usage log after the run. A center reports a run's usage just after the
    run ends, so wait (up to 10 s) until the checkpoint holds a record for each of the
    `ran` jobs that ended on a center."""
    from broker.ledger import ledger_paths

    def usage_records(size: int) -> int:
        return size - 1 - centers  # less the log's own key and each center's

    deadline = time.monotonic() + 10
    while True:
        lines = client.checkpoint().splitlines()
        size = int(lines[1])
        if usage_records(size) >= ran or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {
        "entries": size,
        "usage_records": usage_records(size),
        "origin": lines[0],
        "root": lines[2],
        "db": str(ledger_paths(fed.db)[0]),
    }


def _ledger_records(path: Path) -> list[UsageRecord]:
    """The usage records in the broker's ledger file, read with the ledger library (the
    broker keeps writing it; SQLite's WAL lets this read alongside)."""
    from ledger import LedgerStore, Log

    with LedgerStore(path) as store:
        return [record for _, record in Log(store).records()]


def _wait_connected(client: BrokerClient, n: int, timeout_s: float) -> None:
    from core.errors import Unavailable

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for c in client.centers() if c.connected and c.offer is not None) >= n:
            return
        time.sleep(0.1)
    raise Unavailable(f"not all {n} centers connected within {timeout_s} s")


def _print_keep(fed: LocalFederation, as_json: bool) -> int:
    from identity import Role

    pids: dict[str, int | None] = {
        "broker": fed.broker.pid if fed.broker else None,
        **{f"agent-{cid}": child.pid for cid, child in fed.agents.items()},
    }
    # Member folders to reach the broker with (--identity DIR or $ICX_CONFIG): the
    # coordinator's, and a user of the first tenant's.
    coordinator = fed.authority.folder / "coordinator"
    user = fed.member(f"{TENANTS[0]}.user", Role.USER, tenant=TENANTS[0])
    info = {
        "broker": fed.address,
        "db": str(fed.db),
        "root": str(fed.root),
        "metrics_port": fed.metrics_port,
        "federation": str(fed.authority.folder),
        "coordinator": str(coordinator),
        "user": {"tenant": TENANTS[0], "identity": str(user)},
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
The federation keeps running over mutual TLS (logs in {fed.root}/logs).
As the coordinator (sees every tenant's jobs, reads rounds and the whole ledger):
  export ICX_BROKER={fed.address}
  {icx} whoami --identity {coordinator}
  {icx} centers --identity {coordinator}    # the 17 centers and their free devices
  {icx} jobs --all --identity {coordinator} # every tenant's jobs, newest first
  {icx} admin dump-round --identity {coordinator} --out round.json
As a user of tenant {TENANTS[0]} (submits, sees and cancels only {TENANTS[0]}'s jobs):
  export ICX_CONFIG={user}
  {icx} quote --devices 2 --accelerator ascend-910 --hours 1
  {icx} submit --devices 2 --accelerator ascend-910 --hours 1 -- sh -c 'echo hi; sleep 5'
  {icx} jobs        # newest first
  {icx} logs -f JOB # follow a job's output
  {icx} ledger checkpoint
  curl -s 127.0.0.1:{fed.metrics_port}/metrics | grep icx_
The federation's root and its coordinator are in {fed.authority.folder}.
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
            "progress, print the allocation by hub and center as the broker's ledger "
            "recorded it, and stop."
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
    p.add_argument(
        "--backend",
        choices=("process", "slurm"),
        default="process",
        help="slurm: one center runs its jobs through a one-node Slurm started for the "
        "demo (needs root and Debian's slurmctld slurmd slurm-client munge)",
    )
    p.add_argument(
        "--slurm-center",
        default="",
        metavar="ID",
        help="with --backend slurm: the center that uses Slurm (default: the largest "
        "center with one pool)",
    )
    p.add_argument("--port", type=int, default=0, help="broker port (default: any free one)")
    p.add_argument(
        "--dir",
        help="keep the databases and logs here (default: a temporary folder, removed at the end "
        "unless --keep)",
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
