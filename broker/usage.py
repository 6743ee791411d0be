"""Usage intake: a center's signed usage record, checked against what the broker itself saw
of the claim it bills, then verified, countersigned and appended by the ledger (on the
ledger's own thread).

A center bills only its own claims, and only what the broker observed (ClaimRecord): the
records are named after the claim (`CENTER/CLAIM` for a run's first metering interval,
`CENTER/CLAIM/n` for the n-th: one record chain per claim), their consumer is the
claim's tenant, their job, accelerator, devices and price are the claim's, their energy
and carbon follow from the claim's power and site figures, and each lies between the
claim and the end the broker saw, give or take `CLOCK_TOLERANCE_MS` for the clocks of two
hosts. Interval n > 1 names interval n - 1 in `refs`, which must be in the log already,
and continues it (`ledger.records.continuation_error`: no gap, no overlap, the same
claim's figures); that check and the append are one step on the ledger's thread, so
intervals sent in order are taken in order. An interval is checked against its
predecessor as in force (its latest correction), as the audit checks it; a correction
may not move an interval's start when it continues another, nor its end once another
continues it. Every interval but a run's last lasts at least the broker's floor
(`min_interval_s`): an interval that continues a shorter one is refused, so a center
cannot write an entry per second per job. Anything else is refused (the ledger
unchanged), logged and counted.
"""

from __future__ import annotations

import dataclasses
import logging

from broker.centers import UsageAck
from broker.claims import ClaimBook, ClaimRecord
from broker.ledger import BrokerLedger
from broker.metrics import Metrics
from broker.store import Store
from core.clock import Clock
from core.errors import IcxError, PermissionDenied
from core.types import CenterId
from ledger import SignedRecord, UsageRecord, VerifierKey
from ledger.records import (
    RecordKind,
    interval_carbon_g,
    interval_energy_wh,
    interval_id,
    split_interval_id,
)

log = logging.getLogger("icx.broker")

# How far a center's clock may be from the broker's.
CLOCK_TOLERANCE_MS = 5_000

# The shortest metering interval a center may bill, but for a run's last.
MIN_INTERVAL_S = 60


class UsageIntake:
    def __init__(
        self,
        claims: ClaimBook,
        store: Store,
        clock: Clock,
        ledger: BrokerLedger | None,
        metrics: Metrics,
        *,
        min_interval_s: int = MIN_INTERVAL_S,
    ) -> None:
        self.claims = claims
        self.min_interval_s = min_interval_s
        self.store = store
        self.clock = clock
        self.ledger = ledger
        self.metrics = metrics

    async def admit_center_key(
        self, center_id: CenterId, key_text: str, cert_pem: str = ""
    ) -> None:
        if key_text and self.ledger is not None:
            await self.ledger.admit_center(center_id, key_text, cert_pem)

    async def revoke_center_key(self, center_id: CenterId, key_text: str, reason: str) -> None:
        if self.ledger is not None:
            await self.ledger.revoke_center(center_id, key_text, reason)

    async def key_to_prove(self, center_id: CenterId, key_text: str) -> VerifierKey | None:
        """The key a connecting center must prove it holds: its admitted key, else the
        key it presents (admitted once proven); None for a center with neither."""
        presented = VerifierKey.parse(key_text) if key_text else None
        admitted = await self.ledger.admitted_key(center_id) if self.ledger is not None else None
        if admitted is not None and presented is not None and presented != admitted:
            raise PermissionDenied(
                f"center {center_id} already signs with key {admitted.key_id}; "
                f"refusing {presented.key_id} (revoke the old key first)"
            )
        return admitted or presented

    async def receive(self, center_id: CenterId, entry: bytes) -> UsageAck:
        try:
            signed = SignedRecord.from_entry(entry)
        except IcxError as exc:
            return self._refuse(center_id, "", f"unreadable record: {exc}")
        record = signed.record
        if self.ledger is None:
            return self._refuse(center_id, record.record_id, "this broker keeps no ledger")
        claim, n, reason = self._claim_of(center_id, record)
        if claim is not None:
            reason = _mismatch(record, claim, self.clock.now_ms())
        if reason:
            return self._refuse(center_id, record.record_id, reason)
        assert claim is not None
        usage = record.kind is RecordKind.USAGE
        try:
            index = await self.ledger.append(
                signed, continues=record.refs if usage else "", min_wall_s=self.min_interval_s
            )
        except IcxError as exc:
            return self._refuse(center_id, record.record_id, str(exc))
        # The claim names its latest record (the head of its chain). Read again: the
        # job's end may have been noted while the ledger appended.
        current = self.claims.record(claim.claim_id)
        if usage and current is not None and n > interval_number(current.billed_record_id):
            billed = self.claims.note(
                dataclasses.replace(current, billed_record_id=record.record_id)
            )
            await self.store.put_claim(billed)
        log.info(
            "usage %s for job %s logged at %d: %d device-s, %d minor units",
            record.record_id,
            record.job_id,
            index,
            record.device_s,
            record.charge_minor,
        )
        return UsageAck(record_id=record.record_id, accepted=True, index=index)

    def _claim_of(
        self, center_id: CenterId, record: UsageRecord
    ) -> tuple[ClaimRecord | None, int, str]:
        """The claim a record bills and the number of its metering interval; else a
        reason."""
        if record.producer != center_id:
            return None, 0, f"center {center_id} cannot report usage for {record.producer}"
        if record.kind not in (RecordKind.USAGE, RecordKind.CORRECTION):
            return None, 0, f"a center reports usage or corrections, not a {record.kind}"
        named = record.record_id if record.kind is RecordKind.USAGE else record.refs
        prefix = f"{center_id}/"
        if not named.startswith(prefix):
            return None, 0, f"record {named!r} must be named {prefix}CLAIM_ID[/N]"
        base, n = split_interval_id(named)
        claim_id = base[len(prefix) :]
        claim = self.claims.record(claim_id)
        if claim is None or claim.pool.center_id != center_id:
            return None, 0, f"center {center_id} holds no claim {claim_id!r}"
        if record.kind is RecordKind.USAGE:
            previous = interval_id(base, n - 1) if n > 1 else ""
            if n == 1 and record.refs:
                return None, 0, f"record {named!r} is the first of its run and continues none"
            if n > 1 and record.refs != previous:
                return (
                    None,
                    0,
                    (
                        f"record {named!r} is interval {n} of claim {claim_id}: refs must be "
                        f"{previous!r}, got {record.refs!r}"
                    ),
                )
        return claim, n, ""

    def _refuse(self, center_id: CenterId, record_id: str, reason: str) -> UsageAck:
        self.metrics.refused.labels(kind="usage").inc()
        log.warning("usage %s from %s refused: %s", record_id or "?", center_id, reason)
        return UsageAck(record_id=record_id, reason=reason)


