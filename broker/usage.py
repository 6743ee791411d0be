"""Usage intake: a center's signed usage record, checked against what the broker itself saw
of the claim it bills, then verified, countersigned and appended by the ledger (on the
ledger's own thread).

A center bills only its own claims, and only what the broker observed (ClaimRecord): the
record is named after the claim (`CENTER/CLAIM`, so one record chain per claim), its
consumer is the claim's tenant, its job, accelerator, devices and price are the claim's,
its energy and carbon follow from the claim's power and site figures, and its run lies
between the claim and the end the broker saw, give or take `CLOCK_TOLERANCE_MS` for the
clocks of two hosts. Anything else is refused (the ledger unchanged), logged and counted.
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
from ledger.records import RecordKind, carbon_g, energy_wh

log = logging.getLogger("icx.broker")

# How far a center's clock may be from the broker's.
CLOCK_TOLERANCE_MS = 5_000


class UsageIntake:
    def __init__(
        self,
        claims: ClaimBook,
        store: Store,
        clock: Clock,
        ledger: BrokerLedger | None,
        metrics: Metrics,
    ) -> None:
        self.claims = claims
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
        claim, reason = self._claim_of(center_id, record)
        if claim is not None:
            reason = _mismatch(record, claim, self.clock.now_ms())
        if reason:
            return self._refuse(center_id, record.record_id, reason)
        assert claim is not None
        try:
            index = await self.ledger.append(signed)
        except IcxError as exc:
            return self._refuse(center_id, record.record_id, str(exc))
        if claim.billed_record_id != record.record_id:
            billed = self.claims.note(dataclasses.replace(claim, billed_record_id=record.record_id))
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

    def _claim_of(self, center_id: CenterId, record: UsageRecord) -> tuple[ClaimRecord | None, str]:
        if record.producer != center_id:
            return None, f"center {center_id} cannot report usage for {record.producer}"
        if record.kind not in (RecordKind.USAGE, RecordKind.CORRECTION):
            return None, f"a center reports usage or corrections, not a {record.kind}"
        chain = record.record_id if record.kind is RecordKind.USAGE else record.refs
        prefix = f"{center_id}/"
        if not chain.startswith(prefix):
            return None, f"record {chain!r} must be named {prefix}CLAIM_ID"
        claim = self.claims.record(chain[len(prefix) :])
        if claim is None or claim.pool.center_id != center_id:
            return None, f"center {center_id} holds no claim {chain[len(prefix) :]!r}"
        return claim, ""

    def _refuse(self, center_id: CenterId, record_id: str, reason: str) -> UsageAck:
        self.metrics.refused.labels(kind="usage").inc()
        log.warning("usage %s from %s refused: %s", record_id or "?", center_id, reason)
        return UsageAck(record_id=record_id, reason=reason)


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
    energy = energy_wh(record.devices, claim.power_w, record.wall_s, claim.pue_milli)
    if record.energy_wh != energy:
        return f"{where}: energy_wh must be {energy} for {record.wall_s} s, got {record.energy_wh}"
    carbon = carbon_g(energy, claim.grid_g_co2_per_kwh)
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
