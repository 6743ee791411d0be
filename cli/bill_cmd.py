"""`icx bill`: the user's bill, from the broker's signed ledger.

`icx bill JOB`: what the job used and cost (device-hours, energy, carbon, the charge with
its currency), summed from its usage records in force, and each record (one per metering
interval of each run) with its ledger index and the commands that prove it offline.
`icx bill --period YYYY-MM`: the tenant's jobs charged that month, with totals that are
the tenant's settlement for the month (`icx settle`).

Tables print major units and kWh, kg; `--json` keeps the integers (`*_minor`, Wh, g).
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING, Any

from cli._client import add_broker_flag, connect
from cli._output import EXIT_OK, command, print_json, print_table
from core.errors import InvalidArgument
from core.money import format_major

if TYPE_CHECKING:
    from ledger.bill import JobTotals, LoggedRecord

S_PER_HOUR = 3600
TRUST_FILE = "trust.json"


def bill_dict(job_id: str, records: list[LoggedRecord], prove: list[str]) -> dict[str, Any]:
    """The bill of one job from its logged records: totals over the records in force
    (a correction replaces the record it names) and each record as logged. `prove` is
    the `--broker`/identity part of the commands that prove a record."""
    from ledger.bill import job_totals
    from ledger.settlement import effective_records

    size = max((r.index for r in records), default=-1) + 1
    effective = effective_records(((r.index, r.record) for r in records), size)
    totals = job_totals(effective.values())
    tenant = records[0].record.consumer if records else ""
    out: dict[str, Any] = {
        "job_id": job_id,
        "tenant": tenant,
        "totals": [_totals_dict(t) for t in totals],
        "trust": _command(["icx", "ledger", "trust", *prove, "-o", TRUST_FILE]),
        "records": [],
    }
    for logged in records:
        r = logged.record
        bundle = r.record_id.replace("/", "_") + ".proof.json"
        out["records"].append(
            {
                "index": logged.index,
                "record_id": r.record_id,
                "kind": str(r.kind),
                "refs": r.refs,
                "center": r.producer,
                "start_ms": r.start_ms,
                "end_ms": r.end_ms,
                "wall_s": r.wall_s,
                "offset_s": r.offset_s,
                "devices": r.devices,
                "device_s": r.device_s,
                "accelerator": r.accelerator,
                "energy_wh": r.energy_wh,
                "carbon_g": r.carbon_g,
                "unit_price_minor": r.unit_price_minor,
                "charge_minor": r.charge_minor,
                "currency": r.currency,
                "prove": _command(["icx", "ledger", "prove", r.record_id, *prove, "-o", bundle]),
                "verify": _command(["icx", "ledger", "verify", bundle, "--policy", TRUST_FILE]),
            }
        )
    return out


def _totals_dict(t: JobTotals) -> dict[str, Any]:
    return {
        "currency": t.currency,
        "records": t.records,
        "device_s": t.device_s,
        "energy_wh": t.energy_wh,
        "carbon_g": t.carbon_g,
        "charge_minor": t.charge_minor,
    }


def _command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _hours(device_s: int) -> str:
    return f"{device_s / S_PER_HOUR:,.3f}"


def _kilo(value: int) -> str:
    return f"{value / 1000:,.3f}"


def print_bill(bill: dict[str, Any], indent: str = "") -> None:
    """The bill of one job as text: its totals, then its records and how to prove them."""
    if not bill["records"]:
        print(f"{indent}no usage logged for job {bill['job_id']} yet")
        return
    for t in bill["totals"]:
        print(f"{indent}device-hours {_hours(t['device_s'])} ({t['device_s']} device-s)")
        print(f"{indent}energy       {_kilo(t['energy_wh'])} kWh")
        print(f"{indent}carbon       {_kilo(t['carbon_g'])} kg CO2")
        charge = format_major(t["charge_minor"])
        print(f"{indent}charge       {charge} {t['currency']} ({_records(t['records'])})")
    print()
    print_table(
        ("INDEX", "RECORD", "CENTER", "WALL S", "DEVICE S", "KWH", "CO2 KG", "CHARGE"),
        [
            (r["index"], r["record_id"], r["center"], r["wall_s"], r["device_s"],
             _kilo(r["energy_wh"]), _kilo(r["carbon_g"]),
             f"{format_major(r['charge_minor'])} {r['currency']}")
            for r in bill["records"]
        ],
    )  # fmt: skip
    print()
    records = bill["records"]
    shown = records if len(records) <= 2 else [records[0], records[-1]]
    which = "each record" if len(records) <= 2 else "the first and the last record"
    print(f"{indent}prove a record offline (the trust policy once, then {which}):")
    print(f"{indent}  {bill['trust']}")
    for r in shown:
        print(f"{indent}  {r['prove']} && {r['verify']}")
    if len(records) > 2:
        print(f"{indent}  (the other {len(records) - 2} the same way, by record id; --json "
              "lists every command)")  # fmt: skip


def broker_flags(args: argparse.Namespace, address: str) -> list[str]:
    """The flags that point `icx ledger prove` at the same broker as the same member."""
    flags = ["--broker", address]
    if getattr(args, "identity", None):
        flags += ["--identity", args.identity]
    if getattr(args, "insecure", False):
        flags.append("--insecure")
    return flags


@command
def bill(args: argparse.Namespace) -> int:
    if (args.job is None) == (args.period is None):
        raise InvalidArgument("give a JOB or --period YYYY-MM")
    if args.job is not None:
        if args.bill_tenant:
            raise InvalidArgument("--tenant goes with --period: a job's bill is its own tenant's")
        with connect(args, timeout_s=30.0) as client:
            records = client.job_records(args.job)
            out = bill_dict(args.job, records, broker_flags(args, client.address))
        if args.json:
            print_json(out)
        else:
            print(f"job {args.job}" + (f" (tenant {out['tenant']})" if out["tenant"] else ""))
            print_bill(out)
        return EXIT_OK
    from ledger.settlement import period_bounds

    period_bounds(args.period)  # bad input fails here, before the broker is asked
    with connect(args, timeout_s=60.0) as client:
        tenant_bill = client.tenant_bill(args.period, tenant=args.bill_tenant or "")
    totals = {
        "records": sum(j.records for j in tenant_bill.jobs),
        "device_s": sum(j.device_s for j in tenant_bill.jobs),
        "energy_wh": sum(j.energy_wh for j in tenant_bill.jobs),
        "carbon_g": sum(j.carbon_g for j in tenant_bill.jobs),
        "charge_minor": sum(j.charge_minor for j in tenant_bill.jobs),
    }
    if args.json:
        print_json(
            {
                "tenant": tenant_bill.tenant,
                "period": tenant_bill.period,
                "currency": tenant_bill.currency,
                "checkpoint_size": tenant_bill.checkpoint_size,
                "totals": totals,
                "jobs": [{"job_id": j.job_id, **_totals_dict(j)} for j in tenant_bill.jobs],
            }
        )
        return EXIT_OK
    currency = tenant_bill.currency
    print(
        f"tenant {tenant_bill.tenant}, period {tenant_bill.period} (ledger checkpoint at "
        f"{tenant_bill.checkpoint_size} entries), amounts in {currency}"
    )
    rows = [
        (j.job_id, j.records, _hours(j.device_s), _kilo(j.energy_wh), _kilo(j.carbon_g),
         format_major(j.charge_minor))
        for j in tenant_bill.jobs
    ]  # fmt: skip
    rows.append(
        ("TOTAL", totals["records"], _hours(totals["device_s"]), _kilo(totals["energy_wh"]),
         _kilo(totals["carbon_g"]), format_major(totals["charge_minor"]))
    )  # fmt: skip
    print_table(("JOB", "RECORDS", "DEVICE-H", "KWH", "CO2 KG", f"CHARGE {currency}"), rows)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bill",
        help="a job's bill from the ledger, or a tenant's jobs for a month",
        description="`icx bill JOB`: the job's device-hours, energy, carbon and charge, "
        "and each usage record (one per metering interval of each run) with its ledger "
        "index and the commands that prove it offline. `icx bill --period YYYY-MM`: the "
        "tenant's jobs charged that month; the totals are the tenant's settlement.",
    )
    p.add_argument("job", nargs="?", metavar="JOB")
    p.add_argument("--period", metavar="YYYY-MM", help="a month of the tenant's jobs (UTC)")
    p.add_argument(
        "--tenant",
        dest="bill_tenant",
        metavar="TENANT",
        help="with --period, for a coordinator: whose bill (a user gets its own tenant's)",
    )
    add_broker_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=bill)


def _records(n: int) -> str:
    return "1 record" if n == 1 else f"{n} records"
