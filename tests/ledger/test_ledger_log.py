"""The log on a real SQLite file: appends, refusals, idempotency, evidence, proofs from
stored nodes, the append-only schema, and an audit that names the first bad entry."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from ledger import LedgerStore, Log, merkle
from ledger.bundle import ProofBundle, verify_bundle
from ledger.checkpoint import TrustPolicy
from ledger.errors import (
    AuditError,
    ConflictingRecord,
    EntryNotFound,
    InvalidRecord,
    RefusedRecord,
    SignatureError,
)
from ledger.keyring import Role
from ledger.records import RecordKind
from ledger.signing import sign_records
from tests.ledger.conftest import Parties, usage


def _snapshot(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return [
            row
            for table in ("entries", "nodes", "checkpoints", "statements")
            for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")
        ]


def _fill(log: Log, parties: Parties, n: int = 10) -> None:
    log.append(sign_records([usage(f"center/wuhan/u{i}") for i in range(n)], parties.wuhan))
    log.append(
        sign_records(
            [usage(f"center/guizhou/u{i}", producer="center/guizhou") for i in range(3)],
            parties.guizhou,
        )
    )
    log.checkpoint()


def test_append_returns_indexes_and_audits_clean(log: Log, parties: Parties) -> None:
    assert log.size == 4  # the log key and three admitted keys
    indexes = log.append(sign_records([usage("center/wuhan/single")], parties.wuhan))
    assert indexes == [4]
    _fill(log, parties)
    report = log.audit()
    assert (report.size, report.records, report.key_events, report.checkpoints) == (18, 14, 4, 1)
    assert report.root == log.store.root()


def test_idempotent_replay_and_conflict_evidence(log: Log, parties: Parties, db_path: Path) -> None:
    signed = sign_records([usage("center/wuhan/u1")], parties.wuhan)
    assert log.append(signed) == [4]
    assert log.append(signed) == [4]  # same bytes: the same index, nothing new
    assert log.size == 5
    before = _snapshot(db_path)
    changed = sign_records([usage("center/wuhan/u1", devices=4)], parties.wuhan)
    with pytest.raises(ConflictingRecord, match=r"'center/wuhan/u1' is already logged"):
        log.append(changed)
    assert _snapshot(db_path) == before
    ((record_id, leaf, reason),) = log.store.conflicts()
    assert record_id == "center/wuhan/u1"
    assert b'"devices":4' in leaf
    assert "different bytes" in reason


def test_refused_records_leave_the_log_unchanged(log: Log, parties: Parties, db_path: Path) -> None:
    log.checkpoint()
    before = _snapshot(db_path)
    cases = [
        # A key never admitted.
        (sign_records([usage("center/outsider/u1", producer="center/outsider")], parties.outsider),
         RefusedRecord, r"key center/outsider\+[0-9a-f]{8} is not admitted"),
        # Wuhan's key claiming to report for Guizhou.
        (sign_records([usage("center/guizhou/u1", producer="center/guizhou")], parties.wuhan),
         RefusedRecord, r"belongs to 'center/wuhan', not 'center/guizhou'"),
        # A tenant key signing usage.
        (sign_records([usage("tenant/lab/u1", producer="tenant/lab", consumer="center/wuhan")],
                      parties.lab),
         RefusedRecord, r"is a tenant key, not center"),
        # A good record after a refused one in the same call: all or nothing.
        (sign_records([usage("center/wuhan/u7")], parties.wuhan)
         + sign_records([usage("center/x/u1", producer="center/x")], parties.outsider),
         RefusedRecord, r"is not admitted"),
    ]  # fmt: skip
    for signed, error, message in cases:
        with pytest.raises(error, match=message):
            log.append(signed)
        assert _snapshot(db_path) == before
    forged = sign_records([usage("center/wuhan/u2")], parties.wuhan)[0]
    forged = dataclasses.replace(forged, record=usage("center/wuhan/u2", devices=16))
    with pytest.raises(SignatureError, match=r"producer signature .* does not verify"):
        log.append([forged])
    assert _snapshot(db_path) == before
    assert log.store.conflicts() == []


def test_revocation_keeps_what_the_key_signed_before(log: Log, parties: Parties) -> None:
    log.append(sign_records([usage("center/wuhan/u1")], parties.wuhan))
    log.revoke(parties.wuhan.key_id)
    with pytest.raises(RefusedRecord, match=r"was revoked at entry 5"):
        log.append(sign_records([usage("center/wuhan/u2")], parties.wuhan))
    rotated = dataclasses.replace(parties.outsider, name="center/wuhan")
    log.admit("center/wuhan", Role.CENTER, rotated.verifier)
    log.append(sign_records([usage("center/wuhan/u2")], rotated))
    log.checkpoint()
    assert log.audit().records == 2
    reopened = Log(LedgerStore(log.store.path))
    assert reopened.audit().records == 2


def test_corrections_and_acks_must_match_their_original(log: Log, parties: Parties) -> None:
    log.append(sign_records([usage("center/wuhan/u1")], parties.wuhan))
    fix = usage(
        "center/wuhan/u1-fix", kind=RecordKind.CORRECTION, refs="center/wuhan/u1", devices=4
    )
    fix = dataclasses.replace(fix, job_id="job-u1")  # a correction is of the same job
    log.append(sign_records([fix], parties.wuhan))
    stray = usage("center/wuhan/u2-fix", kind=RecordKind.CORRECTION, refs="center/wuhan/none")
    with pytest.raises(InvalidRecord, match=r"refs 'center/wuhan/none' is not in the log"):
        log.append(sign_records([stray], parties.wuhan))
    hijack = usage(
        "center/guizhou/fix",
        producer="center/guizhou",
        kind=RecordKind.CORRECTION,
        refs="center/wuhan/u1",
    )
    with pytest.raises(RefusedRecord, match=r"must keep the producer and consumer"):
        log.append(sign_records([hijack], parties.guizhou))
    ack = dataclasses.replace(
        usage("tenant/lab/ack1", producer="tenant/lab", consumer="center/wuhan"),
        kind=RecordKind.ACK,
        refs="center/wuhan/u1",
        job_id="",
        accelerator="",
        wall_s=0,
        devices=0,
        device_s=0,
        energy_wh=0,
        unit_price_minor=0,
        charge_minor=0,
    )
    log.append(sign_records([ack], parties.lab))
    log.checkpoint()
    assert log.audit().records == 3


def test_proofs_from_stored_nodes_match_a_rebuilt_tree(log: Log, parties: Parties) -> None:
    for batch in range(5):
        records = [usage(f"center/wuhan/b{batch}-{i}") for i in range(batch * 7 + 1)]
        log.append(sign_records(records, parties.wuhan))
    leaves = [merkle.hash_leaf(e.leaf) for e in log.store.entries()]
    size = len(leaves)
    assert log.store.root() == merkle.root(leaves)
    for s in (1, 2, 7, 33, size):
        assert log.store.root_at(s) == merkle.root(leaves[:s])
        for i in {0, s // 2, s - 1}:
            assert log.store.inclusion_proof(i, s) == merkle.inclusion_proof(i, leaves[:s])
        for s1 in {1, s // 3 + 1, s}:
            assert log.store.consistency_proof(s1, s) == merkle.consistency_proof(s1, leaves[:s])
    # Reopening restores the frontier from the stored nodes.
    assert LedgerStore(log.store.path).root() == merkle.root(leaves)


def test_prove_bundle_verifies_offline(log: Log, parties: Parties) -> None:
    _fill(log, parties)
    bundle = ProofBundle.from_json(log.prove(record_id="center/guizhou/u1").to_json())
    policy = TrustPolicy(log=parties.log_key.verifier)
    verified = verify_bundle(bundle, policy)
    assert verified.index == 15
    assert isinstance(verified.entry, dict) and verified.entry["type"] == "usage"
    leaf = bytearray(bundle.leaf)
    leaf[leaf.index(b'"carbon_g":0') + len('"carbon_g":')] = ord("7")
    with pytest.raises(merkle.ProofError, match="root mismatch"):
        verify_bundle(dataclasses.replace(bundle, leaf=bytes(leaf)), policy)
    with pytest.raises(SignatureError, match=r"key entry does not admit"):
        verify_bundle(dataclasses.replace(bundle, key_index=1, key_leaf=log.store.entry(1).leaf,
                                          key_proof=tuple(log.store.inclusion_proof(1, 17))),
                      policy)  # fmt: skip
    with pytest.raises(EntryNotFound, match=r"no record 'center/none'"):
        log.prove(record_id="center/none")


def test_schema_refuses_update_and_delete(log: Log, parties: Parties, db_path: Path) -> None:
    _fill(log, parties)
    with sqlite3.connect(db_path) as db:
        for sql in (
            "UPDATE entries SET leaf = x'00' WHERE idx = 5",
            "DELETE FROM entries WHERE idx = 5",
            "DELETE FROM nodes",
            "UPDATE checkpoints SET note = ''",
            "DELETE FROM meta",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="ledger is append-only"):
                db.execute(sql)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _tamper(db_path: Path, *sql: str) -> None:
    """What an attacker with the file can do: drop the guards, then edit."""
    with sqlite3.connect(db_path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
        for name in names:
            db.execute(f"DROP TRIGGER {name}")
        for statement in sql:
            db.execute(statement)


def _audit_fails_at(db_path: Path, index: int, message: str) -> None:
    with pytest.raises(AuditError, match=message) as caught:
        Log(LedgerStore(db_path)).audit()
    assert caught.value.index == index


def test_audit_names_a_flipped_byte(log: Log, parties: Parties, db_path: Path) -> None:
    _fill(log, parties)
    leaf = log.store.entry(9).leaf
    at = leaf.index(b'"carbon_g":0') + len('"carbon_g":')
    flipped = leaf[:at] + b"1" + leaf[at + 1 :]
    _tamper(db_path, f"UPDATE entries SET leaf = x'{flipped.hex()}' WHERE idx = 9")
    _audit_fails_at(db_path, 9, r"entry 9: leaf bytes do not match the stored leaf hash")


def test_audit_names_a_deleted_row(log: Log, parties: Parties, db_path: Path) -> None:
    _fill(log, parties)
    _tamper(db_path, "DELETE FROM entries WHERE idx = 11")
    with pytest.raises(Exception, match="not contiguous"):
        LedgerStore(db_path)
    # Renumbered to hide the gap: the hashes no longer match.
    _tamper(db_path, "UPDATE entries SET idx = idx - 1 WHERE idx > 11")
    _audit_fails_at(db_path, 11, r"entry 11: leaf bytes do not match")


def test_audit_names_reordered_rows(log: Log, parties: Parties, db_path: Path) -> None:
    _fill(log, parties)
    _tamper(
        db_path,
        "UPDATE entries SET idx = -1 WHERE idx = 7",
        "UPDATE entries SET idx = 7 WHERE idx = 8",
        "UPDATE entries SET idx = 8 WHERE idx = -1",
    )
    _audit_fails_at(db_path, 7, r"entry 7: leaf bytes do not match")


def test_audit_names_a_replaced_signature(log: Log, parties: Parties, db_path: Path) -> None:
    _fill(log, parties)
    entry = log.store.entry(6)
    other = log.append(sign_records([usage("center/wuhan/other")], parties.wuhan))[0]
    good_sig = entry.leaf.split(b'"producer":{"key":')[1].split(b'"sig":"')[1].split(b'"')[0]
    bad_sig = log.store.entry(other).leaf.split(b'"producer":{"key":')[1]
    bad_sig = bad_sig.split(b'"sig":"')[1].split(b'"')[0]
    leaf = entry.leaf.replace(good_sig, bad_sig)
    # A consistent forgery: leaf and stored hashes rewritten, so only signatures and the
    # signed checkpoint can tell.
    _tamper(
        db_path,
        f"UPDATE entries SET leaf = x'{leaf.hex()}' WHERE idx = 6",
        f"UPDATE nodes SET hash = x'{merkle.hash_leaf(leaf).hex()}' WHERE id = 6",
    )
    _audit_fails_at(db_path, 6, r"entry 6: record 'center/wuhan/u2': producer signature")


def test_audit_catches_a_rewritten_tree_by_the_checkpoint(
    log: Log, parties: Parties, db_path: Path
) -> None:
    _fill(log, parties)
    # Drop the last record and every node, rebuild the nodes and append others: every
    # stored hash is consistent, but the signed checkpoint is not.
    _tamper(db_path, "DELETE FROM entries WHERE idx >= 16", "DELETE FROM nodes")
    with sqlite3.connect(db_path) as db:
        leaves = [bytes(r[0]) for r in db.execute("SELECT leaf FROM entries ORDER BY idx")]
        frontier = merkle.Frontier()
        for leaf in leaves:
            for level, index, h in frontier.append(merkle.hash_leaf(leaf)):
                db.execute("INSERT INTO nodes (id, hash) VALUES (?, ?)", ((level << 48) | index, h))
    reopened = Log(LedgerStore(db_path), parties.log_key)
    reopened.append(sign_records([usage("center/guizhou/u9", producer="center/guizhou"),
                                  usage("center/guizhou/u8", producer="center/guizhou")],
                                 parties.guizhou))  # fmt: skip
    _audit_fails_at(db_path, 0, r"checkpoint at size 17: root does not match")
