"""The center's configuration file (TOML): who the center is and what it has.

[center]
id = "CN06"
name = "Chengdu Intelligent Computing Center"
region = "CY"                 # East-Data-West-Computing hub
latitude = 30.66
longitude = 104.06
pue = 1.25
grid_g_co2_per_kwh = 140
key_file = "CN06.key"         # optional: signs usage records (icx agent init makes it)
discover = "config"           # or "nvml": each pool's devices, memory and power from the
                              # NVIDIA GPUs found here, used ones withheld; the pools keep
                              # id, price and TFLOPS (node_agent/discovery.py)
metering_interval_s = 900     # optional: how often a running job's usage is signed

[[pools]]
id = "ascend-910"
accelerator = "ascend-910"    # a model id from the federation's catalogue
devices = 64
memory_gb = 32
fp16_tflops = 256
power_w = 310
price_minor_per_device_hour = 500

[backend]
kind = "process"              # process | slurm | docker; the rest of the table is the
                              # backend's own (see node_agent/backends)
# images = ["icx/busybox:1"]  # docker: the images the center runs jobs in, advertised
                              # in its descriptor
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import IcxError, InvalidConfig, InvalidOffer
from core.types import CenterDescriptor, CenterId, Pool, PoolId, check_image
from ledger import SignerKey
from node_agent._metering import check_interval_s


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
                    price_minor_per_device_hour=_get(p, "price_minor_per_device_hour", int, where),
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
            images=backend_images(parse_backend(data)),
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


def _relative_path(path: Path, field: str) -> Path | None:
    """`[center] <field>` of the config, a path relative to the config's folder; None if
    absent."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfig(f"cannot read {path}: {exc}") from exc
    center = data.get("center", {})
    value = center.get(field) if isinstance(center, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidConfig(f"center.{field} must be a path, got {value!r}")
    return path.parent / value


def usage_key_path(path: Path) -> Path | None:
    """The `[center] key_file` of a config, relative to the config's folder."""
    return _relative_path(path, "key_file")


def metering_interval_s(path: Path) -> int | None:
    """The `[center] metering_interval_s` of a config (whole seconds), None if absent."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfig(f"cannot read {path}: {exc}") from exc
    center = data.get("center", {})
    value = center.get("metering_interval_s") if isinstance(center, dict) else None
    if value is None:
        return None
    try:
        return check_interval_s(value, "center.metering_interval_s")
    except ValueError as exc:
        raise InvalidConfig(str(exc)) from exc


def identity_dir(path: Path, center: CenterDescriptor) -> Path:
    """The center's member folder: `[center] identity` of the config (relative to its
    folder), else CENTER_ID.identity beside it."""
    return _relative_path(path, "identity") or path.parent / f"{center.center_id}.identity"


def load_usage_key(path: Path) -> SignerKey | None:
    """The center's usage signer key named by the config, if any."""
    key_path = usage_key_path(path)
    if key_path is None:
        return None
    try:
        return SignerKey.parse(key_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidConfig(
            f"cannot read center.key_file {key_path}: {exc.strerror} "
            "(create it with icx agent init)"
        ) from exc
    except IcxError as exc:
        raise InvalidConfig(f"center.key_file {key_path}: {exc}") from exc


BACKENDS = ("process", "slurm", "docker")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """The config's `[backend]` table: `kind` (one of BACKENDS, default "process") and
    the rest of the table, which the chosen backend reads and checks itself."""

    kind: str = "process"
    options: dict[str, Any] = field(default_factory=dict)


def parse_backend(data: dict[str, Any]) -> BackendConfig:
    table = data.get("backend", {})
    if not isinstance(table, dict):
        raise InvalidConfig("[backend] must be a table")
    options = dict(table)
    kind = options.pop("kind", "process")
    if kind not in BACKENDS:
        raise InvalidConfig(f"backend.kind must be one of {', '.join(BACKENDS)}, got {kind!r}")
    return BackendConfig(kind, options)


def backend_images(config: BackendConfig) -> tuple[str, ...]:
    """The container images a `docker` backend runs jobs in (`images`, at least one);
    () for any other backend. Raises InvalidConfig naming the entry that is wrong."""
    if config.kind != "docker":
        return ()
    images = config.options.get("images")
    if not isinstance(images, list) or not images:
        raise InvalidConfig(
            "backend.images must list the images the center runs jobs in (at least one, "
            f'e.g. ["icx/busybox:1"]), got {images!r}'
        )
    for i, image in enumerate(images):
        if not isinstance(image, str):
            raise InvalidConfig(f"backend.images[{i}] must be a string, got {image!r}")
        check_image(f"backend.images[{i}]", image, InvalidConfig)
    return tuple(images)


def load_backend(path: Path) -> BackendConfig:
    """The `[backend]` of a center's config file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfig(f"cannot read {path}: {exc}") from exc
    return parse_backend(data)
