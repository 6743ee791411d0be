"""A tenant's bill: what each of its jobs used and cost, summed from the records in force,
by the same rules as settlement (`ledger.settlement.effective_records`, `charged_in`), so
that a tenant's bill for a period and its settlement statement for that period agree to
the minor unit.

Pure: records in, totals out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.ids import shown
from core.money import CURRENCY
from ledger.errors import InvalidRecord
from ledger.records import CHARGING_KINDS, ID_PATTERN, UsageRecord
from ledger.settlement import charged_in, effective_records, period_bounds
from ledger.signing import SignedRecord

__all__ = ["JobTotals", "LoggedRecord", "TenantBill", "job_totals", "tenant_bill"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedRecord:
    """A signed usage record and where it sits in the log."""

    index: int
    signed: SignedRecord

    @property
    def record(self) -> UsageRecord:
        return self.signed.record


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTotals:
    """One job's usage in one currency: how many records, device-seconds, energy (Wh),
    carbon (g) and charge (minor units)."""

    job_id: str
    consumer: str
    currency: str
    records: int = 0
    device_s: int = 0
    energy_wh: int = 0
    carbon_g: int = 0
    charge_minor: int = 0

    def plus(self, record: UsageRecord) -> JobTotals:
        return JobTotals(
            job_id=self.job_id,
            consumer=self.consumer,
            currency=self.currency,
            records=self.records + 1,
            device_s=self.device_s + record.device_s,
            energy_wh=self.energy_wh + record.energy_wh,
            carbon_g=self.carbon_g + record.carbon_g,
            charge_minor=self.charge_minor + record.charge_minor,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantBill:
    """A tenant's jobs charged in a period, as of a checkpoint of `checkpoint_size`."""

    tenant: str
    period: str
    currency: str
    checkpoint_size: int
    jobs: tuple[JobTotals, ...]


def job_totals(records: Iterable[UsageRecord]) -> list[JobTotals]:
    """The totals of records in force (usage or corrections), per job and currency, in
    job order."""
    totals: dict[tuple[str, str], JobTotals] = {}
    for record in records:
        if record.kind not in CHARGING_KINDS:
            continue
        key = (record.job_id, record.currency)
        if key not in totals:
            totals[key] = JobTotals(
                job_id=record.job_id, consumer=record.consumer, currency=record.currency
            )
        totals[key] = totals[key].plus(record)
    return [totals[k] for k in sorted(totals)]


def tenant_bill(
    records: Iterable[tuple[int, UsageRecord]],
    *,
    period: str,
    consumer: str,
    size: int,
    currency: str = CURRENCY,
) -> list[JobTotals]:
    """`consumer`'s jobs charged in `period` (YYYY-MM, charge time), from the (index,
    record) pairs of entries [0, size) in log order: the records settlement counts for
    that period at a checkpoint of `size`, so their sums are the consumer's `paid_minor`,
    `device_s_consumed` and `records` in its statement. Raises InvalidRecord for a bad
    period or consumer."""
    if not ID_PATTERN.fullmatch(consumer):
        raise InvalidRecord(f"tenant must be 1..128 of [A-Za-z0-9._:/@-], got {shown(consumer)}")
    t0, t1 = period_bounds(period)
    effective = effective_records(records, size)
    return job_totals(
        r for r in effective.values() if r.consumer == consumer and charged_in(r, t0, t1, currency)
    )
