"""`icx demo` as a script would run it: the 17 reference centers under their 8 hubs'
brokers, a small workload submitted at the hubs, one JSON summary at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli._demo_report import print_report
from cli.demo import SUBMIT_WEIGHTS, Progress, center_hub, submission_hubs
from client import BrokerClient
from identity import Credentials
from scenario import load_centers
from tests.conftest import wait_for

HUBS = list(SUBMIT_WEIGHTS)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One demo of 40 jobs in a folder of its own (TMPDIR points into the test's)."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "TMPDIR": str(tmp)}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--jobs", "40", "--span", "3", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    yield tmp, json.loads(result.stdout)


def test_the_demo_runs_a_workload_over_the_reference_centers(
    run: tuple[Path, dict[str, Any]],
) -> None:
    _, summary = run
    assert summary["jobs_submitted"] == 40
    assert summary["jobs_unfinished"] == 0
    assert summary["jobs_failed"] == 0
    placed = summary["jobs_succeeded"]
    assert placed + summary["jobs_unplaced"] == 40
    assert placed >= 30
    assert sum(c["jobs"] for c in summary["by_center"]) == placed
    assert sum(h["jobs"] for h in summary["by_hub"]) == placed
    assert len(summary["by_center"]) == 17  # every center, those that ran nothing too
    assert sorted(h["hub"] for h in summary["by_hub"]) == sorted(HUBS)  # the hubs' brokers
    assert sum(1 for c in summary["by_center"] if c["jobs"]) >= 5  # the work spreads
    assert summary["ledger"]["usage_records"] == placed  # one signed record per run
    # The allocation is the ledgers': each run as its center signed it, in CNY.
    totals = summary["totals"]
    assert (totals["centers"], totals["jobs"], totals["currency"]) == (17, placed, "CNY")
    assert totals["runs"] == summary["ledger"]["usage_records"]
    for key in ("runs", "device_s", "charge_minor", "energy_wh", "carbon_g"):
        assert sum(c[key] for c in summary["by_center"]) == totals[key]
        assert sum(h[key] for h in summary["by_hub"]) == totals[key]
    assert totals["charge_minor"] > 0
    assert summary["figures"].startswith("Figures are the ledger's")
    for u in summary["unplaced"]:
        assert u["reason"]  # every job left in the queue says why


def test_jobs_submitted_at_one_hub_run_at_another(run: tuple[Path, dict[str, Any]]) -> None:
    _, summary = run
    table = summary["cross_hub"]
    assert table["hubs"] == HUBS
    rows = {r["submitted_at"]: r for r in table["rows"]}
    assert list(rows) == HUBS
    for row in rows.values():  # every job once: where it ran, or not run
        assert sum(row["ran_at"].values()) + row["not_run"] == row["jobs"]
        assert row["jobs"] >= 1  # every hub's broker took jobs from users
    assert sum(r["jobs"] for r in rows.values()) == summary["jobs_submitted"]
    assert sum(r["not_run"] for r in rows.values()) == summary["jobs_unplaced"]
    forwarded = sum(
        n for r in rows.values() for to, n in r["ran_at"].items() if to != r["submitted_at"]
    )
    assert table["forwarded"] == forwarded >= 1
    # No job failed or was cancelled, so what ran at a hub is what its ledger holds.
    ran = {h["hub"]: h for h in summary["by_hub"]}
    for hub in HUBS:
        assert sum(r["ran_at"][hub] for r in rows.values()) == ran[hub]["jobs"] == ran[hub]["runs"]
    # Every hub's broker took part: its jobs, its centers, its own signed log.
    brokers = {b["hub"]: b for b in summary["brokers"]}
    assert list(brokers) == HUBS
    for hub, b in brokers.items():
        assert b["broker"] == f"broker-{hub}"
        assert b["jobs_submitted"] == rows[hub]["jobs"]
        assert b["centers"]
    assert sorted(c for b in brokers.values() for c in b["centers"]) == sorted(
        c["center_id"] for c in summary["by_center"]
    )
    ledgers = {b["hub"]: b for b in summary["ledger"]["brokers"]}
    assert list(ledgers) == HUBS
    for hub, ledger in ledgers.items():
        assert ledger["origin"].endswith(f"broker-{hub}")
        assert ledger["usage_records"] == ran[hub]["runs"]


def test_the_hubs_settle_the_forwarded_runs_to_zero(run: tuple[Path, dict[str, Any]]) -> None:
    """Each home hub's ledger accepted the records of its jobs that ran at another hub;
    what the hubs owe each other is what those runs were charged, and it nets to zero."""
    _, summary = run
    settlement = summary["settlement"]
    assert settlement["forwarded_records"] >= 1
    assert settlement["accepted_records"] == settlement["forwarded_records"]
    flows = settlement["flows"]
    assert flows and all(f["payer"] != f["payee"] for f in flows)
    assert sum(f["records"] for f in flows) == settlement["accepted_records"]
    assert settlement["hub_positions_sum_minor"] == 0
    assert settlement["positions_sum_minor"] == 0
    assert sum(settlement["hub_positions"].values()) == 0
    # The hubs that ran others' jobs are owed for them; the homes owe.
    rows = {r["submitted_at"]: r for r in summary["cross_hub"]["rows"]}
    for f in flows:
        assert rows[f["payer"]]["ran_at"][f["payee"]] >= 1


def test_the_report_shows_where_each_hubs_jobs_ran(
    run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, summary = run
    print_report(summary, {"up": 1.0, "total": 2.0})
    out = capsys.readouterr().out.splitlines()
    header = out.index(next(line for line in out if line.startswith("SUBMITTED AT")))
    assert out[header].split()[2:] == [*HUBS, "NOT", "RUN", "JOBS"]
    table = out[header + 1 : header + 2 + len(HUBS)]
    assert [line.split()[0] for line in table] == [*HUBS, "total"]
    assert int(table[-1].split()[-1]) == 40
    assert f"{summary['cross_hub']['forwarded']} of the" in out[header + 2 + len(HUBS)]
    assert "Allocation by hub:" in out
    assert "By center:" in out
    assert any(line.startswith("Settlement between hubs") for line in out)
    assert "Positions sum to 0.00 CNY between hubs" in " ".join(out)


def _table(out: list[str], header: str, rows: int) -> tuple[list[str], list[list[str]]]:
    """The columns and the first `rows` rows of the printed table whose header starts
    with `header`, each split at its gaps of two or more spaces."""
    at = next(i for i, line in enumerate(out) if line.startswith(header))
    cells = [re.split(r"\s{2,}", line.strip()) for line in out[at : at + 1 + rows]]
    return cells[0], cells[1:]


def test_the_settlement_table_says_what_its_columns_are_in_the_plans_order(
    run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row per hub in the order of every other table; each hub's runs elsewhere (it
    owes for them) and others' runs at its centers (it is owed for them) are those of the
    table of where jobs ran."""
    _, summary = run
    print_report(summary, {"up": 1.0, "total": 2.0})
    out = capsys.readouterr().out.splitlines()
    period = summary["settlement"]["period"]
    assert re.fullmatch(r"\d{4}-\d{2}", period)
    assert any(
        line.startswith(f"Settlement between hubs for {period}, this month:") for line in out
    )
    columns, rows = _table(out, "HUB  OWES CNY", len(HUBS))
    assert columns == [
        "HUB", "OWES CNY", "IS OWED CNY", "NET CNY", "ITS JOBS RUN ELSEWHERE",
        "OTHERS' JOBS RUN HERE",
    ]  # fmt: skip
    assert [r[0] for r in rows] == HUBS
    ran = {r["submitted_at"]: r["ran_at"] for r in summary["cross_hub"]["rows"]}
    for hub, *_, elsewhere, here in rows:
        assert int(elsewhere) == sum(n for at, n in ran[hub].items() if at != hub)
        assert int(here) == sum(ran[home][hub] for home in HUBS if home != hub)


