"""The ledger's SQLite file: an append-only log with its Merkle nodes.

One writer. WAL with `synchronous=FULL`, because with NORMAL a committed append can be
lost on power loss, and a lost append that a checkpoint already covers is a forked log.
Triggers refuse UPDATE and DELETE on every table, so the file itself states that it is
append-only; an attacker who edits the file anyway is caught by `audit` against a signed
checkpoint.

Every perfect Merkle node is stored when the leaf that completes it is appended (about
2n rows for n entries), keyed by `level << 48 | index`, so a proof at any size is a
handful of primary-key lookups and never a tree rebuild.

Tables: `meta` (set-once settings: origin, log key), `entries` (index, record id,
type, leaf bytes), `nodes`, `checkpoints` (the log-signed note per size),
`cosignatures` (witness signature lines per size), `conflicts` (refused replays kept as
evidence), `statements` (signed settlement statements).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ledger import merkle
from ledger.errors import EntryNotFound, LedgerError, ProofError
from ledger.records import split_interval_id

__all__ = ["LedgerStore", "LogStore", "StoredEntry"]

_LEVEL_SHIFT = 48
_CACHED_LEVEL = 6
"""Nodes at this level and above (one per 64 leaves: 3% of the rows, about 6 MB at a
million entries) are also kept in memory, as are the nodes of the current right edge,
so that a proof reads only its few bottom siblings from the file."""

_TABLES = ("meta", "entries", "nodes", "checkpoints", "cosignatures", "conflicts", "statements")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    record_id TEXT UNIQUE,
    type TEXT NOT NULL,
    leaf BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL REFERENCES checkpoints (size),
    line TEXT NOT NULL,
    UNIQUE (size, line)
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL,
    leaf BLOB NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS statements (
    id INTEGER PRIMARY KEY,
    party TEXT NOT NULL,
    period TEXT NOT NULL,
    body BLOB NOT NULL
);
"""


def _triggers() -> str:
    parts = []
    for table in _TABLES:
        for op in ("UPDATE", "DELETE"):
            parts.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'ledger is append-only: {op} on {table} refused'); END;"
            )
    return "\n".join(parts)


def _blob(value: object) -> bytes:
    """A stored leaf as bytes, even if someone rewrote the column as text."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _node_id(level: int, index: int) -> int:
    return (level << _LEVEL_SHIFT) | index


@dataclass(frozen=True, slots=True)
class StoredEntry:
    index: int
    record_id: str | None
    type: str
    leaf: bytes


class LogStore(Protocol):
    """What a `Log` keeps its entries in: `LedgerStore` (this module's SQLite file), or
    a server's database kept by a service (the broker's PostgreSQL ledger store). Same
    contract as LedgerStore's methods: append-only, one writer."""

    @property
    def path(self) -> object:
        """Where the log lives, for messages (a file, or a database without secrets)."""
        ...

    @property
    def size(self) -> int: ...

    def close(self) -> None: ...
    def meta(self, name: str) -> str | None: ...
    def set_meta(self, name: str, value: str) -> None: ...
    def root(self) -> bytes: ...
    def append(self, items: Sequence[tuple[str | None, str, bytes]]) -> int: ...
    def node(self, level: int, index: int) -> bytes: ...
    def root_at(self, size: int) -> bytes: ...
    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...
    def entry(self, index: int) -> StoredEntry: ...
    def find(self, record_id: str) -> StoredEntry | None: ...
    def find_many(self, record_ids: Sequence[str]) -> dict[str, StoredEntry]: ...
    def find_run(self, base: str) -> list[StoredEntry]: ...
    def entries(
        self, begin: int = 0, end: int | None = None, *, type: str | None = None
    ) -> Iterator[StoredEntry]: ...
    def raw_rows(self) -> Iterator[tuple[int, bytes, bytes | None]]: ...
    def stored_leaf_hash(self, index: int) -> bytes | None: ...
    def add_checkpoint(self, size: int, note: str) -> None: ...
    def add_cosignature(self, size: int, line: str) -> None: ...
    def checkpoints(self) -> list[tuple[int, str, list[str]]]: ...
    def latest_checkpoint(self) -> tuple[int, str, list[str]] | None: ...
    def add_conflict(self, record_id: str, leaf: bytes, reason: str) -> None: ...
    def conflicts(self) -> list[tuple[str, bytes, str]]: ...
    def add_statement(self, party: str, period: str, body: bytes) -> None: ...
    def statements(self) -> list[tuple[str, str, bytes]]: ...


