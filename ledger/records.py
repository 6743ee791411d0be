"""Usage records: what a center signs for a unit of compute it delivered.

The fields follow the grid and cloud accounting standards (OGF Usage Record, EGI APEL's
GPU record, FOCUS): who produced the usage, who consumes (pays for) it, which job, when,
how many devices for how long, the energy and carbon, the unit price and the charge.
Only integers and strings are signed: time in Unix ms UTC, durations in s, energy in Wh,
carbon in g, money in integer minor units (fen for CNY).

Records are never edited. A `correction` names the record it replaces (`refs`) and
carries the full corrected figures; the latest correction in log order wins. An `ack` or
`dispute` is signed by the consumer about a record (`refs`) and carries no figures.

A long run is billed as it goes, one `usage` record per metering interval: the first
names no other record, each later one names the previous interval in `refs` and says in
`offset_s` how many seconds of the run were billed before it. Its energy, carbon and
charge are what the run up to its end would cost less what the run up to its start
would (`interval_*`): each rounded once over the whole run, so the records of a chain
add up to exactly what one record of the whole run would say.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any

from core.ids import shown
from core.money import CURRENCY, charge_minor
from ledger import canonical
from ledger.errors import InvalidRecord

__all__ = [
    "SCHEMA",
    "RecordKind",
    "UsageRecord",
    "charge_minor",
    "interval_carbon_g",
    "interval_charge_minor",
    "interval_energy_wh",
    "interval_id",
    "split_interval_id",
]

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


def interval_id(base: str, n: int) -> str:
    """The id of the n-th metering interval (n >= 1) of the run whose first record is
    `base` (`CENTER/CLAIM`): `base` itself, then `base/n`."""
    return base if n == 1 else f"{base}/{n}"


def split_interval_id(record_id: str) -> tuple[str, int]:
    """The run and interval a record id names: `CENTER/CLAIM/n` (n >= 2, no leading
    zero) -> (`CENTER/CLAIM`, n); any other id -> (the id, 1). The inverse of
    `interval_id` for a base of the form `CENTER/CLAIM`."""
    base, _, tail = record_id.rpartition("/")
    if "/" in base and tail.isdigit() and tail[0] != "0" and int(tail) >= 2:
        return base, int(tail)
    return record_id, 1


# A run's figures are rounded once over the whole run; an interval's figure is the run's
# figure at the interval's end less the run's figure at its start. Each is >= 0 (every
# rule is monotone in time), and a chain's intervals add up to the whole run's figure.


def interval_energy_wh(
    devices: int, power_w: int, pue_milli: int, *, offset_s: int, wall_s: int
) -> int:
    """The energy of the `wall_s` seconds of a run that follow its first `offset_s`."""
    before = energy_wh(devices, power_w, offset_s, pue_milli)
    return energy_wh(devices, power_w, offset_s + wall_s, pue_milli) - before


def interval_carbon_g(
    devices: int, power_w: int, pue_milli: int, grid_g_per_kwh: int, *, offset_s: int, wall_s: int
) -> int:
    """The carbon of the `wall_s` seconds of a run that follow its first `offset_s`."""
    before = carbon_g(energy_wh(devices, power_w, offset_s, pue_milli), grid_g_per_kwh)
    until = energy_wh(devices, power_w, offset_s + wall_s, pue_milli)
    return carbon_g(until, grid_g_per_kwh) - before


def interval_charge_minor(
    devices: int, unit_price_minor: int, *, offset_s: int, wall_s: int
) -> int:
    """The charge of the `wall_s` seconds of a run that follow its first `offset_s`."""
    before = charge_minor(devices * offset_s, unit_price_minor)
    return charge_minor(devices * (offset_s + wall_s), unit_price_minor) - before


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
    offset_s: int = 0
    devices: int = 0
    device_s: int = 0
    accelerator: str = ""
    energy_wh: int = 0
    carbon_g: int = 0
    unit_price_minor: int = 0
    charge_minor: int = 0
    currency: str = CURRENCY
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
            "offset_s",
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
        if self.kind is RecordKind.USAGE and bool(self.refs) != (self.offset_s > 0):
            if self.refs:
                raise InvalidRecord(
                    f"{where}: a usage record that continues {shown(self.refs)} must have "
                    "offset_s > 0 (the seconds of the run billed before it), got 0"
                )
            raise InvalidRecord(
                f"{where}: a usage record with offset_s {self.offset_s} must name the "
                "previous interval of its run in refs"
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
                "offset_s",
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
        want_charge = interval_charge_minor(
            self.devices, self.unit_price_minor, offset_s=self.offset_s, wall_s=self.wall_s
        )
        if self.charge_minor != want_charge:
            if self.offset_s:
                rule = (
                    f"the charge of the run's first {self.offset_s + self.wall_s} s less "
                    f"that of its first {self.offset_s} s"
                )
            else:
                rule = "device_s x unit_price_minor / 3600 rounded up"
            raise InvalidRecord(
                f"{where}: charge_minor must be {rule} = {want_charge}, got {self.charge_minor}"
            )

    def to_json(self) -> dict[str, canonical.JsonValue]:
        data: dict[str, canonical.JsonValue] = {"schema": SCHEMA}
        for name in _FIELDS:
            data[name] = getattr(self, name)
        data["kind"] = str(self.kind)
        if not self.offset_s:
            # Left out when 0, so that a whole run's record has the bytes it always had.
            del data["offset_s"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> UsageRecord:
        if not isinstance(data, dict):
            raise InvalidRecord(f"record must be an object, got {type(data).__name__}")
        fields = dict(data)
        schema = fields.pop("schema", None)
        if schema != SCHEMA:
            raise InvalidRecord(f"record schema must be {SCHEMA!r}, got {shown(schema)}")
        if "offset_s" in fields and fields["offset_s"] == 0:
            raise InvalidRecord("record offset_s is left out when 0, got an explicit 0")
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

_KEPT_ALONG_A_RUN = ("producer", "consumer", "job_id", "accelerator", "devices", "unit_price_minor")


def continuation_error(record: UsageRecord, previous: UsageRecord) -> str:
    """Why `record` is not the next metering interval after `previous` (the record its
    `refs` names, as in force); "" if it is: `previous` is usage of the same producer,
    consumer, job, accelerator, devices and price, and `record` starts where it ends
    (no gap, no overlap) with `offset_s` = its `offset_s + wall_s`."""
    if previous.kind is not RecordKind.USAGE and previous.kind is not RecordKind.CORRECTION:
        return f"{previous.record_id!r} is a {previous.kind}, not usage"
    for name in _KEPT_ALONG_A_RUN:
        if getattr(previous, name) != getattr(record, name):
            return f"{name} must stay {getattr(previous, name)!r}, got {getattr(record, name)!r}"
    if record.start_ms != previous.end_ms:
        gap = "a gap" if record.start_ms > previous.end_ms else "an overlap"
        return (
            f"it starts at {record.start_ms}, but the previous interval ends at"
            f" {previous.end_ms} ({gap})"
        )
    want = previous.offset_s + previous.wall_s
    if record.offset_s != want:
        return (
            f"offset_s must be {want} (the previous interval's offset_s + wall_s),"
            f" got {record.offset_s}"
        )
    return ""
