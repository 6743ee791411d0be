"""Another region's usage accepted for a home tenant: two real logs (east at home, west
owning the center) in SQLite files with their own log keys; the bundle west proves, east
accepts under west's key; audits, statements with region flows, and a federation view
that balances and names the entries in both logs. Refused input leaves east unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.ledger import BrokerLedger
from ledger import (
    AcceptedRecord,
    AcceptedRef,
    LedgerStore,
    Log,
    ProofBundle,
    Role,
    SignerKey,
    UsageRecord,
    VerifierKey,
    canonical,
    federation_view,
    sign_records,
    sign_statement,
    verify_statement,
)
from ledger.accepted import MAX_ACCEPTED_BYTES
from ledger.checkpoint import Checkpoint
from ledger.errors import (
    AuditError,
    ConflictingRecord,
    InvalidRecord,
    NoteError,
    ProofError,
    RefusedRecord,
    SignatureError,
    VerificationError,
)
from ledger.records import RecordKind
from tests.ledger.conftest import NOV_2026_MS, seeded_key, usage

EAST, WEST = "icx/east", "icx/west"  # the logs' origins
PERIOD = "2026-11"
WEST_CENTER, EAST_CENTER = "center/west-1", "center/east-1"
LAB, WLAB = "tenant/lab", "tenant/wlab"  # east's tenant, west's tenant
# Entries 0 (the log key) and 1 (the center's key) come first in both logs.
FIRST = 2


@dataclass
class Region:
    party: str
    log: Log
    key: SignerKey
    center: SignerKey
    center_id: str

    def run(self, record: UsageRecord) -> ProofBundle:
        """The center signs `record`, the log appends and checkpoints it, and proves it."""
        self.log.append(sign_records([record], self.center))
        self.log.checkpoint()
        return self.log.prove(record_id=record.record_id)


def _region(path: Path, party: str, origin: str, seed: int, center_id: str) -> Region:
    key = seeded_key(origin, seed)
    log = Log.create(LedgerStore(path), key)
    center = seeded_key(center_id, seed + 1)
    log.admit(center_id, Role.CENTER, center.verifier)
    return Region(party=party, log=log, key=key, center=center, center_id=center_id)


@pytest.fixture
def east(tmp_path: Path) -> Iterator[Region]:
    region = _region(tmp_path / "east.db", "east", EAST, 11, EAST_CENTER)
    yield region
    region.log.store.close()


@pytest.fixture
def west(tmp_path: Path) -> Iterator[Region]:
    region = _region(tmp_path / "west.db", "west", WEST, 21, WEST_CENTER)
    yield region
    region.log.store.close()


def _snapshot(log: Log) -> list[tuple[object, ...]]:
    with sqlite3.connect(log.store.path) as db:
        return [
            row
            for table in ("entries", "nodes", "checkpoints", "statements", "conflicts")
            for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")
        ]


def _correction(of: UsageRecord, record_id: str, wall_s: int) -> UsageRecord:
    fixed = usage(
        record_id,
        producer=of.producer,
        consumer=of.consumer,
        kind=RecordKind.CORRECTION,
        refs=of.record_id,
        wall_s=wall_s,
    )
    return dataclasses.replace(fixed, job_id=of.job_id)


def test_the_home_log_accepts_a_record_the_owner_holds(east: Region, west: Region) -> None:
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    bundle = west.run(r1)
    accepted = AcceptedRecord(owner="west", bundle=bundle)
    assert (accepted.origin, accepted.index, accepted.record) == (WEST, FIRST, r1)
    assert accepted.accepted_id == "icx/west#2"

    size = east.log.size
    index = east.log.accept(accepted, west.log.log_key)
    assert index == size and east.log.size == size + 1
    leaf = east.log.store.entry(index).leaf
    assert leaf == accepted.entry() == canonical.encode(accepted.to_json())
    entry = canonical.decode(leaf)
    assert isinstance(entry, dict)
    assert (entry["type"], entry["owner"]) == ("accepted", "west")
    assert AcceptedRecord.from_entry(leaf) == accepted

    # Idempotent: the same bundle, and the same record proven under a later checkpoint.
    assert east.log.accept(accepted, west.log.log_key) == index
    west.run(usage("center/west-1/r2", producer=WEST_CENTER, consumer=LAB))
    later = AcceptedRecord(owner="west", bundle=west.log.prove(record_id=r1.record_id))
    assert later.bundle.checkpoint != bundle.checkpoint
    assert east.log.accept(later, west.log.log_key) == index
    assert east.log.size == size + 1

    assert list(east.log.accepted()) == [(index, accepted)]
    assert list(east.log.records()) == []  # its own usage records only
    assert east.log.find_accepted("icx/west#2") == index
    assert east.log.find_accepted("icx/west#3") is None

    east.log.checkpoint()
    report = Log(LedgerStore(east.log.store.path)).audit()
    assert (report.size, report.records, report.accepted, report.accepted_verified) == (
        size + 1,
        0,
        1,
        0,
    )
    report = Log(LedgerStore(east.log.store.path)).audit(peer_logs={WEST: west.log.log_key})
    assert (report.accepted, report.accepted_verified) == (1, 1)
    impostor = seeded_key(WEST, 99).verifier  # named after west, not west's key
    with pytest.raises(AuditError, match=r"entry 2: note has no verifiable signatures") as err:
        Log(LedgerStore(east.log.store.path)).audit(peer_logs={WEST: impostor})
    assert err.value.index == index


def test_refused_bundles_leave_the_home_log_unchanged(
    east: Region, west: Region, tmp_path: Path
) -> None:
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    bundle = west.run(r1)
    key = west.log.log_key
    before = _snapshot(east.log)

    def refused(
        error: type[Exception], match: str, accepted: AcceptedRecord, by: VerifierKey = key
    ) -> None:
        with pytest.raises(error, match=match):
            east.log.accept(accepted, by)
        assert _snapshot(east.log) == before

    # A bundle under another key: the checkpoint is not west's.
    other = _region(tmp_path / "other.db", "west", WEST, 31, WEST_CENTER)
    forged = AcceptedRecord(owner="west", bundle=other.run(r1))
    refused(NoteError, r"note has no verifiable signatures", forged)
    # A key that is not named after the bundle's log.
    north = seeded_key("icx/north", 21).verifier
    match = r"named 'icx/north', not after the bundle's log 'icx/west'"
    refused(SignatureError, match, AcceptedRecord(owner="west", bundle=bundle), north)
    # A tampered leaf, and a wrong inclusion proof.
    leaf = bundle.leaf.replace(b'"job-r1"', b'"job-r9"')
    assert leaf != bundle.leaf
    tampered = AcceptedRecord(owner="west", bundle=dataclasses.replace(bundle, leaf=leaf))
    refused(ProofError, r"root mismatch", tampered)
    proof = (bytes(32), *bundle.proof[1:])
    wrong = AcceptedRecord(owner="west", bundle=dataclasses.replace(bundle, proof=proof))
    refused(ProofError, r"root mismatch", wrong)
    # A key event is not a usage record.
    with pytest.raises(InvalidRecord, match=r"icx/west#1: the owner's entry is a key event"):
        AcceptedRecord(owner="west", bundle=west.log.prove(index=1))
    # An ack carries no charge.
    lab = seeded_key(LAB, 41)
    west.log.admit(LAB, Role.TENANT, lab.verifier)
    ack = UsageRecord(
        record_id="tenant/lab/ack1",
        kind=RecordKind.ACK,
        refs=r1.record_id,
        producer=LAB,
        consumer=WEST_CENTER,
        start_ms=NOV_2026_MS,
        end_ms=NOV_2026_MS,
    )
    west.log.append(sign_records([ack], lab))
    west.log.checkpoint()
    with pytest.raises(
        InvalidRecord, match=r"'tenant/lab/ack1' \(ack\) carries no charge; only usage"
    ):
        AcceptedRecord(owner="west", bundle=west.log.prove(record_id=ack.record_id))
    # An owner that is no party name, and a bundle too large to read.
    with pytest.raises(InvalidRecord, match=r"owner must be 1..128 of .*, got 'west side'"):
        AcceptedRecord(owner="west side", bundle=bundle)
    with pytest.raises(InvalidRecord, match=rf"at most {MAX_ACCEPTED_BYTES} characters"):
        AcceptedRecord.parse("west", " " * (MAX_ACCEPTED_BYTES + 1))
    # A record of the home log itself.
    own = east.run(usage("center/east-1/e1", producer=EAST_CENTER, consumer=LAB))
    before = _snapshot(east.log)
    with pytest.raises(RefusedRecord, match=r"icx/east#2: the record is this log's own"):
        east.log.accept(AcceptedRecord(owner="east", bundle=own), east.log.log_key)
    assert _snapshot(east.log) == before

    # A conflicting re-accept: another record under the same <origin>#<index> (west's
    # log forked: the same key signed two trees), and the same record from another owner.
    index = east.log.accept(AcceptedRecord(owner="west", bundle=bundle), key)
    fork = _region(tmp_path / "fork.db", "west", WEST, 21, WEST_CENTER)
    other_run = fork.run(usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB, devices=1))
    assert other_run.index == bundle.index and other_run.leaf != bundle.leaf
    size = east.log.size
    with pytest.raises(ConflictingRecord, match=rf"icx/west#2 is already entry {index} with"):
        east.log.accept(AcceptedRecord(owner="west", bundle=other_run), key)
    with pytest.raises(ConflictingRecord, match=rf"already entry {index}, from 'west'"):
        east.log.accept(AcceptedRecord(owner="north", bundle=bundle), key)
    assert east.log.size == size
    assert [(rid, why) for rid, _, why in east.log.store.conflicts()] == [
        ("icx/west#2", f"accepted icx/west#2 is already entry {index} with another record"),
        ("icx/west#2", f"accepted icx/west#2 is already entry {index}, from 'west'"),
    ]
    fork.log.store.close()
    other.log.store.close()


def test_the_statement_carries_the_region_flow(east: Region, west: Region) -> None:
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    e1 = usage("center/east-1/e1", producer=EAST_CENTER, consumer=LAB, devices=2)
    east.run(e1)
    index = east.log.accept(AcceptedRecord(owner="west", bundle=west.run(r1)), west.log.log_key)
    east.log.checkpoint()

    result, signed = east.log.settle(PERIOD, home="east")
    assert result.matrix == {(LAB, EAST_CENTER): e1.charge_minor}  # its own records only
    assert result.regions == {("east", "west"): r1.charge_minor}
    assert result.region_entries == {
        ("east", "west"): (AcceptedRef(index=index, origin=WEST, owner_index=FIRST),)
    }
    assert result.region_positions == {"east": -r1.charge_minor, "west": r1.charge_minor}
    assert sum(result.region_positions.values()) == 0
    body = verify_statement(signed, east.log.log_key)
    assert body["regions"] == [
        {
            "payer": "east",
            "payee": "west",
            "amount_minor": r1.charge_minor,
            "entries": [{"index": index, "origin": WEST, "owner_index": FIRST}],
        }
    ]

    # Without `home` the statement is what it always was.
    plain, plain_signed = east.log.settle(PERIOD)
    assert plain.regions == {} and "regions" not in verify_statement(plain_signed, east.log.log_key)
    assert plain.matrix == result.matrix and plain.transfers == result.transfers
    # A tenant's statement holds no region flow; the owner's holds the one it is paid.
    lab, lab_signed = east.log.settle(PERIOD, party=LAB, home="east")
    assert lab.regions == {} and "regions" not in verify_statement(lab_signed, east.log.log_key)
    owner, _ = east.log.settle(PERIOD, party="west", home="east")
    assert owner.regions == result.regions and owner.totals["west"].paid_minor == 0
    # The audit recomputes every statement, region flows included.
    assert Log(LedgerStore(east.log.store.path)).audit().statements == 4
    more = dataclasses.replace(result, regions={("east", "west"): r1.charge_minor + 1})
    east.log.store.add_statement("*", PERIOD, sign_statement(more, east.key))
    with pytest.raises(AuditError, match=r"statement for 2026-11 does not recompute"):
        Log(LedgerStore(east.log.store.path)).audit()
    # Another period holds nothing.
    assert east.log.settle("2026-12", home="east")[0].regions == {}
    with pytest.raises(InvalidRecord, match=r"home must be 1..128 of .*, got 'east side'"):
        east.log.settle(PERIOD, home="east side")
    with pytest.raises(InvalidRecord, match=r"accepts icx/west#2 from 'west', this region itself"):
        east.log.settle(PERIOD, home="west")


def test_a_federation_view_balances_and_names_both_logs(east: Region, west: Region) -> None:
    # East's tenant runs at west, and the run is corrected there; west's tenant runs at
    # east; each region also runs its own tenant's job.
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    fix = _correction(r1, "center/west-1/r1-fix", wall_s=1800)
    w1 = usage("center/west-1/w1", producer=WEST_CENTER, consumer=WLAB, devices=4)
    e1 = usage("center/east-1/e1", producer=EAST_CENTER, consumer=LAB, devices=2)
    x1 = usage("center/east-1/x1", producer=EAST_CENTER, consumer=WLAB, devices=1)
    r1_bundle = west.run(r1)
    fix_bundle = west.run(fix)
    west.run(w1)
    east.run(e1)
    x1_bundle = east.run(x1)
    east.log.accept(AcceptedRecord(owner="west", bundle=fix_bundle), west.log.log_key)
    east.log.accept(AcceptedRecord(owner="west", bundle=r1_bundle), west.log.log_key)
    west.log.accept(AcceptedRecord(owner="east", bundle=x1_bundle), east.log.log_key)
    east.log.checkpoint()
    west.log.checkpoint()
    assert fix.charge_minor != r1.charge_minor

    view = federation_view([east.log.region("east"), west.log.region("west")], period=PERIOD)
    assert view.accepted == 3
    # The correction is in force (the latest in west's log), whichever east took first.
    assert view.regions == {("east", "west"): fix.charge_minor, ("west", "east"): x1.charge_minor}
    assert view.region_positions == {
        "east": x1.charge_minor - fix.charge_minor,
        "west": fix.charge_minor - x1.charge_minor,
    }
    assert sum(view.region_positions.values()) == 0
    assert view.positions == {
        LAB: -(fix.charge_minor + e1.charge_minor),
        WLAB: -(w1.charge_minor + x1.charge_minor),
        WEST_CENTER: fix.charge_minor + w1.charge_minor,
        EAST_CENTER: e1.charge_minor + x1.charge_minor,
    }
    assert sum(view.positions.values()) == 0
    # Each flow names its entries in both logs, and they hold the same record.
    logs = {EAST: east.log, WEST: west.log}
    named = []
    for (payer, _), refs in sorted(
        (cell, refs)
        for statement in view.statements.values()
        for cell, refs in statement.region_entries.items()
    ):
        home = logs[EAST] if payer == "east" else logs[WEST]
        for ref in refs:
            accepted = AcceptedRecord.from_entry(home.store.entry(ref.index).leaf)
            assert accepted.bundle.leaf == logs[ref.origin].store.entry(ref.owner_index).leaf
            named.append((payer, ref.origin, ref.owner_index, accepted.record.record_id))
    assert named == [
        ("east", WEST, FIRST + 1, fix.record_id),
        ("west", EAST, FIRST + 1, x1.record_id),
    ]


def test_the_federation_view_catches_a_record_the_owner_does_not_hold(
    east: Region, west: Region, tmp_path: Path
) -> None:
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    index = east.log.accept(AcceptedRecord(owner="west", bundle=west.run(r1)), west.log.log_key)
    east.log.checkpoint()
    # West's key signed another tree, in which entry 2 holds another record.
    fork = _region(tmp_path / "fork.db", "west", WEST, 21, WEST_CENTER)
    fork.run(usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB, devices=1))
    home = east.log.region("east")
    with pytest.raises(
        VerificationError,
        match=rf"east entry {index} \(of icx/east\) accepts icx/west#2, but west entry 2 "
        r"\(of icx/west\) holds other bytes than the accepted record",
    ):
        federation_view([home, fork.log.region("west")], period=PERIOD)
    with pytest.raises(VerificationError, match=r"but log 'icx/west' is not in the view"):
        federation_view([home], period=PERIOD)
    with pytest.raises(
        VerificationError, match=r"from 'west', but log 'icx/west' is region 'north'"
    ):
        federation_view([home, west.log.region("north")], period=PERIOD)
    with pytest.raises(InvalidRecord, match=r"region 'east' \(log 'icx/east'\) is in the view tw"):
        federation_view([home, home], period=PERIOD)
    # The owner's view at a checkpoint from before the record does not cover it.
    current = west.log.region("west")
    stale = Checkpoint(origin=WEST, size=FIRST, root=west.log.store.root_at(FIRST))
    with pytest.raises(
        VerificationError, match=r"west entry 2 is beyond its checkpoint \(size 2\)"
    ):
        federation_view([home, dataclasses.replace(current, checkpoint=stale)], period=PERIOD)
    fork.log.store.close()


@pytest.mark.parametrize("case", ["bad-key-proof", "own-record", "twice"])
def test_the_audit_checks_each_accepted_entry(east: Region, west: Region, case: str) -> None:
    bundle = west.run(usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB))
    good = AcceptedRecord(owner="west", bundle=bundle)
    east.log.store.append([(None, "accepted", good.entry())])
    east.log.checkpoint()
    assert Log(LedgerStore(east.log.store.path)).audit().accepted == 1
    # An entry appended past Log.accept, and what the audit says of it.
    if case == "bad-key-proof":
        r2 = west.run(usage("center/west-1/r2", producer=WEST_CENTER, consumer=LAB))
        bad = dataclasses.replace(r2, key_proof=(bytes(32), *r2.key_proof[1:]))
        accepted, reason = AcceptedRecord(owner="west", bundle=bad), r"root mismatch"
    elif case == "own-record":
        own = east.run(usage("center/east-1/e1", producer=EAST_CENTER, consumer=LAB))
        accepted = AcceptedRecord(owner="east", bundle=own)
        reason = r"accepted icx/east#\d+ is a record of this log"
    else:
        accepted, reason = good, r"accepted icx/west#2 appears twice"
    index = east.log.store.append([(None, "accepted", accepted.entry())])
    with pytest.raises(AuditError, match=rf"entry {index}: {reason}") as err:
        Log(LedgerStore(east.log.store.path)).audit()
    assert err.value.index == index


def test_the_broker_ledger_accepts_and_states_region_flows(tmp_path: Path, west: Region) -> None:
    r1 = usage("center/west-1/r1", producer=WEST_CENTER, consumer=LAB)
    bundle_json = west.run(r1).to_json()

    async def main() -> None:
        ledger = BrokerLedger(tmp_path / "broker.db", origin=EAST)
        ledger.open()
        try:
            index = await ledger.accept("west", bundle_json, west.log.log_key)
            assert await ledger.accept("west", bundle_json, west.log.log_key) == index
            assert await ledger.has_accepted("icx/west#2")
            assert not await ledger.has_accepted("icx/west#1")
            key = await ledger.key_text()
            signed = await ledger.region_statement(PERIOD, home="east")
            body = verify_statement(signed, VerifierKey.parse(key))
            assert body["regions"] == [
                {
                    "payer": "east",
                    "payee": "west",
                    "amount_minor": r1.charge_minor,
                    "entries": [{"index": index, "origin": WEST, "owner_index": FIRST}],
                }
            ]
            plain = verify_statement(await ledger.statement(PERIOD), VerifierKey.parse(key))
            assert "regions" not in plain
            with pytest.raises(InvalidRecord, match=r"bundle: not JSON"):
                await ledger.accept("west", "{", west.log.log_key)
        finally:
            ledger.close()

    asyncio.run(main())
