"""Settlement: a generated month among 20 parties, corrections, and statements that
recompute to the same bytes."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import LedgerStore, Log
from ledger.checkpoint import Checkpoint
from ledger.errors import AuditError, InvalidRecord, SignatureError
from ledger.records import RecordKind
from ledger.sample import fill
from ledger.settlement import (
    _transfers,
    period_bounds,
    settle,
    sign_statement,
    verify_statement,
)
from ledger.signing import sign_records
from tests.ledger.conftest import NOV_2026_MS, Parties, seeded_key, usage

DEC_2026_MS = 1_796_083_200_000


def test_period_bounds() -> None:
    assert period_bounds("2026-11") == (NOV_2026_MS, DEC_2026_MS)
    assert period_bounds("2026-12")[1] == 1_798_761_600_000
    with pytest.raises(InvalidRecord, match=r"period must be YYYY-MM, got '2026-13'"):
        period_bounds("2026-13")


def _month(tmp_path: Path) -> Log:
    store = LedgerStore(tmp_path / "month.db")
    log = Log.create(store, seeded_key("icx.test/ledger", 1))
    # 8 centers and 12 tenants: 20 parties; a week before and after the month too.
    fill(log, records=600, centers=8, tenants=12, seed=7, start_ms=NOV_2026_MS - 7 * 86_400_000,
         span_ms=44 * 86_400_000, batch=16)  # fmt: skip
    log.checkpoint()
    return log


def test_a_month_among_20_parties(tmp_path: Path) -> None:
    log = _month(tmp_path)
    result, signed = log.settle("2026-11")
    positions = result.positions
    assert len(positions) == 20
    assert sum(positions.values()) == 0
    assert 0 < result.records < 600  # the weeks outside November are left out
    assert len(result.transfers) <= len(positions) - 1
    after = dict(positions)
    for t in result.transfers:
        assert t.amount_minor > 0
        after[t.payer] += t.amount_minor
        after[t.payee] -= t.amount_minor
    assert set(after.values()) == {0}
    # The matrix is what the positions net.
    for party, net in positions.items():
        received = sum(v for (_, payee), v in result.matrix.items() if payee == party)
        paid = sum(v for (payer, _), v in result.matrix.items() if payer == party)
        assert net == received - paid

    body = verify_statement(signed, log.log_key)
    assert body["checkpoint"] == {
        "origin": "icx.test/ledger",
        "size": log.size,
        "root": base64.b64encode(log.store.root()).decode(),
    }
    # Anyone with the log recomputes the same bytes.
    again = Log(LedgerStore(log.store.path), seeded_key("icx.test/ledger", 1))
    assert again.settle("2026-11")[1] == signed
    assert Log(LedgerStore(log.store.path)).audit().statements == 2


def test_audit_recomputes_statements(tmp_path: Path) -> None:
    log = _month(tmp_path)
    log.settle("2026-11")
    forged = bytearray(log.store.statements()[0][2])
    at = forged.index(b'"records":') + len('"records":')
    forged[at] = ord("1") if forged[at] != ord("1") else ord("2")
    with pytest.raises(SignatureError):
        verify_statement(bytes(forged), log.log_key)
    log.store.add_statement("*", "2026-11", bytes(forged))
    with pytest.raises(AuditError, match=r"statement: statement signature .* does not verify"):
        log.audit()


def test_corrections_replace_their_original(log: Log, parties: Parties) -> None:
    log.append(sign_records([usage("center/wuhan/u1"), usage("center/wuhan/u2")], parties.wuhan))
    fix = usage("center/wuhan/u1-fix", kind=RecordKind.CORRECTION, refs="center/wuhan/u1",
                devices=2)  # fmt: skip
    log.append(sign_records([fix], parties.wuhan))
    log.checkpoint()
    result, _ = log.settle("2026-11")
    assert result.records == 2
    assert result.matrix == {("tenant/lab", "center/wuhan"): 9600 + 2400}
    assert [(t.payer, t.payee, t.amount_minor) for t in result.transfers] == [
        ("tenant/lab", "center/wuhan", 12000)
    ]


def test_settle_refuses_entries_beyond_the_checkpoint() -> None:
    cp = Checkpoint(origin="o", size=1, root=bytes(32))
    with pytest.raises(InvalidRecord, match=r"entry 1 is beyond the checkpoint"):
        settle([(1, usage("center/wuhan/u1"))], period="2026-11", checkpoint=cp)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f"p{i}" for i in range(30)]), st.integers(-(10**9), 10**9)))
def test_transfers_settle_any_balanced_positions(raw: dict[str, int]) -> None:
    positions = {p: v for p, v in raw.items() if v}
    if positions:
        # Balance them on one more party.
        positions["zz"] = -sum(positions.values())
    positions = {p: v for p, v in positions.items() if v}
    transfers = _transfers(positions)
    assert transfers == _transfers(dict(reversed(list(positions.items()))))
    assert len(transfers) <= max(0, len(positions) - 1)
    left = dict(positions)
    for t in transfers:
        assert t.amount_minor > 0
        left[t.payer] += t.amount_minor
        left[t.payee] -= t.amount_minor
    assert all(v == 0 for v in left.values())


def _in_period(log: Log, party: str) -> int:
    t0, t1 = period_bounds("2026-11")
    return sum(
        1 for _, r in log.records() if party in (r.producer, r.consumer) and t0 <= r.end_ms < t1
    )


@pytest.mark.parametrize("party", ["center/wuhan-1", "tenant/t003"])
def test_a_party_statement_holds_only_its_figures(tmp_path: Path, party: str) -> None:
    log = _month(tmp_path)
    whole, signed_whole = log.settle("2026-11")
    mine, signed = log.settle("2026-11", party=party)
    assert mine.party == party and mine.checkpoint == whole.checkpoint
    assert list(mine.totals) == [party]
    assert mine.totals[party] == whole.totals[party]
    assert mine.totals[party] is not whole.totals[party]
    assert mine.positions == {party: whole.positions[party]}
    assert mine.records == _in_period(log, party) > 0
    assert mine.matrix == {cell: v for cell, v in whole.matrix.items() if party in cell}
    assert mine.matrix
    assert mine.transfers == tuple(t for t in whole.transfers if party in (t.payer, t.payee))
    assert mine.transfers
    # Its matrix cells net to its position, and its transfers clear it.
    received = sum(v for (_, payee), v in mine.matrix.items() if payee == party)
    paid = sum(v for (payer, _), v in mine.matrix.items() if payer == party)
    assert received - paid == whole.positions[party]
    moved = sum(t.amount_minor if t.payee == party else -t.amount_minor for t in mine.transfers)
    assert moved == whole.positions[party]

    body = verify_statement(signed, log.log_key)
    whole_body = verify_statement(signed_whole, log.log_key)
    assert body["party"] == party and "party" not in whole_body
    rows = whole_body["parties"]
    assert isinstance(rows, list)
    assert body["parties"] == [r for r in rows if isinstance(r, dict) and r["party"] == party]
    assert [s[0] for s in log.store.statements()] == ["*", party]
    assert Log(LedgerStore(log.store.path)).audit().statements == 2


def test_a_party_without_usage_gets_zeros(tmp_path: Path) -> None:
    log = _month(tmp_path)
    mine, signed = log.settle("2026-11", party="tenant/none")
    body = verify_statement(signed, log.log_key)
    assert (mine.records, mine.matrix, mine.transfers) == (0, {}, ())
    assert body["parties"] == [
        {"party": "tenant/none", "net_minor": 0, "received_minor": 0, "paid_minor": 0,
         "device_s_produced": 0, "device_s_consumed": 0, "energy_wh": 0, "carbon_g": 0}
    ]  # fmt: skip
    assert log.audit().statements == 1


def test_a_party_statement_refuses_a_name_that_is_no_party(tmp_path: Path) -> None:
    log = _month(tmp_path)
    with pytest.raises(InvalidRecord, match=r"party must be 1\.\.128 of .*, got '\*'"):
        log.settle("2026-11", party="*")
    assert log.store.statements() == []
    whole, _ = log.settle("2026-11")
    with pytest.raises(
        InvalidRecord, match=r"this is the statement of 'tenant/t001', not of 'tenant/t002'"
    ):
        whole.for_party("tenant/t001").for_party("tenant/t002")


def test_audit_recomputes_party_statements(tmp_path: Path) -> None:
    log = _month(tmp_path)
    mine, signed = log.settle("2026-11", party="tenant/t003")
    assert log.signer is not None
    # Signed by the log key, so only recomputing tells: a transfer left out, another
    # party's statement filed under this one, the whole statement filed under a party.
    forged = sign_statement(dataclasses.replace(mine, transfers=mine.transfers[1:]), log.signer)
    other = log.settle("2026-11", party="tenant/t004")[1]
    whole = log.settle("2026-11")[1]
    assert log.audit().statements == 3
    cases = [
        ("tenant/t003", forged, r"statement of 'tenant/t003' for 2026-11 does not recompute"),
        ("tenant/t003", other, r"statement of 'tenant/t003' for 2026-11 does not recompute"),
        ("tenant/t003", whole, r"statement of 'tenant/t003' for 2026-11 does not recompute"),
        ("*", signed, r"entry \d+: statement: statement for 2026-11 does not recompute"),
    ]
    for party, data, message in cases:
        tampered = tmp_path / "tampered.db"
        tampered.unlink(missing_ok=True)
        with (
            closing(sqlite3.connect(log.store.path)) as src,
            closing(sqlite3.connect(tampered)) as dst,
        ):
            src.backup(dst)
        copy = Log(LedgerStore(tampered))
        copy.store.add_statement(party, "2026-11", data)
        with pytest.raises(AuditError, match=message):
            copy.audit()
        copy.store.close()
