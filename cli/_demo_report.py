"""What `icx demo` reports: the allocation by hub and center as the ledgers recorded it,
where each job was submitted and where it ran, and the printed form of both."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cli._output import print_table
from core.money import CURRENCY, format_major
from core.states import JobState
from core.types import Job
from core.views import CenterStatus

if TYPE_CHECKING:
    from ledger import UsageRecord

FIGURES = (
    f"Figures are the ledger's: each run as its center metered and signed it (real "
    f"device-seconds at the pool's price, in {CURRENCY}). The demo runs the trace's jobs "
    "shortened to 1-5 s, so they are seconds of work, not the trace's hours, which a quote "
    "prices."
)
SETTLEMENT_RUNS = ("ITS JOBS RUN ELSEWHERE", "OTHERS' JOBS RUN HERE")
LEDGER_LEGEND = (
    "SIZE counts every entry: RECORDS (runs here), ACCEPTED (its jobs' runs elsewhere), key events."
)
_SUMS = ("jobs", "runs", "device_s", "charge_minor", "energy_wh", "carbon_g")


def counts(jobs: Iterable[Job]) -> dict[str, int]:
    """Jobs by state."""
    out: dict[str, int] = {}
    for j in jobs:
        out[str(j.state)] = out.get(str(j.state), 0) + 1
    return out


def _zero(**keys: Any) -> dict[str, Any]:
    return {**keys, **dict.fromkeys(_SUMS, 0), "currency": CURRENCY}


def _total(rows: Sequence[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    total = _zero(**keys)
    for row in rows:
        for key in _SUMS:
            total[key] += row[key]
    return total


def summarise(
    submitted: Mapping[str, Sequence[Job]],
    centers: Sequence[CenterStatus],
    hub_of: Mapping[str, str],
    records: Iterable[UsageRecord],
) -> dict[str, Any]:
    """Allocation by center and hub, and where jobs ran against where they were
    submitted. `submitted` is each hub's jobs, those its broker took from users (a job
    forwarded to another hub is counted once, at home); `hub_of` maps every center to
    the hub whose broker it joined. Every center (those that ran nothing too) and every
    hub gets a row, and a totals row. Jobs are the brokers' succeeded jobs; runs,
    device-seconds, charge, energy and carbon are the ledgers' usage records, as the
    centers signed them."""
    jobs = [j for hub_jobs in submitted.values() for j in hub_jobs]
    by_center: dict[str, dict[str, Any]] = {
        c.center.center_id: _zero(center_id=c.center.center_id, hub=hub_of[c.center.center_id],
                                  region=c.center.region, name=c.center.name)
        for c in sorted(centers, key=lambda c: c.center.center_id)
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
    hubs: dict[str, list[dict[str, Any]]] = {hub: [] for hub in submitted}
    for row in by_center.values():
        hubs.setdefault(row["hub"], []).append(row)
    by_hub = [_total(rows, hub=hub, centers=len(rows)) for hub, rows in hubs.items()]
    state_counts = counts(jobs)
    return {
        "jobs_submitted": len(jobs),
        "jobs_succeeded": state_counts.get("succeeded", 0),
        "jobs_failed": state_counts.get("failed", 0),
        "jobs_cancelled": state_counts.get("cancelled", 0),
        "jobs_unplaced": state_counts.get("queued", 0),
        "jobs_unfinished": state_counts.get("claimed", 0) + state_counts.get("running", 0),
        "unplaced": [
            {"job_id": j.job_id, "reason": j.explanation or j.reason}
            for j in jobs
            if j.state == JobState.QUEUED
        ],
        "cross_hub": cross_hub(submitted, hub_of),
        "figures": FIGURES,
        "by_hub": sorted(by_hub, key=lambda r: (-r["device_s"], r["hub"])),
        "by_center": list(by_center.values()),
        "totals": _total(list(by_center.values()), centers=len(by_center)),
    }


def cross_hub(submitted: Mapping[str, Sequence[Job]], hub_of: Mapping[str, str]) -> dict[str, Any]:
    """Where each hub's jobs ran: one row per hub of submission, counting its jobs by the
    hub of the center that ran them (`ran_at`), and those that never reached a center
    (`not_run`: still queued, or cancelled before); a row's counts add up to its `jobs`.
    `forwarded` counts the jobs that ran at another hub than their own."""
    hubs = list(submitted)
    rows: list[dict[str, Any]] = []
    for hub, jobs in submitted.items():
        ran_at = dict.fromkeys(hubs, 0)
        not_run = 0
        for j in jobs:
            if j.center_id is None:
                not_run += 1
            else:
                ran_at[hub_of[j.center_id]] += 1
        rows.append({"submitted_at": hub, "ran_at": ran_at, "not_run": not_run, "jobs": len(jobs)})
    forwarded = sum(n for r in rows for to, n in r["ran_at"].items() if to != r["submitted_at"])
    return {"hubs": hubs, "rows": rows, "forwarded": forwarded}


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


def print_cross_hub(table: dict[str, Any]) -> None:
    hubs = table["hubs"]
    rows: list[tuple[object, ...]] = [
        (r["submitted_at"], *(r["ran_at"][h] for h in hubs), r["not_run"], r["jobs"])
        for r in table["rows"]
    ]
    column = [sum(r["ran_at"][h] for r in table["rows"]) for h in hubs]
    not_run = sum(r["not_run"] for r in table["rows"])
    rows.append(("total", *column, not_run, sum(r["jobs"] for r in table["rows"])))
    print(
        "\nWhere jobs ran (a row per hub whose broker took them, a column per hub that ran them):"
    )
    print_table(["SUBMITTED AT", *hubs, "NOT RUN", "JOBS"], rows)
    forwarded = (
        f"{table['forwarded']} of the {sum(column)} jobs that ran were forwarded to another "
        "hub's broker (matched on its gossiped offer summary) and followed from home."
    )
    print(textwrap.fill(forwarded, width=88))


def print_settlement(s: dict[str, Any], hubs: Sequence[str]) -> None:
    """What each hub owes the hubs that ran its forwarded jobs, and is owed, from the
    ledgers (every pair of hubs in the JSON's `flows`): a row per hub, in `hubs`' order
    (those without flows too)."""
    cur = s["currency"]
    text = (
        f"Settlement between hubs for {s['period']}, this month: each home hub's ledger "
        f"accepted {s['accepted_records']} of the {s['forwarded_records']} usage records of "
        "its forwarded runs, each checked against the entry in the owner hub's log. A hub "
        "owes for its jobs run elsewhere and is owed for others' jobs run here; the last two "
        "columns count those runs."
    )
    print("\n" + textwrap.fill(text, width=88))
    rows: dict[str, list[int]] = {hub: [0, 0, 0, 0] for hub in [*hubs, *s["hub_positions"]]}
    for f in s["flows"]:
        rows[f["payer"]][0] += f["amount_minor"]
        rows[f["payer"]][2] += f["records"]
        rows[f["payee"]][1] += f["amount_minor"]
        rows[f["payee"]][3] += f["records"]
    net = s["hub_positions"]
    print_table(
        ["HUB", f"OWES {cur}", f"IS OWED {cur}", f"NET {cur}", *SETTLEMENT_RUNS],
        [
            (hub, format_major(o), format_major(i), format_major(net.get(hub, 0)), out, into)
            for hub, (o, i, out, into) in rows.items()
        ],
    )
    print(
        f"Positions sum to {format_major(s['hub_positions_sum_minor'])} {cur} between hubs and "
        f"{format_major(s['positions_sum_minor'])} {cur} between tenants and centers."
    )


def print_report(
    summary: dict[str, Any],
    seconds: dict[str, float],
    *,
    kept_folder: bool = False,
    still_running: bool = False,
) -> None:
    """The summary as tables. Commands that read the demo's files are shown only if
    `kept_folder` (it outlives the demo), those that ask its brokers only if
    `still_running`."""
    print()
    print(
        f"{summary['jobs_submitted']} jobs: {summary['jobs_succeeded']} succeeded, "
        f"{summary['jobs_failed']} failed, {summary['jobs_unplaced']} unplaceable, "
        f"{summary['jobs_unfinished']} unfinished "
        f"(up in {seconds['up']:.1f} s, all done in {seconds['total']:.1f} s)"
    )
    print_cross_hub(summary["cross_hub"])
    settlement = summary.get("settlement")
    if settlement:
        print_settlement(settlement, summary["cross_hub"]["hubs"])
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
            f"\nLedgers: {ledger['usage_records']} usage records, each signed by its center "
            "and countersigned by the broker of its hub:"
        )
        print_table(
            ["HUB", "RECORDS", "ACCEPTED", "CHECKPOINT", "SIZE", "ROOT"],
            [
                (b["hub"], b["usage_records"], b.get("accepted_records", ""), b["origin"],
                 b["entries"], b["root"])
                for b in ledger["brokers"]
            ],
        )  # fmt: skip
        print(LEDGER_LEGEND)
        if ledger["brokers"] and kept_folder:
            print(f"audit one offline: icx ledger audit --db {ledger['brokers'][0]['db']}")
        elif ledger["brokers"]:
            print("to audit a ledger offline, keep the ledgers: run with --dir DIR or --keep")
    if summary["unplaced"]:
        print("\nUnplaceable now (left queued, with the matcher's reason):")
        for u in summary["unplaced"][:8]:
            print(f"  {u['job_id']}: {u['reason']}")
        more = len(summary["unplaced"]) - 8
        if more > 0 and still_running:
            print(f"  ... and {more} more (as the coordinator: icx jobs --all --state queued)")
        elif more > 0:
            print(f"  ... and {more} more (--json lists them all)")
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