def interval_number(record_id: str) -> int:
    """The interval a record id `CENTER/CLAIM[/n]` names; 0 for none ("")."""
    return split_interval_id(record_id)[1] if record_id else 0


def _mismatch(record: UsageRecord, claim: ClaimRecord, now_ms: int) -> str:
    """Why `record` does not bill what the broker saw of `claim`; "" if it does."""
    where = f"claim {claim.claim_id}"
    if record.consumer != claim.tenant:
        return f"job {claim.job_id} belongs to {claim.tenant!r}, not {record.consumer!r}"
    expected = (
        ("job_id", claim.job_id),
        ("accelerator", claim.accelerator),
        ("devices", claim.devices),
        ("unit_price_minor", claim.price_minor_per_device_hour),
    )
    for name, want in expected:
        got = getattr(record, name)
        if got != want:
            return f"{where}: {name} must be {want!r}, got {got!r}"
    span = {"offset_s": record.offset_s, "wall_s": record.wall_s}
    energy = interval_energy_wh(record.devices, claim.power_w, claim.pue_milli, **span)
    if record.energy_wh != energy:
        after = f" after {record.offset_s} s" if record.offset_s else ""
        return (
            f"{where}: energy_wh must be {energy} for {record.wall_s} s{after}, "
            f"got {record.energy_wh}"
        )
    carbon = interval_carbon_g(
        record.devices, claim.power_w, claim.pue_milli, claim.grid_g_co2_per_kwh, **span
    )
    if record.carbon_g != carbon:
        return f"{where}: carbon_g must be {carbon}, got {record.carbon_g}"
    earliest = claim.claimed_at_ms - CLOCK_TOLERANCE_MS
    latest = (claim.ended_at_ms if claim.ended_at_ms is not None else now_ms) + CLOCK_TOLERANCE_MS
    if record.start_ms < earliest or record.end_ms > latest:
        seen_end = "now" if claim.ended_at_ms is None else str(claim.ended_at_ms)
        return (
            f"{where}: the run {record.start_ms}..{record.end_ms} lies outside what the broker "
            f"saw ({claim.claimed_at_ms}..{seen_end}, +/- {CLOCK_TOLERANCE_MS} ms)"
        )
    return ""
