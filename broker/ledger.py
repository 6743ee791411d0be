"""The broker's face of the ledger: the signed usage log beside the broker's database.

The ledger library is synchronous and owns its SQLite connection; every call runs on one
dedicated thread (its single writer), so the event loop never blocks on it. Files:
`<db>.ledger` (the log) and `<db>.ledger.key` (the log's signer key, mode 0600); the
`icx ledger` commands work on them offline with `--db <db>.ledger`. A broker whose store
is PostgreSQL keeps the log in that database (broker/pg_ledger_store.py) and only its key
in a file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from core.errors import FailedPrecondition, IcxError, InvalidArgument, PermissionDenied
from core.money import CURRENCY
from ledger import (
    AcceptedRecord,
    Checkpoint,
    Log,
    Role,
    SignedRecord,
    SignerKey,
    UsageRecord,
    VerifierKey,
)
from ledger.bill import JobTotals, tenant_bill
from ledger.note import parse_note
from ledger.records import (
    CHARGING_KINDS,
    RecordKind,
    continuation_error,
    interval_id,
    split_interval_id,
)
from ledger.store import LedgerStore, LogStore, StoredEntry

log = logging.getLogger("icx.broker.ledger")

T = TypeVar("T")


def ledger_paths(db: Path) -> tuple[Path, Path]:
    return db.with_name(db.name + ".ledger"), db.with_name(db.name + ".ledger.key")


class BrokerLedger:
    """`open_store` opens the log where it lives when not in `<db>.ledger` (the PostgreSQL
    ledger of a broker whose store is PostgreSQL); the key is `<db>.ledger.key` either way."""

    def __init__(
        self,
        db: Path,
        origin: str,
        witnesses: Sequence[str] = (),
        *,
        open_store: Callable[[], LogStore] | None = None,
    ) -> None:
        self.path, self.key_path = ledger_paths(db)
        self._open_store = open_store or (lambda: LedgerStore(self.path))
        self.origin = origin
        # The witnesses whose cosignatures this broker keeps (cosignature/v1 keys).
        self.witnesses = [VerifierKey.parse(w) for w in witnesses]
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="icx-ledger")
        self._log: Log | None = None
        # This broker's party as a region, once it federates: its statements then carry
        # what it owes the other regions for the records it accepted.
        self.region = ""
        self._checkpointed = -1
        # Kept as the log grows (built when it opens): the latest correction of each
        # corrected record, and the entries of each consumer's usage and corrections, so
        # that neither a chain check nor a tenant's bill reads the whole log.
        self._corrected: dict[str, str] = {}
        self._by_consumer: dict[str, list[int]] = {}
        self._accepted_of_job: dict[str, list[int]] = {}
        self._accepted_of_consumer: dict[str, list[int]] = {}

    def open(self) -> None:
        """Open (or create) the log and its key; runs on the ledger thread."""
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        store = self._open_store()
        if self.key_path.exists():
            signer = SignerKey.parse(self.key_path.read_text())
        elif store.size:
            store.close()
            raise FailedPrecondition(
                f"the ledger in {store.path} is signed with key {store.meta('log_key')}:"
                f" put that key's file at {self.key_path} (copy it from the broker that"
                " created the ledger)"
            )
        else:
            signer = SignerKey.generate(self.origin)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(signer.text() + "\n")
        self._log = Log(store, signer) if store.size else Log.create(store, signer)
        for index, record in self._log.records():
            self._index(index, record)
        for index, accepted in self._log.accepted():
            self._index_accepted(index, accepted.record)
        log.info("ledger %s: %d entries, key %s", store.path, store.size, signer.verifier.text())

    def close(self) -> None:
        if self._log is not None:
            self._pool.submit(self._log.store.close).result()
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

    def _index(self, index: int, record: UsageRecord) -> None:
        if record.kind is RecordKind.CORRECTION:
            self._corrected[record.refs] = record.record_id
        if record.kind in CHARGING_KINDS:
            self._by_consumer.setdefault(record.consumer, []).append(index)

    def _index_accepted(self, index: int, record: UsageRecord) -> None:
        """A record of another region's log accepted here for this broker's tenant: in
        its bill and its job's records, as the log's own records are."""
        self._accepted_of_job.setdefault(record.job_id, []).append(index)
        if record.kind in CHARGING_KINDS:
            self._accepted_of_consumer.setdefault(record.consumer, []).append(index)

    async def accepted_of_job(self, job_id: str) -> list[tuple[int, bytes]]:
        """The records accepted here for `job_id` (it ran at a peer): each with the index
        of its accepted entry here and its leaf as the owner's log holds it."""

        def find(ledger: Log) -> list[tuple[int, bytes]]:
            out = []
            for i in self._accepted_of_job.get(job_id, []):
                accepted = AcceptedRecord.from_entry(ledger.store.entry(i).leaf)
                out.append((i, accepted.bundle.leaf))
            return out

        return await self._run(find)

    def _in_force(self, ledger: Log, record_id: str) -> UsageRecord | None:
        """The record `record_id` as in force: its latest correction, if any."""
        return ledger.record(self._corrected.get(record_id, record_id))

    async def append(
        self, signed: SignedRecord, *, continues: str = "", min_wall_s: int = 0
    ) -> int:
        """Verify, countersign and append one record; its index. A record that
        `continues` another (the previous metering interval of its run) is taken only
        if that one is in the log, lasts at least `min_wall_s` (only a run's last
        interval may be shorter) and, as in force, is continued by it
        (`continuation_error`): checked and appended in one step on the ledger's thread,
        so intervals appended in order never find their predecessor missing. A
        correction of an interval keeps the interval's start when it continues another
        and its end when another continues it (the chain stays whole)."""
        record = signed.record

        def append(ledger: Log) -> int:
            if continues:
                where = f"record {record.record_id!r} continues {continues!r}"
                previous = self._in_force(ledger, continues)
                if previous is None:
                    raise FailedPrecondition(
                        f"{where}, which is not in the log (a run's intervals are taken in order)"
                    )
                if previous.wall_s < min_wall_s:
                    raise InvalidArgument(
                        f"{where}, which lasts {previous.wall_s} s: this broker takes metering "
                        f"intervals of at least {min_wall_s} s (only a run's last is shorter)"
                    )
                reason = continuation_error(record, previous)
                if reason:
                    raise InvalidArgument(f"{where}: {reason}")
            if record.kind is RecordKind.CORRECTION:
                self._check_correction(ledger, record)
            size = ledger.size
            index = ledger.append([signed])[0]
            if index >= size:
                self._index(index, record)
            return index

        return await self._run(append)

    def _check_correction(self, ledger: Log, record: UsageRecord) -> None:
        """Refuse a correction that would break its interval's chain: one that moves the
        start (or offset) of an interval that continues another, or the end of one that
        another continues."""
        in_force = self._in_force(ledger, record.refs)
        if in_force is None:
            return  # the log refuses it: refs not in the log
        where = f"correction {record.record_id!r} of {record.refs!r}"
        base, n = split_interval_id(record.refs)
        start = (record.start_ms, record.offset_s)
        if n > 1 and start != (in_force.start_ms, in_force.offset_s):
            raise InvalidArgument(
                f"{where}: the interval continues {interval_id(base, n - 1)!r}, so it keeps "
                f"start_ms {in_force.start_ms} and offset_s {in_force.offset_s}"
            )
        successor = interval_id(base, n + 1)
        if record.end_ms != in_force.end_ms and ledger.record(successor) is not None:
            raise InvalidArgument(
                f"{where}: {successor!r} continues the interval, so it keeps end_ms "
                f"{in_force.end_ms}"
            )

    async def usage_records(self) -> list[UsageRecord]:
        """Every usage record and correction in the log, in log order."""
        return await self._run(lambda ledger: [r for _, r in ledger.records()])

    async def run_entries(self, bases: Sequence[str]) -> list[StoredEntry]:
        """The entries of the runs whose first records are `bases` (every metering
        interval of each), in index order."""

        def find(ledger: Log) -> list[StoredEntry]:
            found = [e for base in bases for e in ledger.store.find_run(base)]
            return sorted(found, key=lambda e: e.index)

        return await self._run(find)

    async def tenant_bill(self, period: str, tenant: str) -> tuple[int, list[JobTotals]]:
        """`tenant`'s jobs charged in `period` and their totals at the latest checkpoint
        (as a statement at that checkpoint counts them); with the checkpoint's size. Reads
        only the tenant's own entries, and signs a checkpoint only when the log has none."""

        def bill(ledger: Log) -> tuple[int, list[JobTotals]]:
            if ledger.store.latest_checkpoint() is None:
                ledger.checkpoint()
            size = Checkpoint.from_text(parse_note(ledger.latest_note()).text).size
            mine = self._by_consumer.get(tenant, [])
            accepted = self._accepted_of_consumer.get(tenant, [])
            records = sorted(
                [
                    *((i, SignedRecord.from_entry(ledger.store.entry(i).leaf).record)
                      for i in mine if i < size),
                    *((i, AcceptedRecord.from_entry(ledger.store.entry(i).leaf).record)
                      for i in accepted if i < size),
                ],
                key=lambda pair: pair[0],
            )  # fmt: skip
            jobs = tenant_bill(
                records, period=period, consumer=tenant, size=size, currency=CURRENCY
            )
            return size, jobs

        return await self._run(bill)

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
        """The signed statement of `period`: one party's, or ("") the whole federation's.
        A federated broker's (`region` set) carries its region flows too."""
        if self.region:
            return await self.region_statement(period, party, home=self.region)
        await self.checkpoint()
        _, signed = await self._run(lambda ledger: ledger.settle(period, party=party))
        return signed

    async def region_statement(self, period: str, party: str = "", *, home: str) -> bytes:
        """`statement`, settled as region `home` (this broker's name): it also carries
        what this region owes the others for the records it accepted (`accept`)."""
        await self.checkpoint()
        _, signed = await self._run(lambda ledger: ledger.settle(period, party=party, home=home))
        return signed

    async def accept(self, owner: str, bundle_json: str, owner_log_key: VerifierKey) -> int:
        """Log that this broker accepted, for its tenant, the usage record that broker
        `owner`'s log holds, proven by `bundle_json` (that log's proof bundle), once it
        verifies under `owner_log_key`; its index here. Accepting the same record again
        answers the same index, whichever checkpoint the bundle is under."""

        def accept(ledger: Log) -> int:
            accepted = AcceptedRecord.parse(owner, bundle_json)
            size = ledger.size
            index = ledger.accept(accepted, owner_log_key)
            if index >= size:
                record = accepted.record
                self._index_accepted(index, record)
                log.info(
                    "accepted %s of %s (center %s, tenant %s, %d minor) at entry %d",
                    record.record_id,
                    accepted.accepted_id,
                    record.producer,
                    record.consumer,
                    record.charge_minor,
                    index,
                )
            return index

        return await self._run(accept)

    async def has_accepted(self, accepted_id: str) -> bool:
        """Whether the record `<origin>#<index>` of another log is accepted here."""
        return await self._run(lambda ledger: ledger.find_accepted(accepted_id) is not None)

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        def prove(ledger: Log) -> list[bytes]:
            if not 0 < size1 <= size2 <= ledger.size:
                raise InvalidArgument(
                    f"sizes must satisfy 0 < size1 <= size2 <= {ledger.size}, "
                    f"got {size1} and {size2}"
                )
            return ledger.store.consistency_proof(size1, size2)

        return await self._run(prove)

    def accept_witness(self, key: VerifierKey) -> None:
        """Keep cosignatures by `key` from now on (a peer broker's witness key, bound to
        its membership by gossip)."""
        if key not in self.witnesses:
            self.witnesses = [*self.witnesses, key]  # a new list: the ledger thread reads it

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
