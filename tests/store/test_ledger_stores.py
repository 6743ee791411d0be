"""The ledger store contract on both stores: the SQLite file (ledger.LedgerStore) and the
broker's PostgreSQL ledger (broker.pg_ledger_store, on the tests' real server): appends,
roots and proofs against the pure Merkle functions, a reopen, lookups, checkpoints and
cosignatures, evidence and statements, a whole Log with its audit and proof bundles, and
the append-only rule enforced by the database itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.pg_ledger_store import PostgresLedgerStore
from ledger import LedgerStore, Log, LogStore, Role, merkle
from ledger.bundle import verify_bundle
from ledger.checkpoint import TrustPolicy
from ledger.errors import EntryNotFound, LedgerError
from ledger.signing import sign_records
from tests.ledger.conftest import seeded_key, usage

ORIGIN = "icx.test/ledger"


class Stores:
    """Opens the store under test anew on the same data, and runs raw SQL around it."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str) -> None:
        self.kind = kind
        self.path = tmp_path / "ledger.db"
        self.url = pg_url
        self.prefix = "ledger_" if kind == "postgresql" else ""

    def open(self) -> LogStore:
        if self.kind == "postgresql":
            return PostgresLedgerStore(self.url)
        return LedgerStore(self.path)

    def raw(self, sql: str) -> list[tuple[object, ...]]:
        """Run `sql` (tables named without the prefix) outside the store; its rows."""
        sql = sql.replace("{t}", self.prefix)
        if self.kind == "postgresql":
            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(sql.encode())
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
        with sqlite3.connect(self.path) as db:
            return [tuple(r) for r in db.execute(sql)]


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)


@pytest.fixture
def store(stores: Stores) -> Iterator[LogStore]:
    s = stores.open()
    try:
        yield s
    finally:
        s.close()


def _leaves(n: int, start: int = 0) -> list[tuple[str | None, str, bytes]]:
    return [(f"c/run{i}", "usage", f"leaf {i}".encode()) for i in range(start, start + n)]


