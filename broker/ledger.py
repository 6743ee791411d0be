"""The broker's face of the ledger: the signed usage log beside the broker's database.

The ledger library is synchronous and owns its SQLite connection; every call runs on one
dedicated thread (its single writer), so the event loop never blocks on it. Files:
`<db>.ledger` (the log) and `<db>.ledger.key` (the log's signer key, mode 0600); the
`icx ledger` commands work on them offline with `--db <db>.ledger`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from core.errors import IcxError, InvalidArgument, PermissionDenied
from ledger import Log, Role, SignedRecord, SignerKey, VerifierKey
from ledger.store import LedgerStore

log = logging.getLogger("icx.broker.ledger")

T = TypeVar("T")


def ledger_paths(db: Path) -> tuple[Path, Path]:
    return db.with_name(db.name + ".ledger"), db.with_name(db.name + ".ledger.key")


class BrokerLedger:
    def __init__(self, db: Path, origin: str, witnesses: Sequence[str] = ()) -> None:
        self.path, self.key_path = ledger_paths(db)
        self.origin = origin
        # The witnesses whose cosignatures this broker keeps (cosignature/v1 keys).
        self.witnesses = [VerifierKey.parse(w) for w in witnesses]
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="icx-ledger")
        self._log: Log | None = None
        self._checkpointed = -1

    def open(self) -> None:
        """Open (or create) the log and its key; runs on the ledger thread."""
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        if self.key_path.exists():
            signer = SignerKey.parse(self.key_path.read_text())
        else:
            signer = SignerKey.generate(self.origin)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(signer.text() + "\n")
        store = LedgerStore(self.path)
        self._log = Log(store, signer) if store.size else Log.create(store, signer)
        log.info("ledger %s: %d entries, key %s", self.path, store.size, signer.verifier.text())

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[Log], T]) -> T:
        def call() -> T:
            assert self._log is not None, "ledger not open"
            return fn(self._log)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def admit_center(self, center_id: str, key_text: str, cert_pem: str = "") -> None:
        """Log the admission of the center's usage key, with the membership certificate
        that binds it (`cert_pem`). A certified key that differs from the live one is a
        re-admission: the old key is revoked from here on. Without a certificate
        (--insecure) the first key seen is admitted and a different one refused."""
        key = VerifierKey.parse(key_text)

        def admit(ledger: Log) -> None:
            mine = [e for e in ledger.keyring.entries() if e.party == center_id]
            live = [e for e in mine if e.revoked_at is None]
            if any(e.key == key for e in live):
                return
            if live and not cert_pem:
                raise PermissionDenied(
                    f"center {center_id} already signs with key {live[0].key.key_id}; "
                    f"refusing {key.key_id} (revoke the old key first)"
                )
            for old in live:
                ledger.revoke(old.key.key_id, reason=f"re-admitted with key {key.key_id}")
            index = ledger.admit(center_id, Role.CENTER, key, cert=cert_pem)
            log.info(
                "admitted usage key %s for center %s at entry %d%s",
                key.key_id,
                center_id,
                index,
                " (certified)" if cert_pem else " (uncertified: --insecure)",
            )

        await self._run(admit)

    async def revoke_center(self, center_id: str, key_text: str, reason: str) -> bool:
        """Log the revocation of a center's usage key (its certificate was revoked);
        False if the key was not live."""
        key = VerifierKey.parse(key_text)

        def revoke(ledger: Log) -> bool:
            for e in ledger.keyring.entries():
                if e.party == center_id and e.key == key and e.revoked_at is None:
                    index = ledger.revoke(key.key_id, reason=reason)
                    log.info(
                        "revoked usage key %s of center %s at entry %d: %s",
                        key.key_id,
                        center_id,
                        index,
                        reason,
                    )
                    return True
            return False

        return await self._run(revoke)

    async def admitted_key(self, center_id: str) -> VerifierKey | None:
        """The center's live usage key, if one is admitted."""

        def find(ledger: Log) -> VerifierKey | None:
            live = [
                e for e in ledger.keyring.entries() if e.party == center_id and e.revoked_at is None
            ]
            return live[0].key if live else None

        return await self._run(find)

    async def append(self, signed: SignedRecord) -> int:
        """Verify, countersign and append one record; its index."""
        return (await self._run(lambda ledger: ledger.append([signed])))[0]

    async def checkpoint(self) -> str | None:
        """Sign a checkpoint if the log grew since the last one; the new note."""

        def maybe(ledger: Log) -> str | None:
            if ledger.size == self._checkpointed:
                return None
            note = ledger.checkpoint()
            self._checkpointed = ledger.size
            return note

        return await self._run(maybe)

    async def key_text(self) -> str:
        return await self._run(lambda ledger: ledger.log_key.text())

    async def latest_note(self) -> str:
        await self.checkpoint()
        return await self._run(lambda ledger: ledger.latest_note())

    async def prove(
        self, *, record_id: str | None = None, index: int | None = None
    ) -> tuple[str, tuple[str, ...]]:
        """The entry's proof bundle and the parties a usage record names (none for a key
        event or a checkpoint)."""
        await self.checkpoint()
        bundle = await self._run(lambda ledger: ledger.prove(record_id=record_id, index=index))
        try:
            record = SignedRecord.from_entry(bundle.leaf).record
            parties: tuple[str, ...] = (record.producer, record.consumer)
        except IcxError:
            parties = ()
        return bundle.to_json(), parties

    async def statement(self, period: str, party: str = "") -> bytes:
        """The signed statement of `period`: one party's, or ("") the whole federation's."""
        await self.checkpoint()
        _, signed = await self._run(lambda ledger: ledger.settle(period, party=party))
        return signed

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        def prove(ledger: Log) -> list[bytes]:
            if not 0 < size1 <= size2 <= ledger.size:
                raise InvalidArgument(
                    f"sizes must satisfy 0 < size1 <= size2 <= {ledger.size}, "
                    f"got {size1} and {size2}"
                )
            return ledger.store.consistency_proof(size1, size2)

        return await self._run(prove)

    async def add_cosignatures(self, note: str) -> int:
        """Keep the cosignatures on `note` by this broker's witnesses; how many are new."""
        if not self.witnesses:
            raise PermissionDenied("this broker accepts no witnesses (see --witness)")

        def add(ledger: Log) -> int:
            def stored() -> int:
                return sum(len(lines) for _, _, lines in ledger.store.checkpoints())

            before = stored()
            if ledger.add_cosignatures(note, self.witnesses) == 0:
                raise PermissionDenied("the note carries no cosignature by an accepted witness")
            return stored() - before

        new = await self._run(add)
        log.info("kept %d new witness cosignature(s) on %s", new, note.splitlines()[1])
        return new
