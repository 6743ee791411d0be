"""The ledger a broker runs: signed usage in, countersigned entries, checkpoints and
proofs out, and the audit that replays it all.

The log's own Ed25519 key (named after the origin) signs checkpoints, countersigns
records as the accepting broker and signs statements; entry 0 admits it. Every other
key is admitted by a key entry before it may sign (see `ledger.keyring`).

Appends are all or nothing: a call whose records do not all check out changes nothing,
except that a replayed record id with different bytes is kept in `conflicts` as
evidence before the call is refused.

Another log's record accepted for this log's tenant (`ledger.accepted`) is an entry too,
checked under the owner's log key before it is appended; `records` yields only the log's
own usage records, `accepted` those.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from core.ids import shown
from core.money import CURRENCY
from ledger import canonical, merkle
from ledger._audit_rules import Rule, UsageRules, UsageRuleViolation
from ledger._membership import check_admission
from ledger._pool import VerifyPool
from ledger.accepted import AcceptedRecord
from ledger.bill import JobTotals, tenant_bill
from ledger.bundle import ProofBundle
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.errors import (
    AuditError,
    ConflictingRecord,
    EntryNotFound,
    InvalidRecord,
    LedgerError,
    NoteError,
    RefusedRecord,
    VerificationError,
)
from ledger.keyring import KeyEvent, KeyRing, Role
from ledger.keys import SignerKey, VerifierKey
from ledger.note import open_note, parse_note
from ledger.records import CHARGING_KINDS, RecordKind, UsageRecord
from ledger.settlement import RegionLog, Settlement, settle, sign_statement, verify_statement
from ledger.signing import (
    SignatureCache,
    SignedRecord,
    broker_message,
    cache_batch_roots,
    countersign,
    producer_message,
)
from ledger.store import LogStore

__all__ = ["AuditReport", "Log", "Rule", "UsageRuleViolation"]

_PRODUCER_ROLES = {
    RecordKind.USAGE: frozenset({Role.CENTER}),
    RecordKind.CORRECTION: frozenset({Role.CENTER}),
    RecordKind.ACK: frozenset({Role.TENANT}),
    RecordKind.DISPUTE: frozenset({Role.TENANT}),
}
_BROKER_ROLES = frozenset({Role.BROKER})
_AUDIT_CHUNK = 4096
_WHOLE = "*"  # the store's party name for the statement of every party


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    size: int
    root: bytes
    records: int
    key_events: int
    checkpoints: int
    statements: int
    accepted: int = 0  # entries accepting another log's record
    accepted_verified: int = 0  # ... of which the owner's signatures were checked too


def _check_refs(record: UsageRecord, original: UsageRecord | None) -> None:
    """A correction replaces its producer's own record; an ack or dispute answers a
    record addressed to its signer."""
    where = f"record {record.record_id!r}"
    if original is None:
        raise InvalidRecord(f"{where}: refs {record.refs!r} is not in the log")
    if original.kind not in CHARGING_KINDS:
        raise InvalidRecord(f"{where}: refs {record.refs!r} is a {original.kind}, not usage")
    if record.kind is RecordKind.CORRECTION:
        if (original.producer, original.consumer) != (record.producer, record.consumer):
            raise RefusedRecord(
                f"{where}: a correction must keep the producer and consumer of {record.refs!r}"
            )
    elif (original.consumer, original.producer) != (record.producer, record.consumer):
        raise RefusedRecord(f"{where}: only the consumer of {record.refs!r} may {record.kind} it")


def _parse(leaf: bytes) -> SignedRecord | KeyEvent | AcceptedRecord:
    value = canonical.decode(leaf)
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "usage":
        return SignedRecord.from_json(value)
    if kind == "key":
        return KeyEvent.from_json(value)
    if kind == "accepted":
        return AcceptedRecord.from_entry(leaf)  # rare: decoded again, to its own bound
    raise InvalidRecord(f"unknown entry type {shown(kind)}")


class Log:
    """A ledger over one store. `signer` (the log key) is needed to append and sign;
    reading, proving and auditing need only the store.

    With `workers` > 1, signature checks of appends and audits run in that many worker
    processes (started on first use; `close` stops them), while this process countersigns
    and stores: per-record signatures then use every core."""

    def __init__(
        self, store: LogStore, signer: SignerKey | None = None, *, workers: int = 1
    ) -> None:
        self.store = store
        self._pool = VerifyPool(workers) if workers > 1 else None
        self.signer = signer
        text = store.meta("log_key")
        if text is None:
            raise LedgerError(f"{store.path}: not a ledger (no log key); create it first")
        self.log_key = VerifierKey.parse(text)
        self.origin = self.log_key.name
        if signer is not None and signer.verifier != self.log_key:
            raise LedgerError(f"signer {signer.key_id} is not this log's key {self.log_key.key_id}")
        self.keyring = KeyRing()
        for entry in store.entries(type="key"):
            self.keyring.apply(KeyEvent.from_json(canonical.decode(entry.leaf)), entry.index)
        self._cache = SignatureCache()

    @classmethod
    def create(cls, store: LogStore, signer: SignerKey, *, workers: int = 1) -> Log:
        """Start a ledger in an empty store: record the log key and admit it as broker."""
        if store.size or store.meta("log_key") is not None:
            raise LedgerError(f"{store.path}: already holds a ledger")
        store.set_meta("log_key", signer.verifier.text())
        event = KeyEvent.admit(signer.name, Role.BROKER, signer.verifier)
        store.append([(None, "key", event.entry())])
        return cls(store, signer, workers=workers)

    def start_workers(self) -> None:
        """Start the verification workers now rather than on first use."""
        if self._pool is not None:
            self._pool.start()

    def close(self) -> None:
        """Stop the verification workers, if any. The store stays open."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_signer(self) -> SignerKey:
        if self.signer is None:
            raise LedgerError("this operation needs the log's signer key")
        return self.signer

    @property
    def size(self) -> int:
        return self.store.size

    # Keys.

    def _append_key_event(self, event: KeyEvent) -> int:
        self._require_signer()
        self.keyring.check(event)
        index = self.store.append([(None, "key", event.entry())])
        self.keyring.apply(event, index)
        return index

    def admit(self, party: str, role: Role, key: VerifierKey, *, cert: str = "") -> int:
        """Admit `key` to sign for `party`; returns the entry's index. `cert`, the PEM
        of the membership certificate that certifies the key, is logged as given: the
        caller checks it, and `audit(root=...)` checks it again."""
        return self._append_key_event(KeyEvent.admit(party, role, key, cert=cert))

    def revoke(self, key_id: str, *, reason: str = "") -> int:
        """Revoke a key from the next entry on; what it signed before stays valid.
        `reason` (a name, e.g. the certificate revoked) is logged with it."""
        return self._append_key_event(KeyEvent.revoke(key_id, reason=reason))

    # Records.

    def _record(self, record_id: str) -> UsageRecord | None:
        stored = self.store.find(record_id)
        if stored is None:
            return None
        return SignedRecord.from_entry(stored.leaf).record

    def record(self, record_id: str) -> UsageRecord | None:
        """The logged record `record_id`, if any."""
        return self._record(record_id)

    def append(self, signed: Sequence[SignedRecord]) -> list[int]:
        """Verify, countersign and append; returns each record's index. A record id
        already logged with the same bytes is answered with its index (idempotent)."""
        signer = self._require_signer()
        at = self.store.size
        countersigned = self._verify_and_countersign(signed, signer, at)
        stored_by_id = self.store.find_many([sr.record.record_id for sr in countersigned])
        pending: dict[str, SignedRecord] = {}
        result: list[int | str] = []
        for sr in countersigned:
            rid = sr.record.record_id
            leaf = sr.entry()
            stored = stored_by_id.get(rid)
            earlier = pending.get(rid)
            if stored is not None and stored.leaf == leaf:
                result.append(stored.index)
                continue
            if stored is not None or (earlier is not None and earlier.entry() != leaf):
                reason = f"record id {rid!r} is already logged with different bytes"
                self.store.add_conflict(rid, leaf, reason)
                raise ConflictingRecord(f"{reason}; the new bytes are kept as evidence")
            if earlier is None:
                if sr.record.kind is not RecordKind.USAGE:
                    refs = sr.record.refs
                    original = pending[refs].record if refs in pending else self._record(refs)
                    _check_refs(sr.record, original)
                pending[rid] = sr
            result.append(rid)
        first = self.store.append([(rid, "usage", sr.entry()) for rid, sr in pending.items()])
        positions = {rid: first + i for i, rid in enumerate(pending)}
        return [r if isinstance(r, int) else positions[r] for r in result]

    def _verify_and_countersign(
        self, signed: Sequence[SignedRecord], signer: SignerKey, at: int
    ) -> list[SignedRecord]:
        """Check every record's producer key and signature, in order, raising the first
        failure; return the records countersigned.

        The signatures are verified in bulk first (in the worker processes when there
        are any, while this process countersigns); the in-order checks then find them
        verified. Countersignatures made for a call that fails are dropped unseen."""
        cache_batch_roots(signed)
        items = []
        clean = True
        for sr in signed:
            try:
                key = self.keyring.signer(
                    sr.producer_key,
                    party=sr.record.producer,
                    roles=_PRODUCER_ROLES[sr.record.kind],
                    at=at,
                )
                items.append(
                    (key, producer_message(sr.batch_size, sr.batch_root()), sr.producer_sig)
                )
            except LedgerError:
                clean = False  # refused below, in order
                break
        todo = self._cache.unseen(items)
        countersigned: list[SignedRecord] | None = None
        if self._pool is not None and len(todo) >= VerifyPool.MIN_ITEMS:
            futures = self._pool.submit(todo)
            if clean:
                countersigned = countersign(signed, signer)
            self._cache.remember(todo, VerifyPool.collect(futures))
        else:
            self._cache.warm(items)
        for sr in signed:
            record = sr.record
            key = self.keyring.signer(
                sr.producer_key, party=record.producer, roles=_PRODUCER_ROLES[record.kind], at=at
            )
            self._cache.check_producer(sr, key)
        return countersign(signed, signer) if countersigned is None else countersigned

    # Records of other logs, accepted for this log's tenants.

    def accept(self, accepted: AcceptedRecord, owner_log_key: VerifierKey) -> int:
        """Verify `accepted` under its owner's log key (`AcceptedRecord.verify`) and
        append it; returns its index. The same record of the same owner accepted again
        (with the same leaf, under whichever checkpoint) answers its index; other bytes
        under the same `<origin>#<index>` are refused, and kept in `conflicts` as
        evidence. A record of this log itself is refused: it is settled here already."""
        self._require_signer()
        where = f"accepted {accepted.accepted_id}"
        if accepted.origin == self.origin:
            raise RefusedRecord(f"{where}: the record is this log's own; it is settled here")
        accepted.verify(owner_log_key)
        leaf = accepted.entry()
        stored = self.store.find(accepted.accepted_id)
        if stored is not None:
            before = AcceptedRecord.from_entry(stored.leaf)
            if (before.owner, before.bundle.leaf) == (accepted.owner, accepted.bundle.leaf):
                return stored.index
            reason = (
                f"{where} is already entry {stored.index} with another record"
                if before.bundle.leaf != accepted.bundle.leaf
                else f"{where} is already entry {stored.index}, from {before.owner!r}"
            )
            self.store.add_conflict(accepted.accepted_id, leaf, reason)
            raise ConflictingRecord(f"{reason}; the new bytes are kept as evidence")
        return self.store.append([(accepted.accepted_id, "accepted", leaf)])

    def find_accepted(self, accepted_id: str) -> int | None:
        """The index of the entry accepting `<origin>#<index>`, if any."""
        stored = self.store.find(accepted_id)
        return None if stored is None or stored.type != "accepted" else stored.index

    def accepted(
        self, begin: int = 0, end: int | None = None
    ) -> Iterable[tuple[int, AcceptedRecord]]:
        """The accepted records among entries [begin, end), with their indexes."""
        for entry in self.store.entries(begin, end, type="accepted"):
            yield entry.index, AcceptedRecord.from_entry(entry.leaf)

    # Checkpoints.

    def checkpoint(self) -> str:
        """Sign and store a checkpoint of the current tree; returns the note."""
        signer = self._require_signer()
        size = self.store.size
        note = sign_checkpoint(
            Checkpoint(origin=self.origin, size=size, root=self.store.root()), signer
        )
        self.store.add_checkpoint(size, note)
        return note

    def add_cosignatures(self, cosigned_note: str, witnesses: Iterable[VerifierKey]) -> int:
        """Keep the verified witness cosignatures of a stored checkpoint; returns how many."""
        witnesses = list(witnesses)
        note, verified = open_note(cosigned_note, [self.log_key, *witnesses])
        checkpoint = Checkpoint.from_text(note.text)
        stored = [c for c in self.store.checkpoints() if c[0] == checkpoint.size]
        if not stored or parse_note(stored[0][1]).text != note.text:
            raise NoteError(
                f"no stored checkpoint matches the cosigned one at size {checkpoint.size}"
            )
        known = {w.key_id for w in witnesses}
        count = 0
        for sig in note.signatures:
            if sig.key_id in known and sig.key_id in verified:
                self.store.add_cosignature(checkpoint.size, sig.line())
                count += 1
        return count

    def latest_note(self) -> str:
        """The latest checkpoint with every stored cosignature, as a signed note."""
        latest = self.store.latest_checkpoint()
        if latest is None:
            raise EntryNotFound("the log has no checkpoint yet")
        _, note, lines = latest
        return note + "".join(lines)

    # Proofs.

    def prove(self, *, record_id: str | None = None, index: int | None = None) -> ProofBundle:
        """A self-contained proof bundle for one entry under the latest checkpoint,
        with the admission of the key that signed it when it is a usage record."""
        if record_id is not None:
            stored = self.store.find(record_id)
            if stored is None:
                raise EntryNotFound(f"no record {shown(record_id)} in the log")
            index = stored.index
        if index is None:
            raise InvalidRecord("name a record id or an index")
        note = self.latest_note()
        size = Checkpoint.from_text(parse_note(note).text).size
        if not 0 <= index < size:
            raise EntryNotFound(
                f"entry {index} is not covered by the latest checkpoint (size {size})"
            )
        entry = self.store.entry(index)
        key_index = key_leaf = None
        key_proof: tuple[bytes, ...] = ()
        if entry.type == "usage":
            sr = SignedRecord.from_entry(entry.leaf)
            for e in self.keyring.entries():
                if e.key.key_id == sr.producer_key:
                    key_index = e.admitted_at
                    key_leaf = self.store.entry(key_index).leaf
                    key_proof = tuple(self.store.inclusion_proof(key_index, size))
        return ProofBundle(
            index=index,
            leaf=entry.leaf,
            proof=tuple(self.store.inclusion_proof(index, size)),
            checkpoint=note,
            key_index=key_index,
            key_leaf=key_leaf,
            key_proof=key_proof,
        )

    # Settlement.

    def settle(
        self, period: str, currency: str = CURRENCY, *, party: str = "", home: str = ""
    ) -> tuple[Settlement, bytes]:
        """Settle `period` over the entries the latest checkpoint covers; sign the
        statement (only `party`'s figures when given: `Settlement.for_party`), keep it
        under that party (`*` for the whole), and return it with its signed bytes. With
        `home`, this log's own party (its broker's name), the statement also carries
        what it owes other regions for the records it accepted (`settle`)."""
        signer = self._require_signer()
        checkpoint = Checkpoint.from_text(parse_note(self.latest_note()).text)
        result = settle(
            self.records(0, checkpoint.size),
            period=period,
            checkpoint=checkpoint,
            currency=currency,
            home=home,
            accepted=self.accepted(0, checkpoint.size) if home else (),
        )
        if party:
            result = result.for_party(party)
        signed = sign_statement(result, signer)
        self.store.add_statement(party or _WHOLE, period, signed)
        return result, signed

    def bill(
        self, period: str, consumer: str, currency: str = CURRENCY
    ) -> tuple[int, list[JobTotals]]:
        """`consumer`'s jobs charged in `period` with their totals, over the entries the
        latest checkpoint covers (as `settle` counts them); with that checkpoint's size."""
        checkpoint = Checkpoint.from_text(parse_note(self.latest_note()).text)
        totals = tenant_bill(
            self.records(0, checkpoint.size),
            period=period,
            consumer=consumer,
            size=checkpoint.size,
            currency=currency,
        )
        return checkpoint.size, totals

    def _audit_statements(self, roots: dict[int, bytes]) -> int:
        count = 0
        for party, period, data in self.store.statements():
            what = f"statement for {period}"
            if party != _WHOLE:
                what = f"statement of {party!r} for {period}"
            body = verify_statement(data, self.log_key)
            cp = body.get("checkpoint")
            currency = body.get("currency")
            if not isinstance(cp, dict) or not isinstance(currency, str):
                raise VerificationError(f"{what} names no checkpoint or currency")
            size = cp.get("size")
            if not isinstance(size, int) or size not in roots:
                raise VerificationError(f"{what} names no stored checkpoint")
            checkpoint = Checkpoint(origin=self.origin, size=size, root=roots[size])
            home = Settlement.home_of(body)
            again = settle(
                self.records(0, size),
                period=period,
                checkpoint=checkpoint,
                currency=currency,
                home=home,
                accepted=self.accepted(0, size) if home else (),
            )
            if party != _WHOLE:
                again = again.for_party(party)
            if canonical.encode(again.to_json()) != canonical.encode(body):
                raise VerificationError(f"{what} does not recompute from the log")
            count += 1
        return count

    # Audit.

    def _warm_audit(
        self,
        cache: SignatureCache,
        items: list[SignedRecord | KeyEvent | AcceptedRecord],
        candidates: dict[str, VerifierKey],
    ) -> None:
        """Verify the chunk's signatures in bulk under the keys their ids were first
        admitted with; the in-order checks still decide which key may sign where."""
        signed = [item for item in items if isinstance(item, SignedRecord)]
        cache_batch_roots(signed)
        checks: list[tuple[VerifierKey, bytes, bytes]] = []
        for sr in signed:
            producer = candidates.get(sr.producer_key)
            broker = candidates.get(sr.broker_key)
            try:
                root = sr.batch_root()
            except LedgerError:
                continue
            if producer is not None:
                checks.append((producer, producer_message(sr.batch_size, root), sr.producer_sig))
            if broker is not None:
                checks.append(
                    (broker, broker_message(sr.batch_size, root, sr.producer_sig), sr.broker_sig)
                )
        todo = cache.unseen(checks)
        if self._pool is not None and len(todo) >= VerifyPool.MIN_ITEMS:
            cache.remember(todo, self._pool.verify_many(todo))
        else:
            cache.warm(checks)

    def _audit_accepted(
        self,
        item: AcceptedRecord,
        peer_logs: Mapping[str, VerifierKey],
        cache: SignatureCache,
        ids: set[str],
    ) -> None:
        if item.origin == self.origin:
            raise VerificationError(f"accepted {item.accepted_id} is a record of this log")
        if item.accepted_id in ids:
            raise VerificationError(f"accepted {item.accepted_id} appears twice")
        owner_log_key = peer_logs.get(item.origin)
        if owner_log_key is None:
            item.check_structure(cache)
        else:
            item.verify(owner_log_key)

    def audit(
        self,
        *,
        root: x509.Certificate | None = None,
        peer_logs: Mapping[str, VerifierKey] | None = None,
    ) -> AuditReport:
        """Replay the whole store: every index present once and in order, every leaf
        hash as stored, every key event and signature valid at its position, the usage
        rules over every record (`ledger._audit_rules`: ids in the producer's name
        space, references, no run billed twice), every accepted record's bundle as far as
        it needs no outside key (`AcceptedRecord.check_structure`: another log's record,
        accepted once), every checkpoint's signature and root, every statement
        recomputed. With the federation's `root`, also every key admission but the log's
        own bound to a membership certificate that root issued (`ledger._membership`).
        With `peer_logs` (origin -> that log's key), also the owner's checkpoint
        signature and countersignature of each accepted record from those logs
        (`AcceptedRecord.verify`). Raises AuditError naming the first bad index
        (UsageRuleViolation, naming the rule too, for a broken usage rule)."""
        keyring = KeyRing()
        cache = SignatureCache()
        frontier = merkle.Frontier()
        checkpoints = {size: note for size, note, _ in self.store.checkpoints()}
        roots: dict[int, bytes] = {}
        if 0 in checkpoints:
            roots[0] = frontier.root()
        records: set[str] = set()
        accepted_ids: set[str] = set()
        rules = UsageRules()
        counts = {"usage": 0, "key": 0, "accepted": 0, "accepted_verified": 0}
        peer_logs = peer_logs or {}
        expected = 0
        candidates: dict[str, VerifierKey] = {}
        rows = self.store.raw_rows()
        while True:
            chunk = list(itertools.islice(rows, _AUDIT_CHUNK))
            if not chunk:
                break
            # Parse and hash the chunk, stopping at its first bad entry; check its batch
            # roots and signatures in bulk; then replay it in order. An error found while
            # parsing is raised only once the entries before it have replayed clean.
            parsed: list[tuple[int, bytes, SignedRecord | KeyEvent | AcceptedRecord]] = []
            stop: AuditError | None = None
            for idx, leaf, stored_hash in chunk:
                if idx != expected + len(parsed):
                    stop = AuditError(
                        f"missing or out of order: found entry {idx} in its place",
                        index=expected + len(parsed),
                    )
                    break
                leaf_hash = merkle.hash_leaf(leaf)
                if stored_hash != leaf_hash:
                    stop = AuditError("leaf bytes do not match the stored leaf hash", index=idx)
                    break
                try:
                    item = _parse(leaf)
                except LedgerError as exc:
                    stop = AuditError(str(exc), index=idx)
                    stop.__cause__ = exc
                    break
                parsed.append((idx, leaf_hash, item))
                if isinstance(item, KeyEvent) and item.key is not None:
                    candidates.setdefault(item.key_id, item.key)
            self._warm_audit(cache, [item for _, _, item in parsed], candidates)
            for idx, leaf_hash, item in parsed:
                try:
                    if isinstance(item, KeyEvent):
                        if idx == 0 and (item.key != self.log_key or item.party != self.origin):
                            raise VerificationError("entry 0 must admit the log's own key")
                        # Entry 0 is exempt: the auditor trusts the log key already (it
                        # signs every checkpoint), and a broker's certificate binds no
                        # Ed25519 key.
                        if root is not None and idx > 0 and item.action == "admit":
                            check_admission(item, root)
                        keyring.apply(item, idx)
                        counts["key"] += 1
                    elif isinstance(item, AcceptedRecord):
                        self._audit_accepted(item, peer_logs, cache, accepted_ids)
                        accepted_ids.add(item.accepted_id)
                        counts["accepted"] += 1
                        if item.origin in peer_logs:
                            counts["accepted_verified"] += 1
                    else:
                        record = item.record
                        key = keyring.signer(
                            item.producer_key,
                            party=record.producer,
                            roles=_PRODUCER_ROLES[record.kind],
                            at=idx,
                        )
                        cache.check_producer(item, key)
                        broker = keyring.signer(
                            item.broker_key, party="", roles=_BROKER_ROLES, at=idx
                        )
                        cache.check_broker(item, broker)
                        if record.record_id in records:
                            raise VerificationError(f"record id {record.record_id!r} appears twice")
                        rules.check(idx, record)
                        records.add(record.record_id)
                        counts["usage"] += 1
                except UsageRuleViolation:
                    raise
                except LedgerError as exc:
                    raise AuditError(str(exc), index=idx) from exc
                frontier.append(leaf_hash)
                expected += 1
                if expected in checkpoints:
                    roots[expected] = frontier.root()
            if stop is not None:
                raise stop
        last_good = 0
        for size, note in sorted(checkpoints.items()):
            try:
                opened, _ = open_note(note, [self.log_key])
                cp = Checkpoint.from_text(opened.text)
            except LedgerError as exc:
                raise AuditError(
                    f"checkpoint at size {size}: {exc}", index=min(size, expected)
                ) from exc
            if cp.size != size or size not in roots:
                raise AuditError(
                    f"checkpoint at size {size} is beyond the log ({expected})", index=expected
                )
            if cp.root != roots[size]:
                # The entries before the last matching checkpoint are vouched for; the
                # first bad one lies at or after it.
                raise AuditError(
                    f"checkpoint at size {size}: root does not match the entries", index=last_good
                )
            last_good = size
        try:
            statements = self._audit_statements(roots)
        except LedgerError as exc:
            raise AuditError(f"statement: {exc}", index=expected) from exc
        return AuditReport(
            size=expected,
            root=frontier.root(),
            records=counts["usage"],
            key_events=counts["key"],
            checkpoints=len(checkpoints),
            statements=statements,
            accepted=counts["accepted"],
            accepted_verified=counts["accepted_verified"],
        )

    def region(self, party: str) -> RegionLog:
        """This log at its latest checkpoint as `federation_view` reads it, `party` being
        its region's party (its broker's name)."""
        checkpoint = Checkpoint.from_text(parse_note(self.latest_note()).text)
        return RegionLog(
            party=party,
            checkpoint=checkpoint,
            records=list(self.records(0, checkpoint.size)),
            accepted=list(self.accepted(0, checkpoint.size)),
            leaf=lambda index: self.store.entry(index).leaf,
        )

    def records(self, begin: int = 0, end: int | None = None) -> Iterable[tuple[int, UsageRecord]]:
        """The usage records among entries [begin, end), with their indexes."""
        for entry in self.store.entries(begin, end, type="usage"):
            yield entry.index, SignedRecord.from_entry(entry.leaf).record
