"""`icx ledger federation` and `icx settle` as a coordinator meets them: region ledgers
named by their files alone (the broker's name is in the log's origin), a name that is not
the log's, the wrong file (a folder, the broker's database, not SQLite), a region left
out, each refused in one line with the file left as it was; ledgers read while a writer
holds them; a federated statement's flows between regions in the table and the CSV.

Most tests build two real region logs in SQLite files (east accepted a record that west's
center ran, as tests/ledger/test_accepted.py does) and run `icx` as a child process; the
last runs two region brokers, a job of east's tenant at west's center, and reads the live
ledgers and copies of them made with `sqlite3 .backup`."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.ledger import ledger_paths
from broker.sqlite_store import SqliteStore
from cli.debian import ensure_debian
from cli.federation import LocalFederation
from core.money import CURRENCY, format_major
from core.states import JobState
from core.types import JobSpec
from ledger import AcceptedRecord, LedgerStore, Log, Role, SignerKey, UsageRecord, sign_records
from tests.conftest import make_center, run_icx, wait_centers, wait_for
from tests.federation.regions import regions
from tests.ledger.conftest import seeded_key, usage

PERIOD = "2026-11"
EXPECTED = "<db>.ledger, the broker's ledger file beside its database"


@dataclass(frozen=True)
class Pair:
    """Two region ledgers: east accepted, at `accepted_index`, the record `west_run`
    that west's center ran for east's tenant; east's center ran `east_run` itself."""

    east: Path
    west: Path
    east_run: UsageRecord
    west_run: UsageRecord
    accepted_index: int


def _region_log(path: Path, broker: str, seed: int) -> tuple[Log, SignerKey]:
    """A ledger named after `broker` (its signer key in PATH.key) with one admitted
    center; returns the log and the center's key."""
    key = seeded_key(f"icx/{broker}", seed)
    Path(f"{path}.key").write_text(key.text() + "\n")
    log = Log.create(LedgerStore(path), key)
    center = seeded_key(f"center/{broker}-1", seed + 1)
    log.admit(f"center/{broker}-1", Role.CENTER, center.verifier)
    return log, center


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    east_path, west_path = tmp_path / "east.db.ledger", tmp_path / "west.db.ledger"
    east, east_center = _region_log(east_path, "broker-east", 11)
    west, west_center = _region_log(west_path, "broker-west", 21)
    try:
        east_run = usage("center/broker-east-1/r1", producer="center/broker-east-1")
        east.append(sign_records([east_run], east_center))
        west_run = usage("center/broker-west-1/r1", producer="center/broker-west-1", wall_s=600)
        west.append(sign_records([west_run], west_center))
        west.checkpoint()
        bundle = west.prove(record_id=west_run.record_id)
        index = east.accept(AcceptedRecord(owner="broker-west", bundle=bundle), west.log_key)
        east.checkpoint()
    finally:
        east.store.close()
        west.store.close()
    yield Pair(east_path, west_path, east_run, west_run, index)


def _json(*args: str) -> Any:
    done = run_icx(*args, "--json")
    assert (done.returncode, done.stderr) == (0, "")
    return json.loads(done.stdout)


