"""The dashboard at national scale (issue 13), beside a small federation in the same run.

For each scale (a small federation of 17 centers, then 1,000 centers and 100,000 jobs
by default), a broker store is filled by `bench.national_load` (centers across the
eight hubs, jobs over the last 24 h: 2% running, 3% queued, the rest done, each run
with its claim record), a broker is started on it (`cli.federation.LocalFederation`:
its own OS process, mutual TLS, the settings `icx broker serve` runs without flags), and
`icx dashboard` beside it as the coordinator (the start-up path `icx demo --keep` uses).
Then:

1. the page: Debian's Chromium through Playwright loads it `--loads` times, each in a
   fresh browser context (no cache); *usable* is from the navigation's start to every
   section drawn (the page's `data-rendered` mark, set once the map, the tables, the
   series, the rounds, the policy and the money are on it), median and worst;
2. the dashboard's HTTP API: each call the page makes, `--calls` times in turn, timed
   at the client (p50, p95);
3. the broker's gRPC calls underneath, through the typed client as the coordinator,
   likewise.

The dashboard's watcher asks the broker for its pulse (an overview, the latest round,
the policy) every second throughout, as it does when it serves a page.

    .venv/bin/python -m bench.dashboard_bench [--quick] [--centers 1000] [--jobs 100000]
        [--loads 5] [--calls 30] [--json FILE] [--keep]
"""

from __future__ import annotations

import os

# As in `icx`: the broker and the dashboard are started from this process, which never
# forks with gRPC state in use.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import contextlib
import datetime as dt
import gzip
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.federation_bench import machine, percentile, revision
from bench.national_load import load_national_store
from cli.dashboard_cmd import DashboardChild, start_beside
from cli.debian import ensure_debian
from cli.federation import LocalFederation
from client import AsyncBrokerClient
from dashboard.periods import month_of, step_for
from identity import Role

CHROMIUM = "/usr/bin/chromium"
GOAL_PAGE_S = 2.0
GOAL_CALL_MS = 200.0
HOUR_MS = 3_600_000
START_TIMEOUT_S = 120.0
# A slow answer is a figure, not a failure: the machine is often shared.
CALL_TIMEOUT_S = 120.0
# The small federation's jobs per center are the national one's (100 per center).
JOBS_PER_CENTER = 100

# The calls the page makes when it loads (and on a click on a center), as it makes them.
PAGE_CALLS = (
    "/api/overview?period=1h",
    "/api/timeseries?window=1h",
    "/api/rounds?limit=10",
    "/api/policy?window=1h",
    "/api/money",
    "/api/centers/{center}?period=1h",
)
# The page's marks (dashboard/static/app.js), as the table names them.
MARKS = {
    "icx-script": "page script runs (HTML and style loaded; ECharts loads beside the calls)",
    "icx-fetched": "first figures fetched and ECharts run",
    "icx-drawn": "every section drawn",
    "show all": "then all centers listed (a click on show all), ms from the click",
}
# A click on the centers table's "show all" (when it has one), timed to every row laid out.
SHOW_ALL = """() => {
  const started = performance.now();
  const more = document.getElementById('centers-more');
  if (!more.hidden) document.getElementById('centers-all').click();
  document.body.offsetHeight;
  return performance.now() - started;
}"""
# Not on the first load: the longest period the page offers.
OTHER_CALLS = ("/api/overview?period=24h", "/api/timeseries?window=24h")


@dataclass(slots=True)
class Scale:
    name: str
    centers: int
    jobs: int
    load_s: float = 0.0
    page_s: list[float] = field(default_factory=list)
    # Per call: the page's own resource timings (ms), and timed at a client (ms).
    in_page_ms: dict[str, list[float]] = field(default_factory=dict)
    # The page's own marks (ms from the navigation's start): script, fetched, drawn.
    marks_ms: dict[str, list[float]] = field(default_factory=dict)
    http_ms: dict[str, list[float]] = field(default_factory=dict)
    http_bytes: dict[str, int] = field(default_factory=dict)
    http_sent: dict[str, int] = field(default_factory=dict)  # as sent (gzip when large)
    grpc_ms: dict[str, list[float]] = field(default_factory=dict)


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    return percentile(values, 0.95)


