"""Synthetic but really signed usage, for trying the tools, tests and benchmarks.

K generated centers (real Ed25519 keys, admitted in the log) report usage for T tenants:
plausible jobs on catalogue accelerators, energy = devices x power x hours x PUE, carbon
= energy x grid intensity, charge = device-hours x price. Deterministic for a seed: the
keys come from the seeded generator too, so two runs give byte-identical logs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from core.accelerators import CATALOGUE
from ledger.keyring import Role
from ledger.keys import SignerKey
from ledger.log import Log
from ledger.records import RecordKind, UsageRecord, carbon_g, charge_minor, energy_wh
from ledger.signing import sign_records

__all__ = ["Party", "Sample", "carbon_g", "energy_wh", "fill"]

_SITES = (
    # (name, PUE in thousandths, grid g CO2 per kWh)
    ("wuhan", 1350, 520),
    ("jinan", 1380, 610),
    ("nanjing", 1320, 560),
    ("chengdu", 1250, 180),
    ("shenzhen", 1400, 450),
    ("ningxia", 1180, 420),
    ("guizhou", 1200, 260),
    ("gansu", 1190, 390),
    ("inner-mongolia", 1150, 640),
    ("shanghai", 1380, 540),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    name: str
    role: Role
    key: SignerKey
    pue_milli: int = 0
    grid_g_per_kwh: int = 0


@dataclass(slots=True, kw_only=True)
class Sample:
    centers: list[Party] = field(default_factory=list)
    tenants: list[Party] = field(default_factory=list)
    records: int = 0


def _key(rng: random.Random, name: str) -> SignerKey:
    return SignerKey(name=name, alg=1, seed=rng.randbytes(32))


def parties(seed: int, centers: int, tenants: int) -> Sample:
    """Generate K centers and T tenants with keys, deterministically for `seed`."""
    rng = random.Random(seed)
    sample = Sample()
    for i in range(centers):
        site, pue, grid = _SITES[i % len(_SITES)]
        name = f"center/{site}-{i // len(_SITES) + 1}"
        sample.centers.append(
            Party(
                name=name, role=Role.CENTER, key=_key(rng, name), pue_milli=pue, grid_g_per_kwh=grid
            )
        )
    for i in range(tenants):
        name = f"tenant/t{i + 1:03d}"
        sample.tenants.append(Party(name=name, role=Role.TENANT, key=_key(rng, name)))
    return sample


def fill(
    log: Log,
    *,
    records: int,
    centers: int = 5,
    tenants: int = 20,
    seed: int = 1,
    start_ms: int,
    span_ms: int = 30 * 24 * 3600 * 1000,
    batch: int = 1,
) -> Sample:
    """Admit the parties' keys and append `records` usage records spread over
    [start_ms, start_ms + span_ms), signed in batches of `batch` per center."""
    sample = parties(seed, centers, tenants)
    for party in sample.centers + sample.tenants:
        log.admit(party.name, party.role, party.key.verifier)
    rng = random.Random(seed + 1)
    models = sorted(CATALOGUE)
    prices = {m: 800 + 40 * i for i, m in enumerate(models)}  # fen per device-hour
    pending: dict[str, list[UsageRecord]] = {}
    for n in range(records):
        center = sample.centers[rng.randrange(centers)]
        tenant = sample.tenants[rng.randrange(tenants)]
        model = models[rng.randrange(len(models))]
        devices = rng.choice((1, 2, 4, 8, 8, 16, 32))
        wall_s = rng.randrange(60, 12 * 3600)
        begin = start_ms + rng.randrange(max(1, span_ms - wall_s * 1000))
        energy = energy_wh(devices, CATALOGUE[model].power_w, wall_s, center.pue_milli)
        record = UsageRecord(
            record_id=f"{center.name}/u{n:08d}",
            kind=RecordKind.USAGE,
            producer=center.name,
            consumer=tenant.name,
            job_id=f"job-{n:08d}",
            start_ms=begin,
            end_ms=begin + wall_s * 1000,
            wall_s=wall_s,
            devices=devices,
            device_s=devices * wall_s,
            accelerator=model,
            energy_wh=energy,
            carbon_g=carbon_g(energy, center.grid_g_per_kwh),
            unit_price_minor=prices[model],
            charge_minor=charge_minor(devices * wall_s, prices[model]),
        )
        queue = pending.setdefault(center.name, [])
        queue.append(record)
        if len(queue) >= batch:
            log.append(sign_records(queue, center.key))
            queue.clear()
    keys = {c.name: c.key for c in sample.centers}
    for name, queue in pending.items():
        if queue:
            log.append(sign_records(queue, keys[name]))
    sample.records = records
    return sample