def _refused(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (code, "", f"icx: error: {message}\n")


def _snapshot(path: Path) -> tuple[bytes, list[tuple[str, str]]]:
    """The file's bytes and its tables, read without writing."""
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
        tables = db.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    return path.read_bytes(), tables


# ------------------------------------------------------------------ naming the regions


def test_bare_ledger_files_are_named_after_their_logs(pair: Pair) -> None:
    """`--region FILE` takes the broker's name from the log's origin icx/<name>: the
    same view as with every name given, the accepted record's flow naming both entries."""
    bare = _json("ledger", "federation", "--region", str(pair.east), "--region", str(pair.west),
                 "--period", PERIOD)  # fmt: skip
    named = _json("ledger", "federation", "--region", f"broker-east={pair.east}",
                  "--region", f"broker-west={pair.west}", "--period", PERIOD)  # fmt: skip
    assert bare == named
    assert bare["regions"] == {"broker-east": "icx/broker-east", "broker-west": "icx/broker-west"}
    owed = pair.west_run.charge_minor
    assert owed > 0
    assert bare["region_flows"] == [
        {
            "payer": "broker-east",
            "payee": "broker-west",
            "amount_minor": owed,
            "entries": [{"index": pair.accepted_index, "origin": "icx/broker-west",
                         "owner_index": 2}],
        }
    ]  # fmt: skip
    assert bare["region_positions"] == {"broker-east": -owed, "broker-west": owed}
    assert bare["accepted_checked"] == 1
    assert sum(bare["positions"].values()) == 0

    table = run_icx("ledger", "federation", "--region", str(pair.east), "--region",
                    str(pair.west), "--period", PERIOD)  # fmt: skip
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[2][:3] == ["broker-east", "icx/broker-east", "4"]
    assert any(r[:2] == ["broker-east", "broker-west"] and r[3] == "1" for r in rows)


def test_a_name_that_is_not_the_logs_says_whose_log_it_is(pair: Pair) -> None:
    done = run_icx("ledger", "federation", "--region", f"YRD={pair.east}", "--region",
                   str(pair.west), "--period", PERIOD)  # fmt: skip
    _refused(
        done,
        2,
        f"{pair.east} is the log of broker-east (icx/broker-east), not YRD: "
        f"give --region broker-east={pair.east} or just --region {pair.east}",
    )


def test_a_log_not_named_after_a_broker_needs_its_regions_name(tmp_path: Path) -> None:
    """A ledger of another origin (here `icx ledger sample`'s) is refused bare and
    settled under the name given."""
    solo = tmp_path / "solo.ledger"
    made = run_icx("ledger", "sample", "--db", str(solo), "--records", "20", "--period", PERIOD)
    assert made.returncode == 0, made.stderr
    before = _snapshot(solo)
    bare = run_icx("ledger", "federation", "--region", str(solo), "--period", PERIOD)
    _refused(
        bare,
        2,
        f"{solo} is the log icx.local/ledger, not a federated broker's (icx/<name>): "
        f"name its region, --region NAME={solo}",
    )
    view = _json("ledger", "federation", "--region", f"north={solo}", "--period", PERIOD)
    assert view["regions"] == {"north": "icx.local/ledger"}
    assert view["region_flows"] == [] and view["positions"]
    assert sum(view["positions"].values()) == 0
    assert _snapshot(solo) == before


def test_a_region_left_out_names_the_ledger_to_add(pair: Pair) -> None:
    done = run_icx("ledger", "federation", "--region", str(pair.east), "--period", PERIOD)
    _refused(
        done,
        2,
        f"{pair.east} (broker-east) entry {pair.accepted_index} accepts icx/broker-west#2, "
        "but log icx/broker-west is not given: add broker-west's ledger file "
        "(--region broker-west=LEDGER_FILE, or just --region LEDGER_FILE)",
    )
    twice = run_icx("ledger", "federation", "--region", str(pair.west), "--region",
                    f"broker-west={pair.west}", "--period", PERIOD)  # fmt: skip
    _refused(twice, 2, "region 'broker-west' (log 'icx/broker-west') is in the view twice")


# ------------------------------------------------------------------ the wrong file


def test_the_wrong_file_is_refused_in_one_line_and_left_as_it_was(
    pair: Pair, tmp_path: Path
) -> None:
    def refused(target: Path, code: int, message: str) -> None:
        done = run_icx("ledger", "federation", "--region", str(target), "--region",
                       str(pair.west), "--period", PERIOD)  # fmt: skip
        _refused(done, code, message)

    folder = tmp_path / "ledgers"
    folder.mkdir()
    refused(folder, 2, f"{folder} is a folder, not a ledger file: give {EXPECTED}")
    assert list(folder.iterdir()) == []

    # The broker's own database, beside which its ledger lies: named in the error.
    database = tmp_path / "east.db"
    SqliteStore(database).close()
    before = _snapshot(database)
    refused(
        database,
        2,
        f"{database} is not a ledger (it holds no log key): give {pair.east}, the broker's "
        "ledger file beside its database",
    )
    assert _snapshot(database) == before  # no ledger tables added to it
    audit = run_icx("ledger", "audit", "--db", str(database))
    assert audit.returncode == 2 and audit.stderr.startswith(f"icx: error: {database} is not")
    assert _snapshot(database) == before

    other = tmp_path / "other.db"  # some other database, no ledger beside it
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (name TEXT, value TEXT)")
    db.close()
    before = _snapshot(other)
    refused(other, 2, f"{other} is not a ledger (it holds no log key): give {EXPECTED}")
    assert _snapshot(other) == before

    text = tmp_path / "notes.txt"
    text.write_text("a coordinator's notes, not a database\n" * 100)
    refused(text, 2, f"{text} is not a ledger (file is not a database): give {EXPECTED}")
    assert text.read_text() == "a coordinator's notes, not a database\n" * 100

    missing = tmp_path / "gone.db.ledger"
    refused(missing, 4, f"no ledger file at {missing}: give {EXPECTED}")
    assert not missing.exists()

    fresh = tmp_path / "fresh.ledger"  # a ledger whose broker never checkpointed
    Log.create(LedgerStore(fresh), seeded_key("icx/broker-fresh", 5)).store.close()
    before = _snapshot(fresh)
    refused(fresh, 2, f"{fresh} has no checkpoint yet: nothing in it is settled")
    assert _snapshot(fresh) == before

    bad = run_icx("ledger", "federation", "--region", "=x", "--period", PERIOD)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines()[-1] == (
        "icx ledger federation: error: argument --region: expected [BROKER=]LEDGER_FILE, got '=x'"
    )


def test_ledgers_are_read_while_their_brokers_hold_the_write_lock(pair: Pair) -> None:
    """As a broker in the middle of an append: each ledger's write lock held, an entry
    not yet committed. The command settles without waiting for either lock (it would
    wait 5 s and fail if it wrote), and leaves both files as they were."""
    before = {path: _snapshot(path) for path in (pair.east, pair.west)}
    writers = []
    for path in (pair.east, pair.west):
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO meta (name, value) VALUES ('in-flight', 'yes')")
        writers.append(writer)
    try:
        # A command that waited for a writer's lock would fail: they hold it throughout.
        view = _json("ledger", "federation", "--region", str(pair.east), "--region",
                     str(pair.west), "--period", PERIOD)  # fmt: skip
        assert view["region_positions"]["broker-west"] == pair.west_run.charge_minor
        assert {path: _snapshot(path) for path in before} == before
    finally:
        for writer in writers:
            writer.execute("ROLLBACK")
            writer.close()


# ------------------------------------------------------------------ settle


def _csv(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert {len(row) for row in rows} == {10}  # one table
    return rows


def test_settle_shows_what_a_region_owes_in_the_table_and_the_csv(pair: Pair) -> None:
    """A federated broker's ledger settled offline carries its region flows, as its
    broker's statement does."""
    body = _json("settle", "--db", str(pair.east), "--period", PERIOD)
    owed = pair.west_run.charge_minor
    assert body["regions"] == [
        {
            "payer": "broker-east",
            "payee": "broker-west",
            "amount_minor": owed,
            "entries": [{"index": pair.accepted_index, "origin": "icx/broker-west",
                         "owner_index": 2}],
        }
    ]  # fmt: skip
    assert [p["party"] for p in body["parties"]] == ["center/broker-east-1", "tenant/lab"]

    table = run_icx("settle", "--db", str(pair.east), "--period", PERIOD)
    assert (table.returncode, table.stderr) == (0, "")
    lines = table.stdout.splitlines()
    assert lines[2].split()[:2] == ["PARTY", "PAID"]
    cut = lines.index(
        "between regions: owed for the records of other regions accepted for tenants here"
    )
    assert lines[cut + 1].split() == ["PAYER", "REGION", "PAYEE", "REGION", "AMOUNT", "CNY",
                                      "RECORDS"]  # fmt: skip
    assert lines[cut + 2].split() == ["broker-east", "broker-west", format_major(owed), "1"]
    assert lines[cut + 3 :] == []

    rows = _csv(run_icx("settle", "--db", str(pair.east), "--period", PERIOD, "--csv").stdout)
    assert rows[0][:3] == ["kind", "party", "counterparty"]
    assert [r[0] for r in rows[1:]] == ["position", "position", "transfer", "region"]
    assert rows[-1] == ["region", "broker-east", "broker-west", CURRENCY, "", "", "", str(owed),
                        "", ""]  # fmt: skip

    # West accepted nothing: no region part, as before.
    west = run_icx("settle", "--db", str(pair.west), "--period", PERIOD)
    assert west.returncode == 0 and "between regions" not in west.stdout
    assert [r[0] for r in _csv(run_icx("settle", "--db", str(pair.west), "--period", PERIOD,
                                       "--csv").stdout)] == ["kind", "position", "position",
                                                             "transfer"]  # fmt: skip


# ------------------------------------------------------------------ at two region brokers


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    """East with no center, west with one (10 fen a device-second): east's jobs run west."""
    root = tmp_path_factory.mktemp("regions")
    with regions(root, ("east", "west")) as feds:
        center = make_center("west-1", region="west", pools={"main": ("ascend-910", 2, 36_000)})
        feds["west"].start_agent(center)
        with feds["west"].client() as c:
            wait_centers(c, 1)
        yield feds


def test_a_federated_brokers_statement_and_its_live_ledgers(
    two: dict[str, LocalFederation], tmp_path: Path
) -> None:
    east, west = two["east"], two["west"]
    spec = JobSpec(
        accelerator="ascend-910",
        devices=1,
        estimated_s=600,
        command=(sys.executable, "-c", "import time; time.sleep(1.2)"),  # a whole second
    )
    with east.client("lab-a") as c:
        wait_for(lambda: any(q.region == "west" for q in c.quote(spec)), 15, "west seen")
        job = c.submit(spec)
        done = wait_for(lambda: (j := c.get_job(job.job_id)).state.terminal and j, 30, "end")
        assert (done.state, done.broker) == (JobState.SUCCEEDED, "broker-west"), done.reason
    period = time.strftime("%Y-%m", time.gmtime())
    coordinator = east.authority.folder / "coordinator"

    def settle(*args: str) -> subprocess.CompletedProcess[str]:
        done = run_icx("settle", "--period", period, "--broker", east.address, *args,
                       identity=coordinator)  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        return done

    def owed() -> dict[str, Any] | None:
        body: dict[str, Any] = json.loads(settle("--json").stdout)
        return body if body.get("regions") else None

    body = wait_for(owed, 30, "east to accept west's records of the job")
    [flow] = body["regions"]
    assert (flow["payer"], flow["payee"]) == ("broker-east", "broker-west")
    assert flow["amount_minor"] >= 10
    assert (body["parties"], body["transfers"]) == ([], [])  # east has no center

    lines = settle().stdout.splitlines()
    assert lines[2] == "no usage at this broker's own centers in the period"
    assert lines[-1].split() == ["broker-east", "broker-west",
                                 format_major(flow["amount_minor"]),
                                 str(len(flow["entries"]))]  # fmt: skip
    rows = _csv(settle("--csv").stdout)
    assert rows[1:] == [["region", "broker-east", "broker-west", CURRENCY, "", "", "",
                         str(flow["amount_minor"]), "", ""]]  # fmt: skip

    # The live ledgers, named by their files alone, and consistent copies of them.
    live = [ledger_paths(fed.db)[0] for fed in (east, west)]
    ensure_debian({"sqlite3": "sqlite3"})
    copies = []
    for name, path in zip(("east", "west"), live, strict=True):
        copy = tmp_path / f"{name}.db.ledger"
        made = subprocess.run(["sqlite3", str(path), f".backup {copy}"], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        assert (made.returncode, made.stderr) == (0, "")
        copies.append(copy)
    views = []
    for paths in (live, copies):
        named = [arg for path in paths for arg in ("--region", str(path))]
        views.append(_json("ledger", "federation", *named, "--period", period))
    for view in views:
        assert view["regions"] == {"broker-east": "icx/broker-east",
                                   "broker-west": "icx/broker-west"}  # fmt: skip
        [fed_flow] = view["region_flows"]
        assert (fed_flow["payer"], fed_flow["payee"]) == ("broker-east", "broker-west")
        assert fed_flow["amount_minor"] >= flow["amount_minor"]
        assert sum(view["positions"].values()) == 0
        assert sum(view["region_positions"].values()) == 0
    assert views[0]["region_flows"] == views[1]["region_flows"]
