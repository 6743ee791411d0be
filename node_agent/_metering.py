"""Metering: what a run used, as the usage record its center signs. Pure: run facts in,
a record out, with the ledger's energy and carbon rules and the exchange's one charge
rule (`core.money.charge_minor`). The same facts always give the same record, so a run
metered again after a restart gives the same bytes to sign."""

from __future__ import annotations

from dataclasses import dataclass

from core.money import charge_minor
from core.types import CenterDescriptor
from ledger import UsageRecord
from ledger.records import carbon_g, energy_wh

MS_PER_S = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFacts:
    """A run that started and ended at this center. Requires started_at_ms <=
    ended_at_ms and `pool_id` one of the center's pools."""

    claim_id: str
    job_id: str
    tenant: str
    pool_id: str
    devices: int
    started_at_ms: int
    ended_at_ms: int


def usage_record(center: CenterDescriptor, run: RunFacts) -> UsageRecord:
    """The record of `run`: whole seconds of wall time (rounded down), devices x that,
    energy = devices x power x time x PUE, carbon = energy x grid, charged at the pool's
    price. The record id is center/claim: one record per run."""
    pool = next(p for p in center.pools if p.pool_id == run.pool_id)
    wall_s = (run.ended_at_ms - run.started_at_ms) // MS_PER_S
    device_s = run.devices * wall_s
    energy = energy_wh(run.devices, pool.power_w, wall_s, center.pue_milli)
    return UsageRecord(
        record_id=f"{center.center_id}/{run.claim_id}",
        producer=center.center_id,
        consumer=run.tenant,
        job_id=run.job_id,
        start_ms=run.started_at_ms,
        end_ms=run.ended_at_ms,
        wall_s=wall_s,
        devices=run.devices,
        device_s=device_s,
        accelerator=pool.accelerator,
        energy_wh=energy,
        carbon_g=carbon_g(energy, center.grid_g_co2_per_kwh),
        unit_price_minor=pool.price_minor_per_device_hour,
        charge_minor=charge_minor(device_s, pool.price_minor_per_device_hour),
    )
