"""The national report: the dashboard's figures at one moment, as JSON, as text tables,
as CSV, or as one self-contained HTML file (the page itself with ECharts, its script
and the data inlined: it opens with no network and can be mailed).

Money is the period's settlement (a month, `YYYY-MM`) as the ledger signed it; the
other figures cover the last `period` (e.g. `24h`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashboard.assets import require_echarts
from dashboard.periods import step_for

if TYPE_CHECKING:
    from dashboard.figures import BrokerFigures

STATIC = Path(__file__).parent / "static"
Report = dict[str, Any]
FIGURE_COLUMNS = (
    "devices_total", "devices_busy", "queue_length", "jobs_running", "jobs_done",
    "device_seconds", "utilisation", "energy_wh", "carbon_g", "spend_minor",
)  # fmt: skip


async def gather(figures: BrokerFigures, period_ms: int, month: str, *, rounds: int = 10) -> Report:
    """Everything the report shows, read now."""
    overview = await figures.overview(period_ms)
    series = await figures.timeseries(period_ms, step_for(period_ms))
    return {
        "generated_at_ms": int(time.time() * 1000),
        "broker": figures.client.address,
        "period_ms": period_ms,
        "overview": overview,
        "series": series,
        "rounds": await figures.rounds(rounds),
        "policy": await figures.policy_view(period_ms),
        "money": await figures.money(month),
        "statement": (await figures.statement(month, "")).decode("utf-8"),
        "checkpoint": await figures.checkpoint(),
    }


def _f(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row["figures"])


def tables(report: Report, top: int) -> list[tuple[str, Sequence[str], list[list[object]]]]:
    """The report's tables: (name, headers, rows); money in minor units, energy in Wh,
    carbon in g, device use in device-seconds, as the API gives them."""
    o = report["overview"]
    figure_cols = FIGURE_COLUMNS
    hubs = [[h["region"], _f(h)["centers"], *(_f(h)[c] for c in figure_cols)] for h in o["hubs"]]
    busiest = sorted(o["centers"], key=lambda c: -c["figures"]["device_seconds"])[:top]
    centers = [
        [c["center_id"], c["region"], *(_f(c)[k] for k in figure_cols),
         c["price_minor_per_device_hour"], c["pue_milli"], c["grid_g_co2_per_kwh"]]
        for c in busiest
    ]  # fmt: skip
    flows = [[f["from_region"], f["to_region"], f["jobs"], f["device_seconds"]] for f in o["flows"]]
    m = report["money"]
    positions = [
        [p["party"], m["currency"], p["paid_minor"], p["received_minor"], p["net_minor"],
         p["energy_wh"], p["carbon_g"]]
        for p in m["parties"]
    ]  # fmt: skip
    transfers = [[t["payer"], t["payee"], m["currency"], t["amount_minor"]] for t in m["transfers"]]
    rounds = [
        [r["number"], r["solver"], r["objective"], r["bound"], r["gap"], r["jobs_considered"],
         r["jobs_placed"], r["jobs_waiting"],
         "; ".join(f"{w['jobs']}x {w['reason']}" for w in r["waiting"])]
        for r in report["rounds"]["rounds"]
    ]  # fmt: skip
    return [
        ("hubs", ["hub", "centers", *figure_cols], hubs),
        (
            "centers",
            [
                "center",
                "hub",
                *figure_cols,
                "price_minor_per_device_hour",
                "pue_milli",
                "grid_g_co2_per_kwh",
            ],
            centers,
        ),
        ("flows", ["from_region", "to_region", "jobs", "device_seconds"], flows),
        (
            "positions",
            [
                "party",
                "currency",
                "paid_minor",
                "received_minor",
                "net_minor",
                "energy_wh",
                "carbon_g",
            ],
            positions,
        ),
        ("transfers", ["payer", "payee", "currency", "amount_minor"], transfers),
        (
            "rounds",
            [
                "round",
                "solver",
                "objective",
                "bound",
                "gap",
                "considered",
                "placed",
                "waiting",
                "why waiting",
            ],
            rounds,
        ),
    ]


def to_csv(report: Report, top: int) -> str:
    """Every table, each row led by its table's name; each table starts with its header
    row (`table` first), so `grep ^hubs,` gives one table."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name, headers, rows in tables(report, top):
        writer.writerow(["table", *headers])
        for row in rows:
            writer.writerow([name, *("" if v is None else v for v in row)])
    return out.getvalue()


def _script(text: str) -> str:
    """`text` made safe inside <script>...</script>."""
    return text.replace("</", "<\\/")


def to_html(report: Report) -> str:
    """One file: the page, ECharts, the page's script and the report's data inlined."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    style = (STATIC / "style.css").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    echarts = require_echarts().read_text(encoding="utf-8")
    data = json.dumps(report, separators=(",", ":"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["generated_at_ms"] / 1000))
    page = page.replace("__SIGNED_IN__", "false").replace("__CSRF__", "")
    page = page.replace("<title>icx: national view</title>", f"<title>icx report {when}</title>")
    page = page.replace(
        '<link rel="stylesheet" href="/static/style.css">', f"<style>\n{style}\n</style>"
    )
    page = page.replace(
        '<script id="echarts-js" src="/vendor/echarts.min.js" async></script>',
        f"<script>{_script(echarts)}</script>",
    )
    inlined = f"<script>window.ICX_REPORT = {_script(data)};</script>\n"
    inlined += f"<script>{_script(script)}</script>"
    page = page.replace('<script src="/static/app.js"></script>', inlined)
    heading = f"icx national report: {html.escape(report['broker'])}, {when}"
    return page.replace("<h1>icx national view</h1>", f"<h1>{heading}</h1>")