# ---------------------------------------------------------------- set-up


@contextlib.contextmanager
def running(root: Path, scale: Scale) -> Iterator[tuple[LocalFederation, DashboardChild]]:
    """A broker on a store filled for `scale`, and a dashboard beside it."""
    fed = LocalFederation(root=root / scale.name)
    fed.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_national_store(fed.db, centers=scale.centers, jobs=scale.jobs)
    scale.load_s = time.perf_counter() - started
    dashboard: DashboardChild | None = None
    try:
        fed.start_broker(port=0, timeout_s=START_TIMEOUT_S)
        dashboard = start_beside(
            fed, fed.authority.folder / "coordinator", timeout_s=START_TIMEOUT_S
        )
        yield fed, dashboard
    finally:
        if dashboard is not None:
            dashboard.child.stop()
        fed.stop()


# ---------------------------------------------------------------- measuring


def page_loads(url: str, token: str, scale: Scale, loads: int) -> None:
    """Load the page `loads` times, each in a fresh context that first opened the token
    URL (the page shows nothing without a session); time until it is drawn."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for i in range(loads + 1):  # the first warms the browser and the servers
                context = browser.new_context(viewport={"width": 1400, "height": 1800})
                page = context.new_page()
                page.goto(f"{url}?token={token}", wait_until="commit")  # the session cookie
                page.goto(url, wait_until="commit")
                drawn = page.wait_for_function(
                    "document.body && Number(document.body.dataset.rendered || 0) >= 1"
                    " && performance.now()",
                    timeout=60_000,
                )
                drawn_ms = float(drawn.json_value())
                shown = page.evaluate(
                    "icx.charts.map.getOption().series.find(s => s.id === 'centers').data.length"
                )
                if shown != scale.centers:
                    raise RuntimeError(f"the map shows {shown} centers, not {scale.centers}")
                # The table's "show all": every row drawn and laid out.
                show_all_ms = float(page.evaluate(SHOW_ALL))
                listed = page.evaluate(
                    "document.querySelectorAll('#centers tr[data-center]').length"
                )
                if listed != scale.centers:
                    raise RuntimeError(f"the table lists {listed} centers, not {scale.centers}")
                timings = page.evaluate(
                    "performance.getEntriesByType('resource')"
                    ".filter(e => e.name.includes('/api/'))"
                    ".map(e => [new URL(e.name).pathname + new URL(e.name).search, e.duration])"
                )
                marks = page.evaluate(
                    "performance.getEntriesByType('mark')"
                    ".filter(e => e.name.startsWith('icx-')).map(e => [e.name, e.startTime])"
                )
                context.close()
                if i == 0:
                    continue
                scale.page_s.append(drawn_ms / 1000)
                for name, ms in marks:
                    scale.marks_ms.setdefault(name, []).append(ms)
                scale.marks_ms.setdefault("show all", []).append(show_all_ms)
                for name, ms in timings:
                    if not name.startswith("/api/events"):
                        scale.in_page_ms.setdefault(name, []).append(ms)
        finally:
            browser.close()


def http_calls(url: str, token: str, scale: Scale, center: str, calls: int) -> None:
    base = url.rstrip("/")
    paths = [c.format(center=center) for c in (*PAGE_CALLS, *OTHER_CALLS)]
    for i in range(calls + 1):  # the first round warms up
        for path in paths:
            started = time.perf_counter()
            try:
                # As a browser asks: a large answer comes compressed.
                request = urllib.request.Request(
                    base + path,
                    headers={"Authorization": f"token {token}", "Accept-Encoding": "gzip"},
                )
                with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as reply:
                    body = reply.read()
                    zipped = reply.headers.get("Content-Encoding") == "gzip"
            except urllib.error.HTTPError as err:
                body = err.read()  # /api/money with no ledger yet: timed all the same
                zipped = err.headers.get("Content-Encoding") == "gzip"
            if zipped:
                sent, body = len(body), gzip.decompress(body)
            else:
                sent = len(body)
            ms = (time.perf_counter() - started) * 1000
            if i:
                scale.http_ms.setdefault(path, []).append(ms)
                scale.http_bytes[path] = len(body)
                scale.http_sent[path] = sent


def grpc_calls(fed: LocalFederation, scale: Scale, center: str, calls: int) -> None:
    async def main() -> None:
        client = AsyncBrokerClient(fed.address, fed.credentials(Role.COORDINATOR))
        period = month_of()
        named: dict[str, Callable[[], Awaitable[object]]] = {
            "Overview 1h": lambda: client.overview(period_ms=HOUR_MS, timeout_s=CALL_TIMEOUT_S),
            "Overview 24h": lambda: client.overview(
                period_ms=24 * HOUR_MS, timeout_s=CALL_TIMEOUT_S
            ),
            "CenterFigures 1h": lambda: client.center_figures(
                center, period_ms=HOUR_MS, timeout_s=CALL_TIMEOUT_S
            ),
            "TimeSeries 1h": lambda: client.time_series(
                window_ms=HOUR_MS, step_ms=step_for(HOUR_MS), timeout_s=CALL_TIMEOUT_S
            ),
            "TimeSeries 24h": lambda: client.time_series(
                window_ms=24 * HOUR_MS, step_ms=step_for(24 * HOUR_MS), timeout_s=CALL_TIMEOUT_S
            ),
            "Rounds 10": lambda: client.rounds(limit=10, timeout_s=CALL_TIMEOUT_S),
            "GetPolicy": client.policy,
            "PolicyHistory 20": lambda: client.policy_history(limit=20),
            "LogKey": client.log_key,
            f"Statement {period}": lambda: _statement(client, period),
        }
        try:
            for i in range(calls + 1):
                for name, call in named.items():
                    started = time.perf_counter()
                    await call()
                    if i:
                        ms = (time.perf_counter() - started) * 1000
                        scale.grpc_ms.setdefault(name, []).append(ms)
        finally:
            await client.close()

    asyncio.run(main())


async def _statement(client: AsyncBrokerClient, period: str) -> object:
    from core.errors import IcxError

    with contextlib.suppress(IcxError):  # no settlement yet: the refusal is timed too
        return await client.statement(period)
    return None


def measure(root: Path, scale: Scale, args: argparse.Namespace) -> None:
    print(f"-- {scale.name}: {scale.centers} centers, {scale.jobs} jobs", flush=True)
    with running(root, scale) as (fed, dashboard):
        print(f"   store filled in {scale.load_s:.1f} s; dashboard at {dashboard.url}", flush=True)
        page_loads(dashboard.url, dashboard.token, scale, args.loads)
        http_calls(dashboard.url, dashboard.token, scale, "c0000", args.calls)
        grpc_calls(fed, scale, "c0000", args.calls)


# ---------------------------------------------------------------- reporting


def _row(name: str, small: Sequence[float], big: Sequence[float], goal: str) -> str:
    if not big:
        return ""
    b50, b95 = p50(big), p95(big)
    if small:
        s50, s95 = p50(small), p95(small)
        ratio = f"{b95 / s95:.1f}x" if s95 else "-"
        small_cells = f"{s50:.0f} | {s95:.0f}"
    else:
        ratio, small_cells = "-", "- | -"
    return f"| {name} | {small_cells} | {b50:.0f} | {b95:.0f} | {ratio} | {goal} |"


def _met(p95_ms: float) -> str:
    return "met" if p95_ms < GOAL_CALL_MS else "**missed**"


def table(small: Scale, big: Scale) -> str:
    lines = [
        f"| figure | {small.name} p50 | p95 | {big.name} p50 | p95 | p95 ratio | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    s, b = small.page_s, big.page_s
    page_goal = "met" if max(b) < GOAL_PAGE_S else "**missed**"
    lines.append(
        f"| page usable, s ({len(b)} loads; median, worst) | {p50(s):.2f} | {max(s):.2f} "
        f"| {p50(b):.2f} | {max(b):.2f} | {max(b) / max(s):.1f}x | < 2 s ({page_goal}) |"
    )
    lines.append("| *in the page: navigation start to each mark, ms* | | | | | | |")
    for mark, ms in big.marks_ms.items():
        lines.append(_row(MARKS.get(mark, mark), small.marks_ms.get(mark, []), ms, ""))
    lines.append("| *dashboard HTTP API, ms (timed at a client)* | | | | | | |")
    for path, ms in big.http_ms.items():
        key = path.replace("c0000", "ID")
        size, sent = big.http_bytes[path] / 1024, big.http_sent[path] / 1024
        shown = f"GET {key} ({size:.1f} KiB" + (f", {sent:.1f} sent)" if sent < size else ")")
        lines.append(_row(shown, small.http_ms.get(path, []), ms, f"< 200 ms ({_met(p95(ms))})"))
    lines.append("| *in the page (resource timing), ms* | | | | | | |")
    for path, ms in big.in_page_ms.items():
        lines.append(_row(f"GET {path}", small.in_page_ms.get(path, []), ms, ""))
    lines.append("| *broker gRPC (NationalService, LedgerService), ms* | | | | | | |")
    for name, ms in big.grpc_ms.items():
        lines.append(_row(name, small.grpc_ms.get(name, []), ms, ""))
    return "\n".join(line for line in lines if line)


def as_json(scales: Sequence[Scale], command: str, when: str) -> dict[str, Any]:
    def summary(values: Sequence[float]) -> dict[str, float]:
        return {"p50": p50(values), "p95": p95(values), "max": max(values), "n": len(values)}

    return {
        "command": command,
        "when": when,
        "machine": machine(),
        "revision": revision(),
        "scales": [
            {
                "name": s.name,
                "centers": s.centers,
                "jobs": s.jobs,
                "load_s": s.load_s,
                "page_s": summary(s.page_s),
                "http_ms": {k: summary(v) for k, v in s.http_ms.items()},
                "http_bytes": s.http_bytes,
                "http_sent": s.http_sent,
                "in_page_ms": {k: summary(v) for k, v in s.in_page_ms.items()},
                "marks_ms": {k: summary(v) for k, v in s.marks_ms.items()},
                "grpc_ms": {k: summary(v) for k, v in s.grpc_ms.items()},
            }
            for s in scales
        ],
    }


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the `finally`s: every child stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 centers, 20,000 jobs")
    parser.add_argument("--centers", type=int, default=1_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=17, help="the baseline's centers")
    parser.add_argument("--loads", type=int, default=5, help="page loads per scale")
    parser.add_argument("--calls", type=int, default=30, help="samples of each call")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.centers, args.jobs, args.loads, args.calls = 200, 20_000, 3, 10
    for n in (args.centers, args.jobs, args.small, args.loads, args.calls):
        if n < 1:
            parser.error("every count must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    ensure_debian({"chromium": "chromium"})
    command = " ".join(["python -m bench.dashboard_bench", *(argv or sys.argv[1:])])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    small = Scale("small", args.small, args.small * JOBS_PER_CENTER)
    big = Scale("national", args.centers, args.jobs)
    root = Path(tempfile.mkdtemp(prefix="icx-dashboard-bench-"))
    started = time.perf_counter()
    try:
        for scale in (small, big):
            measure(root, scale, args)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    took = time.perf_counter() - started
    print(f"\nMeasured {when} on {machine()}, {revision()}, {took:.0f} s in all, with `{command}`.")
    print(
        f"small: {small.centers} centers, {small.jobs} jobs (filled in {small.load_s:.1f} s); "
        f"national: {big.centers} centers, {big.jobs} jobs (filled in {big.load_s:.1f} s)\n"
    )
    print(table(small, big))
    if args.json is not None:
        args.json.write_text(json.dumps(as_json((small, big), command, when), indent=2) + "\n")
    missed = max(big.page_s) >= GOAL_PAGE_S or any(
        p95(v) >= GOAL_CALL_MS for v in big.http_ms.values()
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
