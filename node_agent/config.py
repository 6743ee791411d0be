"""The center's configuration file (TOML): who the center is and what it has.

[center]
id = "CN06"
name = "Chengdu Intelligent Computing Center"
region = "TF"                 # East-Data-West-Computing hub
latitude = 30.66
longitude = 104.06
pue = 1.25
grid_g_co2_per_kwh = 140

[[pools]]
id = "ascend-910"
accelerator = "ascend-910"    # a model id from the federation's catalogue
devices = 64
memory_gb = 32
fp16_tflops = 256
power_w = 310
price_fen_per_device_hour = 500
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from core.errors import InvalidConfig, InvalidOffer
from core.types import CenterDescriptor, CenterId, Pool, PoolId


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise InvalidConfig(f"{where}.{key} is required")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidConfig(f"{where}.{key} has the wrong type: {value!r}")
    return value


def parse_center(data: dict[str, Any]) -> CenterDescriptor:
    """Build the descriptor from parsed TOML; raises InvalidConfig naming the field."""
    center = data.get("center")
    if not isinstance(center, dict):
        raise InvalidConfig("[center] table is required")
    pools_raw = data.get("pools", [])
    if not isinstance(pools_raw, list) or not pools_raw:
        raise InvalidConfig("at least one [[pools]] entry is required")
    pools = []
    for i, p in enumerate(pools_raw):
        where = f"pools[{i}]"
        devices = _get(p, "devices", int, where)
        try:
            pools.append(
                Pool(
                    pool_id=PoolId(_get(p, "id", str, where)),
                    accelerator=_get(p, "accelerator", str, where),
                    devices_total=devices,
                    devices_free=devices,
                    memory_gb=_get(p, "memory_gb", int, where),
                    fp16_tflops=_get(p, "fp16_tflops", int, where),
                    power_w=_get(p, "power_w", int, where),
                    price_fen_per_device_hour=_get(p, "price_fen_per_device_hour", int, where),
                )
            )
        except InvalidOffer as exc:
            raise InvalidConfig(f"{where}: {exc}") from exc
    pue = _get(center, "pue", (int, float), "center")
    try:
        return CenterDescriptor(
            center_id=CenterId(_get(center, "id", str, "center")),
            name=_get(center, "name", str, "center"),
            region=_get(center, "region", str, "center"),
            latitude=float(center.get("latitude", 0.0)),
            longitude=float(center.get("longitude", 0.0)),
            pue_milli=round(pue * 1000),
            grid_g_co2_per_kwh=_get(center, "grid_g_co2_per_kwh", int, "center"),
            pools=tuple(pools),
        )
    except InvalidOffer as exc:
        raise InvalidConfig(str(exc)) from exc


def load_center(path: Path) -> CenterDescriptor:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidConfig(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{path} is not valid TOML: {exc}") from exc
    return parse_center(data)
