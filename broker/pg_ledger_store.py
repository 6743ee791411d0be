"""The broker's ledger in PostgreSQL: `ledger.LogStore` on the broker's own database.

A broker whose store is PostgreSQL keeps its signed usage log there too, beside the jobs
(tables prefixed `ledger_`), so that a standby broker taking over continues the same log
from the same database instead of starting another in a file of its own. The tables and
the rules are the SQLite ledger's (ledger/store.py): every perfect Merkle node stored as
the leaf that completes it is appended, keyed by `level << 48 | index`; nodes from level
6 up and the right edge kept in memory too. Triggers refuse UPDATE, DELETE and TRUNCATE
on every table, so the database itself states that the log is append-only; an entry's
index is its primary key, so two writers can never both append at one index.

One owner (the broker's ledger thread) and one connection (pg_store's `StoreConnection`):
reopened when the server dropped it, with each read run once more on the new one; every
write runs in its `transact`, the one place a write transaction opens, where `fence` (if
given) checks first that this broker may still write and where a COMMIT whose reply was
lost is found out, not run twice. Once open, a database that stays away fails each call
with the driver's error, not one of the error tree's (which would refuse a center's usage
for good), so the center keeps its record and sends it again. The ledger library itself
stays free of network code: this module is the broker's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from broker.pg_store import CommitUnknown, Conn, Fence, StoreConnection, describe_url
from ledger import merkle
from ledger.errors import EntryNotFound, LedgerError, ProofError
from ledger.records import split_interval_id
from ledger.store import StoredEntry

__all__ = ["PostgresLedgerStore"]

_LEVEL_SHIFT = 48
_CACHED_LEVEL = 6
_TABLES = (
    "ledger_meta", "ledger_entries", "ledger_nodes", "ledger_checkpoints",
    "ledger_cosignatures", "ledger_conflicts", "ledger_statements",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE ledger_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE ledger_entries (
    idx BIGINT PRIMARY KEY,
    record_id TEXT UNIQUE,
    type TEXT NOT NULL,
    leaf BYTEA NOT NULL
);
CREATE TABLE ledger_nodes (
    id BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL CHECK (length(hash) = 32)
);
CREATE TABLE ledger_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE ledger_cosignatures (
    id BIGSERIAL PRIMARY KEY,
    size BIGINT NOT NULL REFERENCES ledger_checkpoints (size),
    line TEXT NOT NULL,
    UNIQUE (size, line)
);
CREATE TABLE ledger_conflicts (
    id BIGSERIAL PRIMARY KEY,
    record_id TEXT NOT NULL,
    leaf BYTEA NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE ledger_statements (
    id BIGSERIAL PRIMARY KEY,
    party TEXT NOT NULL,
    period TEXT NOT NULL,
    body BYTEA NOT NULL
)
"""

_REFUSE = """
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$
"""


def _triggers() -> list[str]:
    out = []
    for table in _TABLES:
        out.append(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
        )
        out.append(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
        )
    return out


def _node_id(level: int, index: int) -> int:
    return (level << _LEVEL_SHIFT) | index


def _entry(row: tuple[object, ...]) -> StoredEntry:
    idx, record_id, kind, leaf = row
    return StoredEntry(
        int(idx),  # type: ignore[call-overload]
        None if record_id is None else str(record_id),
        str(kind),
        bytes(leaf),  # type: ignore[call-overload]
    )


