"""Ledger fixtures: a log in a real SQLite file with admitted parties and real keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger import LedgerStore, Log, Role, SignerKey, UsageRecord
from ledger.records import RecordKind, charge_minor

ORIGIN = "icx.test/ledger"
NOV_2026_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def seeded_key(name: str, n: int, alg: int = 1) -> SignerKey:
    return SignerKey(name=name, alg=alg, seed=bytes([n]) * 32)


def usage(
    record_id: str,
    *,
    producer: str = "center/wuhan",
    consumer: str = "tenant/lab",
    devices: int = 8,
    wall_s: int = 3600,
    price: int = 1200,
    start_ms: int = NOV_2026_MS + 3_600_000,
    kind: RecordKind = RecordKind.USAGE,
    refs: str = "",
) -> UsageRecord:
    return UsageRecord(
        record_id=record_id,
        kind=kind,
        refs=refs,
        producer=producer,
        consumer=consumer,
        job_id=f"job-{record_id.rsplit('/', 1)[-1]}",
        start_ms=start_ms,
        end_ms=start_ms + wall_s * 1000,
        wall_s=wall_s,
        devices=devices,
        device_s=devices * wall_s,
        accelerator="ascend-910b",
        energy_wh=devices * 400 * wall_s * 1350 // 3_600_000,
        carbon_g=0,
        unit_price_minor=price,
        charge_minor=charge_minor(devices * wall_s, price),
    )


@dataclass
class Parties:
    log_key: SignerKey
    wuhan: SignerKey
    guizhou: SignerKey
    lab: SignerKey
    outsider: SignerKey


@pytest.fixture
def parties() -> Parties:
    return Parties(
        log_key=seeded_key(ORIGIN, 1),
        wuhan=seeded_key("center/wuhan", 2),
        guizhou=seeded_key("center/guizhou", 3),
        lab=seeded_key("tenant/lab", 4),
        outsider=seeded_key("center/outsider", 5),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def log(db_path: Path, parties: Parties) -> Iterator[Log]:
    store = LedgerStore(db_path)
    log = Log.create(store, parties.log_key)
    log.admit("center/wuhan", Role.CENTER, parties.wuhan.verifier)
    log.admit("center/guizhou", Role.CENTER, parties.guizhou.verifier)
    log.admit("tenant/lab", Role.TENANT, parties.lab.verifier)
    try:
        yield log
    finally:
        store.close()
