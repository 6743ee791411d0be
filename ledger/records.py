"""Usage records: what a center signs for a unit of compute it delivered.

The fields follow the grid and cloud accounting standards (OGF Usage Record, EGI APEL's
GPU record, FOCUS): who produced the usage, who consumes (pays for) it, which job, when,
how many devices for how long, the energy and carbon, the unit price and the charge.
Only integers and strings are signed: time in Unix ms UTC, durations in s, energy in Wh,
carbon in g, money in integer minor units (fen for CNY).

Records are never edited. A `correction` names the record it replaces (`refs`) and
carries the full corrected figures; the latest correction in log order wins. An `ack` or
`dispute` is signed by the consumer about a record (`refs`) and carries no figures.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any

from core.ids import shown
from core.money import charge_minor
from ledger import canonical
from ledger.errors import InvalidRecord

__all__ = ["SCHEMA", "RecordKind", "UsageRecord", "charge_minor"]

SCHEMA = "icx.usage/v1"
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
_CURRENCY = re.compile(r"[A-Z]{3}")
MS_PER_S = 1000
S_PER_HOUR = 3600


class RecordKind(enum.StrEnum):
    USAGE = "usage"
    CORRECTION = "correction"
    ACK = "ack"
    DISPUTE = "dispute"


CHARGING_KINDS = frozenset({RecordKind.USAGE, RecordKind.CORRECTION})


def energy_wh(devices: int, power_w: int, wall_s: int, pue_milli: int) -> int:
    """devices x power x hours x PUE in Wh, multiplied in integers and rounded half up
    once (PUE in thousandths)."""
    denominator = S_PER_HOUR * 1000
    return (devices * power_w * wall_s * pue_milli + denominator // 2) // denominator


def carbon_g(energy: int, grid_g_per_kwh: int) -> int:
    """energy x grid intensity in g, rounded half up once."""
    return (energy * grid_g_per_kwh + 500) // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One signed unit of accounting. Checks itself; see the module docstring."""

    record_id: str
    kind: RecordKind = RecordKind.USAGE
    refs: str = ""
    producer: str
    consumer: str
    job_id: str = ""
    start_ms: int
    end_ms: int
    wall_s: int = 0
    devices: int = 0
    device_s: int = 0
    accelerator: str = ""
    energy_wh: int = 0
    carbon_g: int = 0
    unit_price_minor: int = 0
    charge_minor: int = 0
    currency: str = "CNY"
    _canonical: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"record {shown(self.record_id)}"
        for name in ("record_id", "producer", "consumer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
                raise InvalidRecord(
                    f"{where}: {name} must be 1..128 of [A-Za-z0-9._:/@-], got {shown(value)}"
                )
        for name in ("refs", "job_id", "accelerator"):
            value = getattr(self, name)
            if not isinstance(value, str) or (value and not ID_PATTERN.fullmatch(value)):
                raise InvalidRecord(
                    f"{where}: {name} must be empty or 1..128 of [A-Za-z0-9._:/@-], "
                    f"got {shown(value)}"
                )
        for name in (
            "start_ms",
            "end_ms",
            "wall_s",
            "devices",
            "device_s",
            "energy_wh",
            "carbon_g",
            "unit_price_minor",
            "charge_minor",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRecord(f"{where}: {name} must be an integer, got {shown(value)}")
            if not 0 <= value <= canonical.MAX_SAFE_INT:
                raise InvalidRecord(f"{where}: {name} must be 0..2**53-1, got {value}")
        try:
            object.__setattr__(self, "kind", RecordKind(self.kind))
        except ValueError as exc:
            kinds = ", ".join(k.value for k in RecordKind)
            raise InvalidRecord(
                f"{where}: kind must be one of {kinds}, got {shown(self.kind)}"
            ) from exc
        if not _CURRENCY.fullmatch(self.currency):
            raise InvalidRecord(
                f"{where}: currency must be ISO 4217 (3 letters), got {shown(self.currency)}"
            )
        if self.producer == self.consumer:
            raise InvalidRecord(
                f"{where}: producer and consumer must differ, both {shown(self.producer)}"
            )
        if self.end_ms < self.start_ms:
            raise InvalidRecord(
                f"{where}: end_ms must be >= start_ms ({self.start_ms}), got {self.end_ms}"
            )
        if self.kind is RecordKind.USAGE and self.refs:
            raise InvalidRecord(
                f"{where}: a usage record must not reference another, got {shown(self.refs)}"
            )
        if self.kind is not RecordKind.USAGE and not self.refs:
            raise InvalidRecord(f"{where}: a {self.kind} must name the record it is about in refs")
        if self.refs == self.record_id:
            raise InvalidRecord(f"{where}: refs must name another record")
        if self.kind in CHARGING_KINDS:
            self._check_figures(where)
        else:
            figures = (
                "wall_s",
                "devices",
                "device_s",
                "energy_wh",
                "carbon_g",
                "unit_price_minor",
                "charge_minor",
            )
            nonzero = [f for f in figures if getattr(self, f)]
            if nonzero:
                raise InvalidRecord(
                    f"{where}: a {self.kind} carries no figures, got {', '.join(nonzero)}"
                )

    def _check_figures(self, where: str) -> None:
        if not self.job_id:
            raise InvalidRecord(f"{where}: job_id must not be empty")
        if not self.accelerator:
            raise InvalidRecord(f"{where}: accelerator must not be empty")
        if self.devices < 1:
            raise InvalidRecord(f"{where}: devices must be >= 1, got {self.devices}")
        want_wall = (self.end_ms - self.start_ms) // MS_PER_S
        if self.wall_s != want_wall:
            raise InvalidRecord(
                f"{where}: wall_s must be (end_ms - start_ms) // 1000 = {want_wall}, "
                f"got {self.wall_s}"
            )
        if self.device_s != self.devices * self.wall_s:
            raise InvalidRecord(
                f"{where}: device_s must be devices x wall_s = {self.devices * self.wall_s}, "
                f"got {self.device_s}"
            )
        want_charge = charge_minor(self.device_s, self.unit_price_minor)
        if self.charge_minor != want_charge:
            raise InvalidRecord(
                f"{where}: charge_minor must be device_s x unit_price_minor / 3600 "
                f"rounded up = {want_charge}, "
                f"got {self.charge_minor}"
            )

    def to_json(self) -> dict[str, canonical.JsonValue]:
        data: dict[str, canonical.JsonValue] = {"schema": SCHEMA}
        for name in _FIELDS:
            data[name] = getattr(self, name)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_json(cls, data: Any) -> UsageRecord:
        if not isinstance(data, dict):
            raise InvalidRecord(f"record must be an object, got {type(data).__name__}")
        fields = dict(data)
        schema = fields.pop("schema", None)
        if schema != SCHEMA:
            raise InvalidRecord(f"record schema must be {SCHEMA!r}, got {shown(schema)}")
        try:
            return cls(**fields)
        except TypeError as exc:
            raise InvalidRecord(f"record fields: {exc}") from exc

    def canonical(self) -> bytes:
        """The record's canonical bytes, encoded once: every field was checked on
        construction, so the fast encoder applies."""
        data = self._canonical
        if data is None:
            data = canonical.encode_checked(self.to_json())
            object.__setattr__(self, "_canonical", data)
        return data


_FIELDS = tuple(f.name for f in fields(UsageRecord) if not f.name.startswith("_"))
