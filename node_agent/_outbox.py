"""The usage outbox: signed usage records kept until the broker acknowledges them.

One file per record under `<workdir>/usage-outbox/` (the record id with "/" as "_",
suffix `.entry`), holding the ledger's signed entry bytes; written to a temporary file,
fsynced and renamed, so a restarted agent delivers what it signed before it died and
never reads half a record.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.errors import IcxError
from ledger import SignedRecord, SignerKey, UsageRecord, sign_records

log = logging.getLogger("icx.agent")


class Outbox:
    def __init__(self, folder: Path, key: SignerKey) -> None:
        self.folder = folder
        self._key = key
        self._pending: dict[str, bytes] = self._load()

    def add(self, record: UsageRecord) -> bytes:
        """Sign `record`, keep it on disk and return its entry bytes to send."""
        entry = sign_records([record], self._key)[0].entry()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(record.record_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(entry)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        self._pending[record.record_id] = entry
        return entry

    def pending(self) -> list[bytes]:
        """Every entry not yet acknowledged, oldest record id first."""
        return [self._pending[k] for k in sorted(self._pending)]

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._pending

    def acknowledged(self, record_id: str) -> bool:
        """Forget `record_id` (accepted or refused: the broker has decided). False if it
        was not pending."""
        if self._pending.pop(record_id, None) is None:
            return False
        self._path(record_id).unlink(missing_ok=True)
        return True

    def _path(self, record_id: str) -> Path:
        return self.folder / (record_id.replace("/", "_") + ".entry")

    def _load(self) -> dict[str, bytes]:
        """Signed records a previous run of this agent had not delivered."""
        kept: dict[str, bytes] = {}
        for path in sorted(self.folder.glob("*.entry")) if self.folder.is_dir() else ():
            entry = path.read_bytes()
            try:
                kept[SignedRecord.from_entry(entry).record.record_id] = entry
            except IcxError as exc:
                log.error("unreadable usage record %s left aside: %s", path, exc)
        if kept:
            log.info("%d signed usage records from an earlier run to deliver", len(kept))
        return kept