class LedgerStore:
    """The log file. Not thread-safe: one owner (the broker's ledger thread or the CLI)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA + _triggers())
        row = self._db.execute("SELECT coalesce(max(idx) + 1, 0), count(*) FROM entries").fetchone()
        size, count = int(row[0]), int(row[1])
        if size != count:
            raise LedgerError(
                f"{self.path}: entries are not contiguous ({count} rows, size {size})"
            )
        self._frontier = merkle.Frontier.restore(size, self.node)
        self._edge = self._frontier.edge()
        self._upper: dict[tuple[int, int], bytes] = {}
        for node_id, h in self._db.execute(
            "SELECT id, hash FROM nodes WHERE id >= ?", (_node_id(_CACHED_LEVEL, 0),)
        ):
            level, index = int(node_id) >> _LEVEL_SHIFT, int(node_id) & ((1 << _LEVEL_SHIFT) - 1)
            self._upper[(level, index)] = bytes(h)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Settings.

    def meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Set once; a different second value is refused."""
        current = self.meta(name)
        if current is None:
            self._db.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))
        elif current != value:
            raise LedgerError(f"{self.path}: {name} is already {current!r}, cannot set {value!r}")

    # The log.

    @property
    def size(self) -> int:
        return self._frontier.size

    def root(self) -> bytes:
        return self._frontier.root()

    def append(self, items: Sequence[tuple[str | None, str, bytes]]) -> int:
        """Append (record id, type, leaf bytes) in one transaction; return the index of
        the first. The caller has checked that record ids are new."""
        first = self._frontier.size
        saved = self._frontier.copy()
        rows = []
        node_rows = []
        upper = []
        for offset, (record_id, kind, leaf) in enumerate(items):
            rows.append((first + offset, record_id, kind, leaf))
            for level, index, h in self._frontier.append(merkle.hash_leaf(leaf)):
                node_rows.append((_node_id(level, index), h))
                if level >= _CACHED_LEVEL:
                    upper.append(((level, index), h))
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO entries (idx, record_id, type, leaf) VALUES (?, ?, ?, ?)", rows
            )
            self._db.executemany("INSERT INTO nodes (id, hash) VALUES (?, ?)", node_rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._frontier = saved
            raise
        self._upper.update(upper)
        self._edge = self._frontier.edge()
        return first

    def node(self, level: int, index: int) -> bytes:
        row = self._db.execute(
            "SELECT hash FROM nodes WHERE id = ?", (_node_id(level, index),)
        ).fetchone()
        if row is None:
            raise ProofError(f"{self.path}: node ({level}, {index}) is missing")
        return bytes(row[0])

    def _nodes(
        self, ranges: Sequence[tuple[int, int]], nodes: Sequence[tuple[int, int]] = ()
    ) -> dict[tuple[int, int], bytes]:
        """The perfect nodes that make up `ranges`, and `nodes`, by (level, index)."""
        wanted = {n for b, e in ranges for n in merkle.range_nodes(b, e)}
        wanted.update(nodes)
        upper, edge = self._upper, self._edge
        found: dict[tuple[int, int], bytes] = {}
        ids: dict[int, tuple[int, int]] = {}
        for node in wanted:
            h = upper.get(node) or edge.get(node)
            if h is None:
                ids[(node[0] << _LEVEL_SHIFT) | node[1]] = node
            else:
                found[node] = h
        if ids:
            marks = ",".join("?" * len(ids))
            for i, h in self._db.execute(
                f"SELECT id, hash FROM nodes WHERE id IN ({marks})", list(ids)
            ):
                found[ids[i]] = bytes(h)
        if len(found) != len(wanted):
            missing = wanted - found.keys()
            raise ProofError(f"{self.path}: nodes {sorted(missing)[:3]} are missing")
        return found

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size must be 0..{self.size}, got {size}")

    def root_at(self, size: int) -> bytes:
        self._check_size(size)
        found = self._nodes([(0, size)])
        return merkle.hash_range(0, size, lambda lvl, idx: found[(lvl, idx)])

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        plan = merkle.inclusion_plan(index, size)
        # Most ranges of a plan are single perfect nodes: look those up directly, and
        # fold only the (at most one) range cut off by the right edge.
        whole: list[tuple[int, int] | None] = []
        partial = []
        for begin, end in plan:
            width = end - begin
            if width & (width - 1) == 0 and begin % width == 0:
                level = width.bit_length() - 1
                whole.append((level, begin >> level))
            else:
                whole.append(None)
                partial.append((begin, end))
        found = self._nodes(partial, [n for n in whole if n is not None])
        return [
            found[node]
            if node is not None
            else merkle.hash_range(b, e, lambda lvl, idx: found[(lvl, idx)])
            for node, (b, e) in zip(whole, plan, strict=True)
        ]

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self._check_size(size2)
        plan = merkle.consistency_plan(size1, size2)
        found = self._nodes(plan)
        return [merkle.hash_range(b, e, lambda lvl, idx: found[(lvl, idx)]) for b, e in plan]

    def entry(self, index: int) -> StoredEntry:
        row = self._db.execute(
            "SELECT idx, record_id, type, leaf FROM entries WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise EntryNotFound(f"no entry at index {index} (log size {self.size})")
        return StoredEntry(int(row[0]), row[1], str(row[2]), _blob(row[3]))

    def find(self, record_id: str) -> StoredEntry | None:
        row = self._db.execute(
            "SELECT idx, record_id, type, leaf FROM entries WHERE record_id = ?", (record_id,)
        ).fetchone()
        return None if row is None else StoredEntry(int(row[0]), row[1], str(row[2]), _blob(row[3]))

    def find_many(self, record_ids: Sequence[str]) -> dict[str, StoredEntry]:
        """The stored entries of those `record_ids` that are logged, by record id."""
        found: dict[str, StoredEntry] = {}
        ids = list(dict.fromkeys(record_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT idx, record_id, type, leaf FROM entries WHERE record_id IN ({marks})",
                chunk,
            ):
                found[str(row[1])] = StoredEntry(int(row[0]), row[1], str(row[2]), _blob(row[3]))
        return found

    def find_run(self, base: str) -> list[StoredEntry]:
        """The entries of one run's records, `base` and `base/n` (its metering
        intervals), in index order: one range of the record id index."""
        # "0" follows "/": the range holds every id that starts with `base/`, and a few
        # others (`base-x`) that the filter drops.
        found: list[StoredEntry] = []
        for row in self._db.execute(
            "SELECT idx, record_id, type, leaf FROM entries"
            " WHERE record_id >= ? AND record_id < ? ORDER BY idx",
            (base, base + "0"),
        ):
            rid = str(row[1])
            if split_interval_id(rid)[0] == base:
                found.append(StoredEntry(int(row[0]), rid, str(row[2]), _blob(row[3])))
        return found

    def entries(
        self, begin: int = 0, end: int | None = None, *, type: str | None = None
    ) -> Iterator[StoredEntry]:
        """Entries begin <= index < end in index order, optionally of one type."""
        end = self.size if end is None else end
        sql = "SELECT idx, record_id, type, leaf FROM entries WHERE idx >= ? AND idx < ?"
        args: list[object] = [begin, end]
        if type is not None:
            sql += " AND type = ?"
            args.append(type)
        for row in self._db.execute(sql + " ORDER BY idx", args):
            yield StoredEntry(int(row[0]), row[1], str(row[2]), _blob(row[3]))

    def raw_rows(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Every stored (index, leaf, stored leaf hash) in index order, gaps and all,
        for the auditor."""
        sql = (
            "SELECT e.idx, e.leaf, n.hash FROM entries e "
            "LEFT JOIN nodes n ON n.id = e.idx ORDER BY e.idx"
        )
        for idx, leaf, h in self._db.execute(sql):
            yield int(idx), _blob(leaf), None if h is None else bytes(h)

    def stored_leaf_hash(self, index: int) -> bytes | None:
        row = self._db.execute(
            "SELECT hash FROM nodes WHERE id = ?", (_node_id(0, index),)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # Checkpoints.

    def add_checkpoint(self, size: int, note: str) -> None:
        existing = self._db.execute(
            "SELECT note FROM checkpoints WHERE size = ?", (size,)
        ).fetchone()
        if existing is not None:
            if existing[0] != note:
                raise LedgerError(f"a different checkpoint for size {size} is already stored")
            return
        self._db.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))

    def add_cosignature(self, size: int, line: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO cosignatures (size, line) VALUES (?, ?)", (size, line)
        )

    def checkpoints(self) -> list[tuple[int, str, list[str]]]:
        """(size, log-signed note, cosignature lines) for every stored checkpoint."""
        lines: dict[int, list[str]] = {}
        for size, line in self._db.execute("SELECT size, line FROM cosignatures ORDER BY size, id"):
            lines.setdefault(int(size), []).append(str(line))
        return [
            (int(size), str(note), lines.get(int(size), []))
            for size, note in self._db.execute("SELECT size, note FROM checkpoints ORDER BY size")
        ]

    def latest_checkpoint(self) -> tuple[int, str, list[str]] | None:
        row = self._db.execute(
            "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        size = int(row[0])
        lines = [
            str(r[0])
            for r in self._db.execute(
                "SELECT line FROM cosignatures WHERE size = ? ORDER BY id", (size,)
            )
        ]
        return size, str(row[1]), lines

    # Evidence and statements.

    def add_conflict(self, record_id: str, leaf: bytes, reason: str) -> None:
        self._db.execute(
            "INSERT INTO conflicts (record_id, leaf, reason) VALUES (?, ?, ?)",
            (record_id, leaf, reason),
        )

    def conflicts(self) -> list[tuple[str, bytes, str]]:
        return [
            (str(r), bytes(leaf), str(why))
            for r, leaf, why in self._db.execute(
                "SELECT record_id, leaf, reason FROM conflicts ORDER BY id"
            )
        ]

    def add_statement(self, party: str, period: str, body: bytes) -> None:
        self._db.execute(
            "INSERT INTO statements (party, period, body) VALUES (?, ?, ?)", (party, period, body)
        )

    def statements(self) -> list[tuple[str, str, bytes]]:
        return [
            (str(p), str(per), bytes(b))
            for p, per, b in self._db.execute(
                "SELECT party, period, body FROM statements ORDER BY id"
            )
        ]