def test_the_ledgers_table_counts_accepted_records_and_says_what_size_counts(
    run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A hub's ledger holds a usage record per run at its centers and an accepted record
    per run of its jobs at another hub; its size counts those and its key events."""
    _, summary = run
    ledger = summary["ledger"]
    ran = {r["submitted_at"]: r["ran_at"] for r in summary["cross_hub"]["rows"]}
    for b in ledger["brokers"]:
        hub = b["hub"]
        assert b["accepted_records"] == sum(n for at, n in ran[hub].items() if at != hub)
        keys = b["entries"] - b["usage_records"] - b["accepted_records"]
        assert keys == 1 + len(summary["brokers"][HUBS.index(hub)]["centers"])
    assert ledger["accepted_records"] == summary["settlement"]["accepted_records"]
    print_report(summary, {"up": 1.0, "total": 2.0})
    out = capsys.readouterr().out.splitlines()
    columns, rows = _table(out, "HUB  RECORDS", len(HUBS) + 1)
    assert columns == ["HUB", "RECORDS", "ACCEPTED", "CHECKPOINT", "SIZE", "ROOT"]
    shown = [
        (hub, int(records), int(accepted), int(size))
        for hub, records, accepted, _, size, _ in rows[:-1]
    ]
    assert shown == [
        (b["hub"], b["usage_records"], b["accepted_records"], b["entries"])
        for b in ledger["brokers"]
    ]
    assert rows[-1] == [
        "SIZE counts every entry: RECORDS (runs here), ACCEPTED (its jobs' runs elsewhere), "
        "key events."
    ]


def test_the_report_names_no_command_that_cannot_work(
    run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder with the ledgers goes at the end unless --dir or --keep, and the
    brokers stop unless --keep: the report offers an audit of a ledger file only if the
    file outlives the demo, and a command asking the brokers only if they still run."""
    _, summary = run
    unplaced = [{"job_id": f"j-{i:012x}", "reason": "no pool"} for i in range(11)]
    summary = {**summary, "unplaced": unplaced}
    db = summary["ledger"]["brokers"][0]["db"]

    print_report(summary, {"up": 1.0, "total": 2.0})
    out = capsys.readouterr().out
    assert "icx ledger audit" not in out and "icx jobs" not in out
    assert "to audit a ledger offline, keep the ledgers: run with --dir DIR or --keep\n" in out
    assert "  ... and 3 more (--json lists them all)\n" in out

    print_report(summary, {"up": 1.0, "total": 2.0}, kept_folder=True)
    out = capsys.readouterr().out
    assert f"audit one offline: icx ledger audit --db {db}\n" in out
    assert "icx jobs" not in out

    print_report(summary, {"up": 1.0, "total": 2.0}, kept_folder=True, still_running=True)
    out = capsys.readouterr().out
    assert f"audit one offline: icx ledger audit --db {db}\n" in out
    assert "  ... and 3 more (as the coordinator: icx jobs --all --state queued)\n" in out


def test_the_final_progress_line_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal, the final state is not printed again when it is the last line
    shown; a state that changed since is. On a terminal, the line is rewritten in place
    and the final one ends it."""
    progress = Progress(quiet=False, tty=False)
    progress.update("submitted 3/3  running 1")
    progress.update("submitted 3/3  succeeded 3")  # within 3 s of the last: not shown
    progress.update("submitted 3/3  succeeded 3", final=True)
    progress.update("submitted 3/3  succeeded 3", final=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "submitted 3/3  running 1",
        "submitted 3/3  succeeded 3",
    ]

    progress = Progress(quiet=False, tty=True)
    progress.update("submitted 3/3  running 1")
    progress.update("submitted 3/3  succeeded 3", final=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("] submitted 3/3  succeeded 3\n")
    assert err.rsplit("\r\033[K", 1)[1].startswith("[")  # the last write replaced the line


def test_a_demo_in_a_folder_of_its_own_leaves_nothing_behind(
    run: tuple[Path, dict[str, Any]],
) -> None:
    """Without --dir or --keep the demo's folder (databases, logs, the throw-away
    federation's root key) goes with it, and so does every process it started."""
    tmp, _ = run
    assert list(tmp.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp) not in ps


def test_demo_keep_json_prints_what_a_script_needs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--keep", "--jobs", "0", "--json",
         "--dir", str(tmp_path / "kept")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    pids = info["pids"]
    try:
        assert len(pids) == 26  # the 8 brokers, 17 agents and the coordinator's dashboard
        token = info["dashboard"]["token_url"].rpartition("token=")[2]
        overview = urllib.request.Request(
            info["dashboard"]["url"] + "api/overview", headers={"Authorization": f"token {token}"}
        )
        with urllib.request.urlopen(overview, timeout=10) as r:
            shown = {c["center_id"] for c in json.load(r)["centers"]}
        assert set(info["brokers"][HUBS[0]]["centers"]) <= shown
        assert sorted(p for p in pids if p.startswith("broker-")) == sorted(
            f"broker-{hub}" for hub in HUBS
        )
        brokers = info["brokers"]
        assert list(brokers) == HUBS
        assert info["broker"] == brokers[HUBS[0]]["address"]
        assert info["coordinator"] == str(tmp_path / "kept" / "federation" / "coordinator")
        coordinator = Credentials.load(Path(info["coordinator"]))
        for hub, b in brokers.items():
            assert b["db"] == str(tmp_path / "kept" / hub / "broker.db")
            with BrokerClient(b["address"], coordinator) as c:
                assert sorted(s.center.center_id for s in c.centers()) == b["centers"]
        assert sorted(c for b in brokers.values() for c in b["centers"]) == sorted(
            c.center_id for c in load_centers()
        )
        # The user it names is a user of its tenant, over TLS, at any hub's broker; its
        # quote there lists every hub's centers (the brokers see each other's).
        user = Credentials.load(Path(info["user"]["identity"]))
        with BrokerClient(brokers[HUBS[-1]]["address"], user) as c:
            me = c.whoami()
            assert (me.role, me.tenant, me.authenticated) == ("user", info["user"]["tenant"], True)
        # A peer's summary is what its broker last gossiped: one that lapsed (its broker
        # starved of CPU past the expiry on this shared machine) is back with the next
        # republish, so the quote is asked again until it lists them all.
        everyone = {c.center_id for c in load_centers()}
        missing: set[str] = set()

        def quotes_everyone() -> bool:
            who = subprocess.run(
                [sys.executable, "-m", "cli.main", "quote", "--json", "--accelerator", "any",
                 "--devices", "1", "--hours", "1", "--broker", info["broker"],
                 "--identity", info["user"]["identity"]],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert who.returncode == 0, who.stderr
            missing.clear()
            missing.update(everyone - {line["center_id"] for line in json.loads(who.stdout)})
            return not missing

        try:
            wait_for(quotes_everyone, 30, "the quote to list every center")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still missing {sorted(missing)}") from None
    finally:
        subprocess.run(["kill", *(str(p) for p in pids.values())], check=False)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--port", "65530"], "--port must be 0 (any free ones) or 1..65528"),
        (["--scale", "0"], "--scale must be 1 or more, got 0"),
        (["--jobs", "-1"], "--jobs must be 0 or more, got -1"),
        (["--backend", "slurm", "--slurm-center", "CN03"], "no such center with one pool"),
    ],
    ids=["port", "scale", "jobs", "slurm-center"],
)
def test_bad_flags_are_refused_before_anything_starts(
    tmp_path: Path, flags: list[str], error: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", *flags, "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("icx: error: ") and error in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_every_center_joins_its_hubs_broker() -> None:
    hubs: dict[str, str] = {c.center_id: center_hub(c) for c in load_centers()}
    assert set(hubs.values()) == set(HUBS)
    # The centers in no hub join the hub of their latency node.
    assert (hubs["CN02"], hubs["CN03"], hubs["CN05"]) == ("YRD", "YRD", "GS")
    assert (hubs["CN07"], hubs["CN16"]) == ("JJJ", "NX")


def test_jobs_are_submitted_at_every_hub_by_its_weight() -> None:
    at = submission_hubs(38)
    assert at == submission_hubs(38)  # the same every run
    assert {h: at.count(h) for h in HUBS} == {h: 2 * w for h, w in SUBMIT_WEIGHTS.items()}
    assert set(submission_hubs(19)) == set(HUBS)  # every hub within one round
    assert at[:4] == ["YRD", "JJJ", "GBA", "CY"]  # interleaved, heaviest first
    assert submission_hubs(0) == []
