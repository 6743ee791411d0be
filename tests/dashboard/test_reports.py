"""`icx national` against a running broker: the money equals the ledger's own settlement
of the same entries, the tables and CSV carry the figures, the HTML report opens with no
network and draws its charts; and `icx dashboard` refuses a taken port in one line."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path
from typing import Any

from broker.ledger import ledger_paths
from ledger import LedgerStore, Log
from ledger.checkpoint import Checkpoint
from ledger.note import parse_note
from ledger.settlement import settle
from tests.conftest import run_icx
from tests.dashboard.conftest import CENTERS, Dashboard


def national(dash: Dashboard, *args: str) -> Any:
    # `--broker DOWN,UP`: the report is read from the broker that listens.
    done = run_icx("national", "--broker", dash.brokers, *args, identity=dash.coordinator)
    assert done.returncode == 0, done.stderr
    return done


def test_the_reports_money_equals_the_ledgers_settlement(dash: Dashboard) -> None:
    report = json.loads(national(dash, "--json").stdout)
    money = report["money"]
    size = money["checkpoint"]["size"]
    # The ledger file read with the ledger library: the same entries, settled here.
    with LedgerStore(ledger_paths(dash.fed.db)[0]) as store:
        log = Log(store)
        # Quiet federation: the latest checkpoint is the one the statement is bound to.
        checkpoint = Checkpoint.from_text(parse_note(log.latest_note()).text)
        assert checkpoint.size == size
        mine = settle(log.records(0, size), period=money["period"], checkpoint=checkpoint)
    assert {p["party"]: p["net_minor"] for p in money["parties"]} == mine.positions
    assert [(t["payer"], t["payee"], t["amount_minor"]) for t in money["transfers"]] == [
        (t.payer, t.payee, t.amount_minor) for t in mine.transfers
    ]
    assert money["totals"]["paid_minor"] == sum(t.paid_minor for t in mine.totals.values()) > 0
    assert report["overview"]["totals"]["jobs_done"] >= 3


def test_the_csv_and_text_reports_carry_the_tables(dash: Dashboard) -> None:
    rows = list(csv.reader(io.StringIO(national(dash, "--csv", "--period", "1h").stdout)))
    hubs = [r for r in rows if r[0] == "hubs"]
    assert sorted(r[1] for r in hubs) == ["GS", "JJJ", "NX"]
    centers = [r for r in rows if r[0] == "centers"]
    assert sorted(r[1] for r in centers) == sorted(c.center_id for c in CENTERS)
    text = national(dash, "--period", "1h").stdout
    assert "hubs:" in text and "positions:" in text and "CN15" in text


def test_a_bad_period_is_refused_in_one_line(dash: Dashboard) -> None:
    done = run_icx("national", "--broker", dash.fed.address, "--period", "soon",
                   identity=dash.coordinator)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "icx: error: period must be a number and a unit (s, m, h, d), got 'soon'\n"
    )


def test_the_html_report_opens_offline_with_its_charts(
    dash: Dashboard, browser: Any, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    national(dash, "--html", str(out))
    context = browser.new_context()
    requests: list[str] = []

    def route(r: Any) -> None:
        requests.append(r.request.url)
        if r.request.url == out.as_uri():
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.extend([m.text] if m.type == "error" else []))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_function("Number(document.body.dataset.rendered || 0) >= 1")
        markers = page.evaluate(
            "icx.charts.map.getOption().series.find(s => s.id === 'centers').data.length"
        )
        assert markers == len(CENTERS)
        assert page.evaluate("icx.charts['series-activity'].getOption().series.length") == 4
        assert "icx.statement/v1" in (page.text_content("#statement") or "")
        assert requests == [out.as_uri()] and errors == []
    finally:
        context.close()


def test_the_dashboard_refuses_a_taken_port_in_one_line(dash: Dashboard) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_icx("dashboard", "--broker", dash.fed.address, "--listen",
                       f"127.0.0.1:{port}", identity=dash.coordinator)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        f"icx: error: cannot listen on 127.0.0.1:{port}: the address is in use\n"
    )