class PostgresLedgerStore:
    """The log in the database at `url` (its tables made when absent). Not thread-safe:
    one owner."""

    def __init__(self, url: str, *, fence: Fence | None = None) -> None:
        self.path = f"{describe_url(url)} (ledger)"
        self._db = StoreConnection(url, self.path, fence=fence)
        try:
            self._create_tables()
            self._load()
        except BaseException:
            self._db.close()
            raise

    def _load(self) -> None:
        """The tree's frontier and upper nodes, read from the database."""
        row = self._one("SELECT coalesce(max(idx) + 1, 0), count(*) FROM ledger_entries")
        size, count = int(row[0]), int(row[1])
        if size != count:
            raise LedgerError(
                f"{self.path}: entries are not contiguous ({count} rows, size {size})"
            )
        self._frontier = merkle.Frontier.restore(size, self.node)
        self._edge = self._frontier.edge()
        self._upper: dict[tuple[int, int], bytes] = {}
        self._stale = False
        low = _node_id(_CACHED_LEVEL, 0)
        for node_id, h in self._rows("SELECT id, hash FROM ledger_nodes WHERE id >= %s", (low,)):
            level, index = int(node_id) >> _LEVEL_SHIFT, int(node_id) & ((1 << _LEVEL_SHIFT) - 1)
            self._upper[(level, index)] = bytes(h)

    def _create_tables(self) -> None:
        def create(db: Conn) -> None:
            found = db.execute("SELECT to_regclass('ledger_meta')").fetchone()
            if found is not None and found[0] is not None:
                return
            for statement in [*_SCHEMA.split(";\n"), _REFUSE, *_triggers()]:
                db.execute(statement.encode())

        self._db.transact(create)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresLedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read (run once more if the server had dropped the connection)."""
        return self._db.read(lambda db: db.execute(sql.encode(), args).fetchall())

    def _one(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...]:
        rows = self._rows(sql, args)
        assert rows, sql
        return rows[0]

    def _first(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # Settings.

    def meta(self, name: str) -> str | None:
        row = self._first("SELECT value FROM ledger_meta WHERE name = %s", (name,))
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Set once; a different second value is refused."""
        current = self.meta(name)
        if current is None:
            self._db.transact(
                lambda db: db.execute(
                    "INSERT INTO ledger_meta (name, value) VALUES (%s, %s)", (name, value)
                )
            )
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
        if self._stale:
            self._load()
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

        def write(db: Conn) -> None:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ledger_entries (idx, record_id, type, leaf)"
                    " VALUES (%s, %s, %s, %s)",
                    rows,
                )
                cur.executemany("INSERT INTO ledger_nodes (id, hash) VALUES (%s, %s)", node_rows)

        try:
            self._db.transact(write)
        except CommitUnknown:
            # It may have committed: the database, not memory, says what the log holds,
            # read again before the next append.
            self._frontier = saved
            self._stale = True
            raise
        except BaseException:
            self._frontier = saved
            raise
        self._upper.update(upper)
        self._edge = self._frontier.edge()
        return first

    def node(self, level: int, index: int) -> bytes:
        row = self._first("SELECT hash FROM ledger_nodes WHERE id = %s", (_node_id(level, index),))
        if row is None:
            raise ProofError(f"{self.path}: node ({level}, {index}) is missing")
        return bytes(row[0])

    def _nodes(
        self, ranges: Sequence[tuple[int, int]], nodes: Sequence[tuple[int, int]] = ()
    ) -> dict[tuple[int, int], bytes]:
        """The perfect nodes that make up `ranges`, and `nodes`, by (level, index)."""
        wanted = {n for b, e in ranges for n in merkle.range_nodes(b, e)}
        wanted.update(nodes)
        found: dict[tuple[int, int], bytes] = {}
        ids: dict[int, tuple[int, int]] = {}
        for node in wanted:
            h = self._upper.get(node) or self._edge.get(node)
            if h is None:
                ids[_node_id(*node)] = node
            else:
                found[node] = h
        if ids:
            for i, h in self._rows(
                "SELECT id, hash FROM ledger_nodes WHERE id = ANY(%s)", (list(ids),)
            ):
                found[ids[int(i)]] = bytes(h)
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
        found = self._nodes(plan)
        return [merkle.hash_range(b, e, lambda lvl, idx: found[(lvl, idx)]) for b, e in plan]

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self._check_size(size2)
        plan = merkle.consistency_plan(size1, size2)
        found = self._nodes(plan)
        return [merkle.hash_range(b, e, lambda lvl, idx: found[(lvl, idx)]) for b, e in plan]

    def entry(self, index: int) -> StoredEntry:
        row = self._first(
            "SELECT idx, record_id, type, leaf FROM ledger_entries WHERE idx = %s", (index,)
        )
        if row is None:
            raise EntryNotFound(f"no entry at index {index} (log size {self.size})")
        return _entry(row)

    def find(self, record_id: str) -> StoredEntry | None:
        row = self._first(
            "SELECT idx, record_id, type, leaf FROM ledger_entries WHERE record_id = %s",
            (record_id,),
        )
        return None if row is None else _entry(row)

    def find_many(self, record_ids: Sequence[str]) -> dict[str, StoredEntry]:
        """The stored entries of those `record_ids` that are logged, by record id."""
        rows = self._rows(
            "SELECT idx, record_id, type, leaf FROM ledger_entries WHERE record_id = ANY(%s)",
            (list(dict.fromkeys(record_ids)),),
        )
        return {str(row[1]): _entry(row) for row in rows}

    def find_run(self, base: str) -> list[StoredEntry]:
        """The entries of one run's records, `base` and `base/n`, in index order."""
        # COLLATE "C": byte order, as in SQLite, so "0" follows "/" (see LedgerStore).
        rows = self._rows(
            "SELECT idx, record_id, type, leaf FROM ledger_entries"
            ' WHERE record_id COLLATE "C" >= %s AND record_id COLLATE "C" < %s ORDER BY idx',
            (base, base + "0"),
        )
        return [e for e in map(_entry, rows) if split_interval_id(str(e.record_id))[0] == base]

    def entries(
        self, begin: int = 0, end: int | None = None, *, type: str | None = None
    ) -> Iterator[StoredEntry]:
        """Entries begin <= index < end in index order, optionally of one type."""
        end = self.size if end is None else end
        sql = "SELECT idx, record_id, type, leaf FROM ledger_entries WHERE idx >= %s AND idx < %s"
        args: list[object] = [begin, end]
        if type is not None:
            sql += " AND type = %s"
            args.append(type)
        rows = self._rows(sql + " ORDER BY idx", args)
        yield from map(_entry, rows)

    def raw_rows(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Every stored (index, leaf, stored leaf hash) in index order, for the auditor."""
        for idx, leaf, h in self._rows(
            "SELECT e.idx, e.leaf, n.hash FROM ledger_entries e"
            " LEFT JOIN ledger_nodes n ON n.id = e.idx ORDER BY e.idx"
        ):
            yield int(idx), bytes(leaf), None if h is None else bytes(h)

    def stored_leaf_hash(self, index: int) -> bytes | None:
        row = self._first("SELECT hash FROM ledger_nodes WHERE id = %s", (_node_id(0, index),))
        return None if row is None else bytes(row[0])

    # Checkpoints.

    def add_checkpoint(self, size: int, note: str) -> None:
        def write(db: Conn) -> None:
            existing = db.execute(
                "SELECT note FROM ledger_checkpoints WHERE size = %s", (size,)
            ).fetchone()
            if existing is not None:
                if existing[0] != note:
                    raise LedgerError(f"a different checkpoint for size {size} is already stored")
                return
            db.execute("INSERT INTO ledger_checkpoints (size, note) VALUES (%s, %s)", (size, note))

        self._db.transact(write)

    def add_cosignature(self, size: int, line: str) -> None:
        self._db.transact(
            lambda db: db.execute(
                "INSERT INTO ledger_cosignatures (size, line) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (size, line),
            )
        )

    def checkpoints(self) -> list[tuple[int, str, list[str]]]:
        """(size, log-signed note, cosignature lines) for every stored checkpoint."""
        lines: dict[int, list[str]] = {}
        for size, line in self._rows(
            "SELECT size, line FROM ledger_cosignatures ORDER BY size, id"
        ):
            lines.setdefault(int(size), []).append(str(line))
        return [
            (int(size), str(note), lines.get(int(size), []))
            for size, note in self._rows("SELECT size, note FROM ledger_checkpoints ORDER BY size")
        ]

    def latest_checkpoint(self) -> tuple[int, str, list[str]] | None:
        row = self._first("SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
        if row is None:
            return None
        size = int(row[0])
        lines = [
            str(r[0])
            for r in self._rows(
                "SELECT line FROM ledger_cosignatures WHERE size = %s ORDER BY id", (size,)
            )
        ]
        return size, str(row[1]), lines

    # Evidence and statements.

    def add_conflict(self, record_id: str, leaf: bytes, reason: str) -> None:
        self._db.transact(
            lambda db: db.execute(
                "INSERT INTO ledger_conflicts (record_id, leaf, reason) VALUES (%s, %s, %s)",
                (record_id, leaf, reason),
            )
        )

    def conflicts(self) -> list[tuple[str, bytes, str]]:
        return [
            (str(r), bytes(leaf), str(why))
            for r, leaf, why in self._rows(
                "SELECT record_id, leaf, reason FROM ledger_conflicts ORDER BY id"
            )
        ]

    def add_statement(self, party: str, period: str, body: bytes) -> None:
        self._db.transact(
            lambda db: db.execute(
                "INSERT INTO ledger_statements (party, period, body) VALUES (%s, %s, %s)",
                (party, period, body),
            )
        )

    def statements(self) -> list[tuple[str, str, bytes]]:
        return [
            (str(p), str(per), bytes(b))
            for p, per, b in self._rows(
                "SELECT party, period, body FROM ledger_statements ORDER BY id"
            )
        ]