def test_roots_and_proofs_match_the_merkle_functions_and_survive_a_reopen(
    stores: Stores, store: LogStore
) -> None:
    # 70 leaves: past the level whose nodes are also kept in memory (64).
    assert store.append(_leaves(3)) == 0
    assert store.append(_leaves(67, start=3)) == 3
    hashes = [merkle.hash_leaf(leaf) for _, _, leaf in _leaves(70)]
    assert (store.size, store.root()) == (70, merkle.root(hashes))
    store.close()
    store = stores.open()
    try:
        assert (store.size, store.root()) == (70, merkle.root(hashes))
        for size in (1, 7, 64, 65, 70):
            root = merkle.root(hashes[:size])
            assert store.root_at(size) == root
            for index in {0, size // 2, size - 1}:
                proof = store.inclusion_proof(index, size)
                assert proof == merkle.inclusion_proof(index, hashes[:size])
                merkle.verify_inclusion(hashes[index], index, size, proof, root)
            proof = store.consistency_proof(5, size) if size >= 5 else []
            if size >= 5:
                merkle.verify_consistency(5, size, proof, merkle.root(hashes[:5]), root)
        assert store.stored_leaf_hash(69) == hashes[69]
        assert [i for i, _, _ in store.raw_rows()] == list(range(70))
    finally:
        store.close()


def test_lookups_by_index_record_id_run_and_type(store: LogStore) -> None:
    store.append([(None, "key", b"k0"), ("c/r1", "usage", b"a"), ("c/r1/2", "usage", b"b")])
    store.append([("c/r1-x", "usage", b"c"), ("c/r10", "usage", b"d"), ("p#1", "accepted", b"e")])
    assert store.entry(1).leaf == b"a"
    with pytest.raises(EntryNotFound, match="no entry at index 6"):
        store.entry(6)
    found = store.find("c/r1/2")
    assert found is not None and (found.index, found.type) == (2, "usage")
    assert store.find("nope") is None
    assert sorted(store.find_many(["c/r1", "c/r10", "nope", "c/r1"])) == ["c/r1", "c/r10"]
    assert [e.record_id for e in store.find_run("c/r1")] == ["c/r1", "c/r1/2"]
    assert [e.index for e in store.entries(type="accepted")] == [5]
    assert [e.index for e in store.entries(1, 3)] == [1, 2]


def test_checkpoints_cosignatures_evidence_statements_and_settings(store: LogStore) -> None:
    store.append(_leaves(2))
    store.add_checkpoint(2, "note at 2")
    store.add_checkpoint(2, "note at 2")  # the same again: kept once
    with pytest.raises(LedgerError, match="a different checkpoint for size 2"):
        store.add_checkpoint(2, "another note")
    store.add_cosignature(2, "— witness sig1")
    store.add_cosignature(2, "— witness sig1")
    store.add_cosignature(2, "— other sig2")
    store.add_checkpoint(1, "note at 1")
    assert store.checkpoints() == [
        (1, "note at 1", []),
        (2, "note at 2", ["— witness sig1", "— other sig2"]),
    ]
    assert store.latest_checkpoint() == (2, "note at 2", ["— witness sig1", "— other sig2"])
    store.add_conflict("c/run0", b"\x00other bytes", "already logged")
    store.add_statement("tenant/lab", "2026-11", b"\x01signed")
    assert store.conflicts() == [("c/run0", b"\x00other bytes", "already logged")]
    assert store.statements() == [("tenant/lab", "2026-11", b"\x01signed")]
    store.set_meta("log_key", "k1")
    store.set_meta("log_key", "k1")
    with pytest.raises(LedgerError, match="log_key is already 'k1', cannot set 'k2'"):
        store.set_meta("log_key", "k2")
    assert store.meta("log_key") == "k1"


def test_a_whole_log_appends_proves_settles_and_audits(stores: Stores, store: LogStore) -> None:
    log_key, wuhan = seeded_key(ORIGIN, 1), seeded_key("center/wuhan", 2)
    log = Log.create(store, log_key)
    log.admit("center/wuhan", Role.CENTER, wuhan.verifier)
    indexes = log.append(sign_records([usage(f"center/wuhan/u{i}") for i in range(5)], wuhan))
    assert indexes == [2, 3, 4, 5, 6]
    note = log.checkpoint()
    bundle = log.prove(record_id="center/wuhan/u3")
    assert bundle.index == 5
    verify_bundle(bundle, TrustPolicy(log=log_key.verifier))
    log.settle("2026-11")
    report = log.audit()
    assert (report.size, report.records, report.checkpoints) == (7, 5, 1)
    store.close()
    again = Log(stores.open(), log_key)
    try:
        assert again.latest_note() == note and again.audit().root == report.root
    finally:
        again.store.close()


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE {t}entries SET leaf = 'x'",
        "DELETE FROM {t}entries WHERE idx = 1",
        "UPDATE {t}nodes SET hash = hash",
        "DELETE FROM {t}checkpoints",
        "UPDATE {t}meta SET value = 'other'",
        "DELETE FROM {t}statements",
    ],
)
def test_the_database_refuses_to_change_the_log(
    stores: Stores, store: LogStore, change: str
) -> None:
    store.append(_leaves(3))
    store.add_checkpoint(3, "note")
    store.set_meta("log_key", "k")
    store.add_statement("p", "2026-11", b"s")
    before = _everything(stores)
    error: type[Exception] = psycopg.Error if stores.kind == "postgresql" else sqlite3.Error
    with pytest.raises(error, match="ledger is append-only"):
        stores.raw(change)
    assert _everything(stores) == before


def test_truncating_the_postgresql_log_is_refused_too(pg_url: str) -> None:
    stores = Stores("postgresql", Path("/nonexistent"), pg_url)
    store = stores.open()
    store.append(_leaves(2))
    store.close()
    for table in ("entries", "nodes"):
        with pytest.raises(psycopg.Error, match=f"append-only: TRUNCATE on ledger_{table}"):
            stores.raw(f"TRUNCATE {{t}}{table} CASCADE")
    assert stores.raw("SELECT count(*) FROM {t}entries") == [(2,)]


def _everything(stores: Stores) -> list[tuple[object, ...]]:
    tables = ("entries", "nodes", "checkpoints", "meta", "statements")
    return [row for t in tables for row in stores.raw(f"SELECT * FROM {{t}}{t} ORDER BY 1")]
