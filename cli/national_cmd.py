"""`icx national`: the coordinator's report: per hub, the busiest centers, flows between
hubs, money (the signed statement of a month) and the matcher's rounds, as text
tables, JSON, CSV, or one self-contained HTML file (`--html report.html`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from cli._client import (
    add_broker_flag,
    broker_address,
    config_folder,
    credentials,
    reachable_broker,
    tenant,
)
from cli._output import EXIT_OK, command, print_table
from core.errors import InvalidArgument


async def _gather(args: argparse.Namespace, period_ms: int, month: str) -> dict[str, Any]:
    from client import AsyncBrokerClient
    from dashboard.figures import BrokerFigures
    from dashboard.report import gather

    creds = credentials(args)
    folder = None if creds is None else config_folder(args.identity)
    address = reachable_broker(broker_address(args.broker, folder))
    client = AsyncBrokerClient(address, creds, tenant=tenant(None), timeout_s=60.0)
    figures = BrokerFigures(client)
    try:
        return await gather(figures, period_ms, month)
    finally:
        await figures.close()


def _shown(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else value


@command
def cmd_national(args: argparse.Namespace) -> int:
    from dashboard.periods import duration_ms, month_of
    from dashboard.report import tables, to_csv, to_html
    from ledger.settlement import period_bounds

    period_ms = duration_ms(args.period)
    month = args.month or month_of()
    period_bounds(month)  # refuses a month that is not YYYY-MM before any call
    if args.top < 1:
        raise InvalidArgument(f"--top must be 1 or more, got {args.top}")
    if args.html:  # checked before the broker is asked: ECharts must be installed
        from dashboard.assets import require_echarts

        require_echarts()
    report = asyncio.run(_gather(args, period_ms, month))
    if args.html:
        Path(args.html).write_text(to_html(report), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
        return EXIT_OK
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    if args.csv:
        sys.stdout.write(to_csv(report, args.top))
        return EXIT_OK
    money = report["money"]
    print(
        f"broker {report['broker']}, the last {args.period}; money: {month} in "
        f"{money['currency']} minor units, statement signed by {money['signed_by']} at "
        f"checkpoint size {money['checkpoint']['size']}"
    )
    for name, headers, rows in tables(report, args.top):
        print()
        print(f"{name}:" if rows else f"{name}: none")
        if rows:
            print_table([h.upper() for h in headers], [[_shown(v) for v in r] for r in rows])
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "national",
        help="the coordinator's report: hubs, centers, flows, money, matcher (text, JSON, "
        "CSV or one HTML file)",
        description=(
            "Report a broker's national figures over the last --period: per hub, the "
            "busiest centers, the flows of work between hubs, the matcher's last rounds, "
            "and the money of a month as the ledger's signed statement has it."
        ),
    )
    add_broker_flag(p)
    p.add_argument(
        "--period", default="24h", help="the figures' period, ending now (default 24h; e.g. 1h, 7d)"
    )
    p.add_argument(
        "--month", default="", metavar="YYYY-MM", help="the settlement month (default: this one)"
    )
    p.add_argument("--top", type=int, default=10, help="centers listed (default 10, busiest)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="everything as one JSON document")
    out.add_argument(
        "--csv", action="store_true", help="the tables as CSV, each row led by its table"
    )
    out.add_argument(
        "--html", metavar="FILE", help="one self-contained HTML file (charts, no network)"
    )
    p.set_defaults(func=cmd_national)
