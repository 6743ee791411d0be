"""Usage intake: a center's signed usage record, checked against the job it bills, then
verified, countersigned and appended by the ledger (on the ledger's own thread).

Only the center that ran a job bills it, and only to the job's tenant.
"""

from __future__ import annotations

import logging

from broker.centers import UsageAck
from broker.jobs import JobBook
from broker.ledger import BrokerLedger
from core.errors import IcxError
from core.types import CenterId
from ledger import SignedRecord

log = logging.getLogger("icx.broker")


class UsageIntake:
    def __init__(self, jobs: JobBook, ledger: BrokerLedger | None) -> None:
        self.jobs = jobs
        self.ledger = ledger

    async def admit_center_key(self, center_id: CenterId, key_text: str) -> None:
        if key_text and self.ledger is not None:
            await self.ledger.admit_center(center_id, key_text)

    async def receive(self, center_id: CenterId, entry: bytes) -> UsageAck:
        try:
            signed = SignedRecord.from_entry(entry)
        except IcxError as exc:
            return UsageAck(record_id="", reason=f"unreadable record: {exc}")
        record = signed.record
        job = self.jobs.find(record.job_id)
        reason = ""
        if self.ledger is None:
            reason = "this broker keeps no ledger"
        elif record.producer != center_id:
            reason = f"center {center_id} cannot report usage for {record.producer}"
        elif job is None:
            reason = f"no job {record.job_id!r}"
        elif record.consumer != job.tenant:
            reason = f"job {job.job_id} belongs to {job.tenant!r}, not {record.consumer!r}"
        if not reason and self.ledger is not None:
            try:
                index = await self.ledger.append(signed)
            except IcxError as exc:
                reason = str(exc)
            else:
                log.info(
                    "usage %s for job %s logged at %d: %d device-s, %d minor units",
                    record.record_id,
                    record.job_id,
                    index,
                    record.device_s,
                    record.charge_minor,
                )
                return UsageAck(record_id=record.record_id, accepted=True, index=index)
        log.warning("usage %s from %s refused: %s", record.record_id, center_id, reason)
        return UsageAck(record_id=record.record_id, reason=reason)
