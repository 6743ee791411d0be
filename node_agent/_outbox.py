"""The usage outbox: signed usage records kept until the broker decides on them.

One file per record under `<workdir>/usage-outbox/` (the record id with "/" as "_",
suffix `.entry`), holding the ledger's signed entry bytes; written to a temporary file,
fsynced and renamed, so a restarted agent delivers what it signed before it died and
never reads half a record. A record is signed once: a run metered again after a restart
finds its pending records here and sends those bytes, never new ones under the same id.

The broker takes a run's intervals in order, each only after the one it continues
(`refs`). So a refusal is not always final: a record refused while the one it continues
is still pending here waits for that one's answer and is sent again once it is logged.
A record refused otherwise is set aside (moved to `refused/`, kept for the operator), and
so is every later interval of its run, pending or metered later: the broker can never
take them (an orphaned chain, counted in `icx_agent_usage_orphaned_chains`).
"""

from __future__ import annotations

import enum
import logging
import os
from pathlib import Path

from core.errors import IcxError
from ledger import SignedRecord, SignerKey, UsageRecord, sign_records
from ledger.records import interval_id, split_interval_id

log = logging.getLogger("icx.agent")

REFUSED = "refused"


class Decision(enum.Enum):
    """What an answer of the broker did to a pending record."""

    UNKNOWN = "unknown"  # not pending (answered before, or never signed here)
    LOGGED = "logged"
    WAITING = "waiting"  # refused while the record it continues is pending: kept
    SET_ASIDE = "set aside"  # refused: it and the rest of its run are set aside


class Outbox:
    def __init__(self, folder: Path, key: SignerKey) -> None:
        self.folder = folder
        self._key = key
        self._pending: dict[str, bytes] = self._load(folder)
        self._refused: set[str] = set(self._load(folder / REFUSED))
        self._waiting: set[str] = set()  # refused while the one before was pending
        # Runs (`CENTER/CLAIM`) with records set aside because an earlier one was refused.
        self.orphaned: set[str] = {
            split_interval_id(rid)[0] for rid in self._refused if self._after_refused(rid)
        }

    def add(self, record: UsageRecord) -> bytes | None:
        """Sign `record`, keep it on disk and return its entry bytes to send; the bytes
        already pending under its id, if any (signed once); None when it continues a
        refused record (set aside at once: the broker cannot take it)."""
        rid = record.record_id
        if rid in self._pending:
            return self._pending[rid]
        if rid in self._refused:
            return None
        entry = sign_records([record], self._key)[0].entry()
        if record.refs in self._refused:
            self._write(self.folder / REFUSED, rid, entry)
            self._refused.add(rid)
            self._orphan(rid)
            return None
        self._write(self.folder, rid, entry)
        self._pending[rid] = entry
        return entry

    def pending(self) -> list[bytes]:
        """Every entry not yet decided, each run's records in interval order (the broker
        takes an interval only after the one before it)."""
        return [self._pending[k] for k in sorted(self._pending, key=split_interval_id)]

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._pending

    def refused(self) -> set[str]:
        """The ids of the records set aside."""
        return set(self._refused)

    def decide(self, record_id: str, *, accepted: bool) -> Decision:
        """Take the broker's answer on `record_id`; see the module docstring."""
        entry = self._pending.get(record_id)
        if entry is None:
            return Decision.UNKNOWN
        if accepted:
            self._waiting.discard(record_id)
            del self._pending[record_id]
            self._path(self.folder, record_id).unlink(missing_ok=True)
            return Decision.LOGGED
        base, n = split_interval_id(record_id)
        if n > 1 and interval_id(base, n - 1) in self._pending:
            self._waiting.add(record_id)
            return Decision.WAITING
        self._set_aside(record_id)
        # The rest of the run can never be taken: set aside with it.
        later = sorted(
            (r for r in self._pending if split_interval_id(r)[0] == base), key=split_interval_id
        )
        for rid in later:
            if split_interval_id(rid)[1] > n:
                self._set_aside(rid)
                self._orphan(rid)
        return Decision.SET_ASIDE

    def successor(self, record_id: str) -> bytes | None:
        """The record that continues `record_id` if it waits for it (refused while that
        one was pending): to send again now that `record_id` is logged."""
        base, n = split_interval_id(record_id)
        after = interval_id(base, n + 1)
        if after not in self._waiting:
            return None
        self._waiting.discard(after)
        return self._pending.get(after)

    def _set_aside(self, record_id: str) -> None:
        self._waiting.discard(record_id)
        entry = self._pending.pop(record_id)
        self._write(self.folder / REFUSED, record_id, entry)
        self._path(self.folder, record_id).unlink(missing_ok=True)
        self._refused.add(record_id)

    def _orphan(self, record_id: str) -> None:
        base = split_interval_id(record_id)[0]
        if base not in self.orphaned:
            self.orphaned.add(base)
            log.error(
                "usage of run %s is set aside from %s on: an earlier interval was refused",
                base,
                record_id,
            )

    def _after_refused(self, record_id: str) -> bool:
        base, n = split_interval_id(record_id)
        return n > 1 and interval_id(base, n - 1) in self._refused

    @staticmethod
    def _path(folder: Path, record_id: str) -> Path:
        return folder / (record_id.replace("/", "_") + ".entry")

    def _write(self, folder: Path, record_id: str, entry: bytes) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = self._path(folder, record_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(entry)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @staticmethod
    def _load(folder: Path) -> dict[str, bytes]:
        """Signed records a previous run of this agent left in `folder`."""
        kept: dict[str, bytes] = {}
        for path in sorted(folder.glob("*.entry")) if folder.is_dir() else ():
            entry = path.read_bytes()
            try:
                kept[SignedRecord.from_entry(entry).record.record_id] = entry
            except IcxError as exc:
                log.error("unreadable usage record %s left aside: %s", path, exc)
        if kept and folder.name != REFUSED:
            log.info("%d signed usage records from an earlier run to deliver", len(kept))
        return kept
