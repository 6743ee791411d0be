"""`icx ledger ...` and `icx settle` on a real ledger file, offline."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.main import main
from ledger import TrustPolicy, VerifierKey
from ledger.note import open_note


@pytest.fixture
def sampled(tmp_path: Path) -> Path:
    db = tmp_path / "l.db"
    assert main(["ledger", "sample", "--db", str(db), "--records", "200", "--centers", "4",
                 "--tenants", "6", "--batch", "16"]) == 0  # fmt: skip
    return db


def test_key_and_checkpoint_are_signed_note_formats(
    sampled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["ledger", "key", "--db", str(sampled)]) == 0
    vkey = capsys.readouterr().out.strip()
    key = VerifierKey.parse(vkey)
    assert key.name == "icx.local/ledger"
    assert main(["ledger", "checkpoint", "--db", str(sampled)]) == 0
    note = capsys.readouterr().out
    opened, verified = open_note(note, [key])
    assert opened.text.split("\n")[:2] == ["icx.local/ledger", "211"]
    assert verified == [key.key_id]
    assert main(["ledger", "checkpoint", "--db", str(sampled), "--new"]) == 0
    assert capsys.readouterr().out == note  # nothing new was appended: same size


def test_prove_and_verify_a_bundle_offline(
    sampled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "b.json"
    assert main(["ledger", "prove", "--db", str(sampled), "--index", "100", "-o", str(bundle)]) == 0
    policy = tmp_path / "policy.json"
    policy.write_text(Path(f"{sampled}.policy.json").read_text())
    sampled.unlink()  # verify needs no database
    capsys.readouterr()
    assert main(["ledger", "verify", str(bundle), "--policy", str(policy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["index"] == 100
    assert out["entry"]["type"] == "usage"

    data = json.loads(bundle.read_text())
    data["index"] = 101
    bundle.write_text(json.dumps(data))
    assert main(["ledger", "verify", str(bundle), "--policy", str(policy)]) == 1
    assert "root mismatch" in capsys.readouterr().err

    other = TrustPolicy(log=VerifierKey.parse(
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"))  # fmt: skip
    policy.write_text(other.to_json())
    assert main(["ledger", "verify", str(bundle), "--policy", str(policy)]) == 1
    assert "no verifiable signatures" in capsys.readouterr().err


def test_prove_by_record_id_and_unknown_ids(
    sampled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(sampled) as db:
        (record_id,) = db.execute("SELECT record_id FROM entries WHERE idx = 50").fetchone()
    capsys.readouterr()
    assert main(["ledger", "prove", "--db", str(sampled), record_id]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 50
    assert main(["ledger", "prove", "--db", str(sampled), "center/none/u1"]) == 4
    assert "no record 'center/none/u1'" in capsys.readouterr().err


def test_audit_passes_then_names_the_first_bad_index(
    sampled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["ledger", "audit", "--db", str(sampled)]) == 0
    assert capsys.readouterr().out.startswith("ok: 211 entries (200 records, 11 key events)")
    assert main(["ledger", "verify", "--db", str(sampled)]) == 0
    with sqlite3.connect(sampled) as db:
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("UPDATE entries SET leaf = leaf || x'20' WHERE idx = 123")
    capsys.readouterr()
    assert main(["ledger", "audit", "--db", str(sampled), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["first_bad_index"] == 123
    assert "audit failed: entry 123:" in captured.err


def test_settle_prints_positions_and_transfers(
    sampled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["settle", "--db", str(sampled), "--period", "2026-11", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert sum(p["net_minor"] for p in body["parties"]) == 0
    assert len(body["transfers"]) <= len(body["parties"]) - 1
    assert body["checkpoint"]["size"] == 211
    assert main(["settle", "--db", str(sampled), "--period", "2026-11", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "kind,party,counterparty,currency,paid_minor,received_minor,net_minor,amount_minor,"
        "energy_wh,carbon_g"
    )
    kinds = [line.split(",")[0] for line in lines[1:]]
    assert kinds == ["position"] * 10 + ["transfer"] * len(body["transfers"])
    t = body["transfers"][0]
    assert lines[11] == f"transfer,{t['payer']},{t['payee']},CNY,,,,{t['amount_minor']},,"
    assert main(["settle", "--db", str(sampled), "--period", "2026-11"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1] == "amounts in CNY, major units"
    assert table[2].split() == ["PARTY", "PAID", "CNY", "RECEIVED", "CNY", "NET", "CNY",
                                "ENERGY", "KWH", "CARBON", "KG"]  # fmt: skip
    assert main(["settle", "--db", str(sampled), "--period", "2026-13"]) == 2
    assert "period must be YYYY-MM" in capsys.readouterr().err
    assert main(["ledger", "audit", "--db", str(sampled)]) == 0
    assert "3 statements" in capsys.readouterr().out


def test_missing_database_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "audit", "--db", str(tmp_path / "none.db")]) == 4
    assert "no ledger file at" in capsys.readouterr().err
