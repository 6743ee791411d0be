"""The user's commands: submit, status, jobs, cancel, centers, logs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cli._client import add_broker_flag, connect
from cli._jobspec import cpus_to_milli, hours_to_s, load_spec, parse_deadline, yuan_to_minor
from cli._output import EXIT_FAILED, EXIT_OK, command, print_json, print_table
from core.errors import IcxError, InvalidArgument, InvalidJobSpec
from core.money import CURRENCY, format_major
from core.states import JobState
from core.types import Job, JobEvent, JobSpec, LogChunk
from core.views import CenterStatus, QuoteLine


def _common(p: argparse.ArgumentParser) -> None:
    add_broker_flag(p)
    p.add_argument("--tenant", help="act as this tenant (default: $ICX_TENANT or 'default')")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def job_dict(job: Job) -> dict[str, Any]:
    spec = job.spec
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "name": spec.name,
        "state": str(job.state),
        "accelerator": spec.accelerator,
        "devices": spec.devices,
        "estimated_seconds": spec.estimated_s,
        "center_id": job.center_id,
        "pool_id": job.pool_id,
        # Federation: the peer broker whose center runs it, and (at that peer) the broker
        # it was submitted to; "" when not forwarded.
        "broker": job.broker,
        "home": job.home,
        "device_indices": list(job.device_indices),
        "attempts": job.attempts,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "explanation": job.explanation,
        "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "command": list(spec.command),
        "image": spec.image,
        "memory_mb": spec.memory_mb,
        "millicpus": spec.millicpus,
        "network": spec.network,
    }


def _runs_in(spec: JobSpec) -> str:
    """The container and its limits, for people: `icx/busybox:1, 512 MiB, 1.5 CPUs`."""
    parts = [spec.image or "no container"]
    if spec.memory_mb:
        parts.append(f"{spec.memory_mb} MiB")
    if spec.millicpus:
        parts.append(f"{spec.millicpus / 1000:g} CPUs")
    if spec.network:
        parts.append("network")
    return ", ".join(parts)


def where_it_runs(place: str, job: Job) -> str:
    """`place` (a center, or center/pool; "-" when none yet) with the broker it was
    forwarded to or by: `west-1 via broker-west` at the job's home,
    `west-1, forwarded by broker-east` at the peer broker that runs it."""
    if job.broker:
        return f"{place} via {job.broker}" if job.center_id else f"via {job.broker}"
    if job.home:
        return f"{place}, forwarded by {job.home}"
    return place


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------ submit


def spec_from_args(args: argparse.Namespace, *, quoting: bool = False) -> JobSpec:
    """The spec from a TOML file or from flags; a quote needs no command."""
    if args.spec_file:
        if args.cmd:
            raise InvalidJobSpec("give either a spec file or a command after --, not both")
        given = [
            flag
            for flag, value, unset in (
                ("--devices", args.devices, None),
                ("--hours", args.hours, None),
                ("--region", args.region, None),
                ("--max-price", args.max_price, None),
                ("--deadline", args.deadline, None),
                ("--name", args.name, None),
                ("--accelerator", args.accelerator, "any"),
                ("--priority", args.priority, 0),
                ("--image", args.image, None),
                ("--memory-mb", args.memory_mb, None),
                ("--cpus", args.cpus, None),
                ("--network", args.network, False),
            )
            if value != unset
        ]
        if given:  # silently preferring one over the other would surprise someone
            raise InvalidJobSpec(
                f"{', '.join(given)} cannot be combined with a spec file: "
                "put them in the file, or give flags and a command after --"
            )
        return load_spec(Path(args.spec_file))
    if not args.cmd and not quoting:
        raise InvalidJobSpec("give a spec file or a command after -- (see icx submit --help)")
    if args.devices is None or args.hours is None:
        raise InvalidJobSpec("--devices and --hours are required without a spec file")
    return JobSpec(
        name=args.name or "",
        accelerator=args.accelerator,
        devices=args.devices,
        estimated_s=hours_to_s(args.hours, "--hours"),
        allowed_regions=tuple(args.region or ()),
        max_price_minor=None
        if args.max_price is None
        else yuan_to_minor(args.max_price, "--max-price"),
        deadline_ms=None if args.deadline is None else parse_deadline(args.deadline),
        priority=args.priority,
        command=tuple(args.cmd) or ("(quote)",),
        image=args.image or "",
        memory_mb=args.memory_mb or 0,
        millicpus=cpus_to_milli(args.cpus or 0, "--cpus"),
        network=args.network,
    )


@command
def submit(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    with connect(args) as client:
        job = client.submit(spec, request_id=args.request_id or "")
    if args.json:
        print_json(job_dict(job))
    else:
        print(job.job_id)
    return EXIT_OK


# ------------------------------------------------------------ status, jobs


@command
def status(args: argparse.Namespace) -> int:
    from cli.bill_cmd import bill_dict, broker_flags, print_bill

    with connect(args) as client:
        job = client.get_job(args.job)
        d = job_dict(job)
        # The bill so far, from the ledger: one record per metering interval of each run;
        # none from a broker that keeps no ledger or predates the call.
        try:
            records = client.job_records(job.job_id)
        except IcxError:
            records = None
        if records is not None:
            d["bill"] = bill_dict(job.job_id, records, broker_flags(args, client.address))
    if args.json:
        print_json(d)
        return EXIT_OK
    place = f"{d['center_id']}/{d['pool_id']}" if d["center_id"] else "-"
    rows = [
        ("job", d["job_id"]),
        ("state", d["state"]),
        ("tenant", d["tenant"]),
        ("asks", f"{d['devices']} x {d['accelerator']} for {d['estimated_seconds']} s"),
        ("runs in", _runs_in(job.spec)),
        ("center", where_it_runs(place, job)),
        ("devices", ",".join(map(str, d["device_indices"])) or "-"),
        ("attempts", d["attempts"]),
        ("exit code", "-" if d["exit_code"] is None else d["exit_code"]),
        ("submitted", _when(d["submitted_at_ms"])),
        ("reason", d["reason"] or "-"),
        ("explanation", d["explanation"] or "-"),
    ]
    for key, value in rows:
        print(f"{key:<12} {value}")
    if "bill" in d:
        print("bill")
        print_bill(d["bill"], indent="  ")
    return EXIT_OK


@command
def jobs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise InvalidArgument(f"--limit must be >= 0 (0: all), got {args.limit}")
    states = [JobState(s) for s in args.state or ()]
    with connect(args) as client:
        page = client.list_jobs(states, limit=0 if args.all else args.limit)
    if args.json:
        print_json([job_dict(j) for j in page.jobs])
    else:
        print_table(
            ["JOB", "STATE", "DEVICES", "ACCELERATOR", "CENTER", "ATTEMPTS", "NAME"],
            [
                (
                    j.job_id,
                    str(j.state),
                    j.spec.devices,
                    j.spec.accelerator,
                    where_it_runs(j.center_id or "-", j),
                    j.attempts,
                    j.spec.name,
                )
                for j in page.jobs
            ],
        )
    if page.more:
        # On stderr: what is on stdout stays the table (or the JSON) and nothing else.
        print(
            f"... {page.more} more of {page.total} jobs not shown (--limit N or --all)",
            file=sys.stderr,
        )
    return EXIT_OK


@command
def cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.cancel(args.job)
    if args.json:
        print_json(job_dict(job))
    else:
        print(f"{job.job_id} {job.state}")
    return EXIT_OK


# ---------------------------------------------------------------- centers


def center_dict(c: CenterStatus) -> dict[str, Any]:
    pools = c.offer.pools if c.offer is not None else c.center.pools
    return {
        "center_id": c.center.center_id,
        "name": c.center.name,
        "region": c.center.region,
        "connected": c.connected,
        "last_seen_ms": c.last_seen_ms,
        "jobs_running": c.jobs_running,
        "pue": c.center.pue_milli / 1000,
        "grid_g_co2_per_kwh": c.center.grid_g_co2_per_kwh,
        "pools": [
            {
                "pool_id": p.pool_id,
                "accelerator": p.accelerator,
                "devices_total": p.devices_total,
                "devices_free": p.devices_free if c.offer is not None else None,
                "price_minor_per_device_hour": p.price_minor_per_device_hour,
                "currency": CURRENCY,
            }
            for p in pools
        ],
    }


@command
def centers(args: argparse.Namespace) -> int:
    with connect(args) as client:
        items = [center_dict(c) for c in client.centers()]
    if args.json:
        print_json(items)
        return EXIT_OK
    rows = []
    for c in items:
        for p in c["pools"]:
            rows.append(
                (
                    c["center_id"],
                    c["region"],
                    "up" if c["connected"] else "down",
                    p["accelerator"],
                    "-" if p["devices_free"] is None else p["devices_free"],
                    p["devices_total"],
                    format_major(p["price_minor_per_device_hour"]),
                    c["jobs_running"],
                    c["name"],
                )
            )
    print_table(
        ["CENTER", "REGION", "LINK", "ACCELERATOR", "FREE", "TOTAL", f"{CURRENCY}/DEV-H", "JOBS",
         "NAME"],
        rows,
    )  # fmt: skip
    return EXIT_OK


# ------------------------------------------------------------------- logs


def _item_dict(item: JobEvent | LogChunk) -> dict[str, Any]:
    if isinstance(item, LogChunk):
        return {
            "type": "log",
            "seq": item.seq,
            "stream": item.stream,
            "data": item.data.decode("utf-8", errors="replace"),
        }
    return {
        "type": "event",
        "seq": item.seq,
        "at_ms": item.at_ms,
        "state": str(item.state),
        "center_id": item.center_id,
        "message": item.message,
    }


@command
def logs(args: argparse.Namespace) -> int:
    """Print a job's output (with --json: its events and output, one JSON object a line);
    with --follow, until the job ends, then exit with its result."""
    final: JobState | None = None
    with connect(args) as client:
        for item in client.watch(args.job, include_logs=True, follow=args.follow):
            if args.json:
                print(json.dumps(_item_dict(item)), flush=True)
            elif isinstance(item, LogChunk):
                out = sys.stdout if item.stream == "stdout" else sys.stderr
                out.buffer.write(item.data)
                out.flush()
            if isinstance(item, JobEvent) and item.state.terminal:
                final = item.state
    if args.follow and final is not None and final != JobState.SUCCEEDED:
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------ quote


def quote_dict(q: QuoteLine) -> dict[str, Any]:
    return {
        "rank": q.rank,
        "center_id": q.center_id,
        "pool_id": q.pool_id,
        "region": q.region,
        "accelerator": q.accelerator,
        "price_minor_per_device_hour": q.price_minor_per_device_hour,
        "charge_minor": q.charge_minor,
        "currency": CURRENCY,
        "rtt_ms": q.rtt_ms,
        "transfer_ms": q.transfer_ms,
        "energy_wh": q.energy_wh,
        "carbon_g": q.carbon_g,
        "has_capacity": q.has_capacity,
        "feasible": q.feasible,
        "reason": q.reason,
    }


@command
def quote(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, quoting=True)
    with connect(args) as client:
        lines = client.quote(spec)
    if args.json:
        print_json([quote_dict(q) for q in lines])
        return EXIT_OK if lines else EXIT_FAILED
    if not lines:
        print(f"no center could run it: {_wanted(spec)}")
        return EXIT_FAILED
    print_table(
        ["#", "CENTER", "REGION", "ACCELERATOR", f"{CURRENCY}/DEV-H", f"CHARGE {CURRENCY}",
         "RTT MS", "KWH", "CO2 KG", "NOW"],
        [
            (q.rank, q.center_id, q.region, q.accelerator,
             format_major(q.price_minor_per_device_hour), format_major(q.charge_minor),
             q.rtt_ms, round(q.energy_wh / 1000, 1), round(q.carbon_g / 1000, 1),
             "yes" if q.placeable_now else (q.reason or "no"))
            for q in lines
        ],
    )  # fmt: skip
    return EXIT_OK


def _wanted(spec: JobSpec) -> str:
    """What a quote that found nothing looked for, in words."""
    what = "any accelerator" if spec.accelerator == "any" else spec.accelerator
    where = ", ".join(spec.allowed_regions) or "any region"
    image = f"the image {spec.image}" if spec.image else "no container image"
    return f"{spec.devices} x {what} in {where}, running {image}"


# --------------------------------------------------------------- register


def _spec_flags(p: argparse.ArgumentParser) -> None:
    """The job spec as a TOML file or as flags (submit and quote)."""
    p.add_argument("spec_file", nargs="?", help="job spec (TOML)")
    p.add_argument("--devices", type=int, help="gang size: devices in one pool")
    p.add_argument("--accelerator", default="any", help="accelerator model id, or 'any' (default)")
    p.add_argument("--hours", type=float, help="estimated run time in hours")
    p.add_argument("--region", action="append", help="an allowed region (repeatable; default: any)")
    p.add_argument(
        "--max-price", type=float, help=f"budget for the whole job, in {CURRENCY} (major units)"
    )
    p.add_argument("--deadline", help="latest completion, ISO 8601 with zone")
    p.add_argument("--priority", type=int, default=0, help="0..100 (default 0)")
    p.add_argument("--name", help="a name for humans")
    p.add_argument("--image", help="container image to run in, with its tag (e.g. icx/busybox:1)")
    p.add_argument("--memory-mb", type=int, help="memory limit in MiB (container centers)")
    p.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5 (container centers)")
    p.add_argument(
        "--network", action="store_true", help="the job needs the network (container centers)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a job from a TOML spec or from flags",
        description=(
            "Submit a job: `icx submit job.toml` or "
            "`icx submit --devices N --accelerator M --hours H -- CMD ARGS`. "
            "Prints the job id once the broker has it on disk."
        ),
    )
    _spec_flags(p)
    p.add_argument(
        "--request-id", help="idempotency key: a retry with the same key returns the same job"
    )
    _common(p)
    p.set_defaults(func=submit, takes_command=True)

    p = sub.add_parser(
        "quote",
        help="rank the centers that could run a job, before submitting it",
        description="Quote a job (a TOML spec or the same flags as submit): each candidate "
        "center with price, charge, latency, energy and carbon, and whether it has the "
        "devices free now.",
    )
    _spec_flags(p)
    _common(p)
    p.set_defaults(func=quote, takes_command=True)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job")
    _common(p)
    p.set_defaults(func=status)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in JobState],
        help="only jobs in this state (repeatable)",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--limit", type=int, default=50, help="at most this many (default 50; 0: all)"
    )
    shown.add_argument("--all", action="store_true", help="every job")
    _common(p)
    p.set_defaults(func=jobs)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job")
    _common(p)
    p.set_defaults(func=cancel)

    p = sub.add_parser("centers", help="list the federation's centers and their free capacity")
    _common(p)
    p.set_defaults(func=centers)

    p = sub.add_parser(
        "logs",
        help="print a job's output",
        description="Print a job's output as it ran (stdout to stdout, stderr to stderr). "
        "With --json: its events and its output, one JSON object a line.",
    )
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    _common(p)
    p.set_defaults(func=logs)
