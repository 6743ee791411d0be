"""Metering: what a run used, as the usage records its center signs. Pure: run facts in,
records out, with the ledger's energy and carbon rules and the exchange's one charge rule
(`core.money.charge_minor`), each rounded once over the whole run
(`ledger.records.interval_*`).

A run is metered every `interval_s` while it runs and once more at its end. Interval n
(from 1) covers `[start + (n-1) x interval, start + n x interval)` of the run, the last
one ends at the run's end; boundaries lie whole seconds after the start, so the wall
seconds of a run's intervals add up to the run's, and each figure of a record is the
run's figure at its end less the run's figure at its start. The records of a run
therefore add up exactly to the one record a run metered only at its end would have
(device-seconds, energy, carbon, charge).

Record ids are `CENTER/CLAIM` for the first interval (the id a run's only record always
had) and `CENTER/CLAIM/n` for the n-th; each later record names the previous one in
`refs` and the seconds billed before it in `offset_s`. The same facts always give the
same records, so a run metered again after a restart gives the same bytes to sign, and
the ledger takes each record once.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.types import CenterDescriptor
from ledger import UsageRecord
from ledger.records import (
    interval_carbon_g,
    interval_charge_minor,
    interval_energy_wh,
    interval_id,
)

MS_PER_S = 1000

DEFAULT_INTERVAL_S = 15 * 60
"""How often a running job is metered unless the center says otherwise."""

MAX_INTERVAL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFacts:
    """A run at this center. Requires started_at_ms <= ended_at_ms and `pool_id` one of
    the center's pools; `ended_at_ms` is the run's end (for a run still going, how far
    it is metered)."""

    claim_id: str
    job_id: str
    tenant: str
    pool_id: str
    devices: int
    started_at_ms: int
    ended_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """The n-th metered piece of a run (n from 1): `[start_ms, end_ms)`, after the
    run's first `offset_s` seconds."""

    n: int
    start_ms: int
    end_ms: int
    offset_s: int


def record_id(center_id: str, claim_id: str, n: int) -> str:
    """The id of a run's n-th record: `CENTER/CLAIM`, then `CENTER/CLAIM/n`."""
    return interval_id(f"{center_id}/{claim_id}", n)


def check_interval_s(interval_s: int, where: str) -> int:
    """`interval_s` if it is a whole number of seconds in 1..MAX_INTERVAL_S; else
    ValueError naming `where`."""
    if (
        not isinstance(interval_s, int)
        or isinstance(interval_s, bool)
        or not 1 <= interval_s <= MAX_INTERVAL_S
    ):
        raise ValueError(f"{where} must be whole seconds 1..{MAX_INTERVAL_S}, got {interval_s!r}")
    return interval_s


def due_intervals(
    *,
    started_at_ms: int,
    metered_n: int,
    metered_to_ms: int,
    until_ms: int,
    interval_s: int,
    final: bool,
) -> list[Interval]:
    """The intervals of a run that started at `started_at_ms`, of which `metered_n` are
    metered up to `metered_to_ms`, that are due at `until_ms`: every whole interval that
    has passed by then; and when `final` (the run ended at `until_ms`), what is left,
    unless that is under a second after earlier intervals (it bills nothing: wall
    seconds are whole). A run never metered before gets at least one record at its end.
    Requires metered_to_ms - started_at_ms to be whole seconds when metered_n > 0."""
    at = metered_to_ms if metered_n else started_at_ms
    step = interval_s * MS_PER_S
    n = metered_n
    out: list[Interval] = []
    while at + step <= until_ms:
        n += 1
        out.append(
            Interval(n=n, start_ms=at, end_ms=at + step, offset_s=_offset(started_at_ms, at))
        )
        at += step
    if final and (n == 0 or until_ms - at >= MS_PER_S):
        n += 1
        out.append(
            Interval(
                n=n, start_ms=at, end_ms=max(at, until_ms), offset_s=_offset(started_at_ms, at)
            )
        )
    return out


def _offset(started_at_ms: int, at_ms: int) -> int:
    return (at_ms - started_at_ms) // MS_PER_S


def interval_record(center: CenterDescriptor, run: RunFacts, interval: Interval) -> UsageRecord:
    """The record of one interval of `run`: whole seconds of its wall time (rounded
    down), devices x that, and the run's energy (devices x power x time x PUE), carbon
    (energy x grid) and charge (at the pool's price) over the interval."""
    pool = next(p for p in center.pools if p.pool_id == run.pool_id)
    wall_s = (interval.end_ms - interval.start_ms) // MS_PER_S
    offset_s = interval.offset_s
    return UsageRecord(
        record_id=record_id(center.center_id, run.claim_id, interval.n),
        refs=record_id(center.center_id, run.claim_id, interval.n - 1) if interval.n > 1 else "",
        producer=center.center_id,
        consumer=run.tenant,
        job_id=run.job_id,
        start_ms=interval.start_ms,
        end_ms=interval.end_ms,
        wall_s=wall_s,
        offset_s=offset_s,
        devices=run.devices,
        device_s=run.devices * wall_s,
        accelerator=pool.accelerator,
        energy_wh=interval_energy_wh(
            run.devices, pool.power_w, center.pue_milli, offset_s=offset_s, wall_s=wall_s
        ),
        carbon_g=interval_carbon_g(
            run.devices,
            pool.power_w,
            center.pue_milli,
            center.grid_g_co2_per_kwh,
            offset_s=offset_s,
            wall_s=wall_s,
        ),
        unit_price_minor=pool.price_minor_per_device_hour,
        charge_minor=interval_charge_minor(
            run.devices, pool.price_minor_per_device_hour, offset_s=offset_s, wall_s=wall_s
        ),
    )


def usage_record(center: CenterDescriptor, run: RunFacts) -> UsageRecord:
    """The one record of `run` metered only at its end (`CENTER/CLAIM`)."""
    whole = Interval(n=1, start_ms=run.started_at_ms, end_ms=run.ended_at_ms, offset_s=0)
    return interval_record(center, run, whole)


def usage_records(center: CenterDescriptor, run: RunFacts, interval_s: int) -> list[UsageRecord]:
    """Every record of the ended `run` metered every `interval_s` and at its end."""
    intervals = due_intervals(
        started_at_ms=run.started_at_ms,
        metered_n=0,
        metered_to_ms=run.started_at_ms,
        until_ms=run.ended_at_ms,
        interval_s=interval_s,
        final=True,
    )
    return [interval_record(center, run, i) for i in intervals]
