"""Job specs from a TOML file or from `icx submit` flags.

name = "finetune"
accelerator = "ascend-910b"     # or "any"
devices = 8
hours = 2.5
regions = ["TF", "CQ"]          # optional: where the job may run
max_price_yuan = 200.0          # optional budget for the whole job
deadline = "2026-12-01T00:00:00Z"   # optional
priority = 5
data_region = "YRD"
data_gb = 10
command = ["python3", "train.py"]
image = "icx/pytorch:2.5"       # optional: run in this container image (a center that
                                # accepts it); without it, no container
memory_mb = 16384               # optional: memory limit in MiB (containers)
cpus = 4.5                      # optional: CPU limit (containers), to 0.001
network = false                 # optional: the job needs the network (containers)
[env]
EPOCHS = "3"
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from pathlib import Path
from typing import Any

from core.errors import InvalidJobSpec
from core.types import MAX_MILLICPUS, JobSpec


def hours_to_s(hours: float, field: str = "hours") -> int:
    if not math.isfinite(hours) or hours <= 0:
        raise InvalidJobSpec(f"{field} must be a positive number, got {hours}")
    return max(1, round(hours * 3600))


def yuan_to_minor(yuan: float, field: str) -> int:
    if not math.isfinite(yuan) or yuan <= 0:
        raise InvalidJobSpec(f"{field} must be a positive number, got {yuan}")
    return round(yuan * 100)


def cpus_to_milli(cpus: float, field: str = "cpus") -> int:
    """CPUs as a decimal (1.5) to thousandths (1500); 0 means not stated."""
    if not math.isfinite(cpus) or not 0 <= cpus <= MAX_MILLICPUS / 1000:
        raise InvalidJobSpec(f"{field} must be 0..{MAX_MILLICPUS // 1000} CPUs, got {cpus:g}")
    milli = round(cpus * 1000)
    if cpus and not milli:
        raise InvalidJobSpec(f"{field} must be at least 0.001, got {cpus}")
    return milli


def parse_deadline(text: str) -> int:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidJobSpec(f"deadline must be an ISO 8601 time, got {text!r}") from None
    if when.tzinfo is None:
        raise InvalidJobSpec(f"deadline must carry a time zone (e.g. Z), got {text!r}")
    return int(when.timestamp() * 1000)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidJobSpec(f"{key} has the wrong type: {value!r}")
    return value


def spec_from_toml(data: dict[str, Any]) -> JobSpec:
    known = {
        "name", "accelerator", "devices", "hours", "regions", "max_price_yuan", "deadline",
        "priority", "data_region", "data_gb", "command", "env", "image", "memory_mb", "cpus",
        "network",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidJobSpec(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for required in ("accelerator", "devices", "hours", "command"):
        if required not in data:
            raise InvalidJobSpec(f"{required} is required")
    command = _typed(data, "command", list, None)
    if not all(isinstance(c, str) for c in command):
        raise InvalidJobSpec("command must be a list of strings")
    env = _typed(data, "env", dict, {})
    if not all(isinstance(v, str) for v in env.values()):
        raise InvalidJobSpec("env values must be strings")
    regions = _typed(data, "regions", list, [])
    budget = _typed(data, "max_price_yuan", (int, float), None)
    deadline = _typed(data, "deadline", (str, dt.datetime), None)
    if isinstance(deadline, dt.datetime):
        deadline = deadline.isoformat()
    data_gb = _typed(data, "data_gb", (int, float), 0)
    if data_gb < 0:
        raise InvalidJobSpec(f"data_gb must be >= 0, got {data_gb}")
    network = data.get("network", False)
    if not isinstance(network, bool):
        raise InvalidJobSpec(f"network must be true or false, got {network!r}")
    return JobSpec(
        name=_typed(data, "name", str, ""),
        accelerator=_typed(data, "accelerator", str, None),
        devices=_typed(data, "devices", int, None),
        estimated_s=hours_to_s(float(_typed(data, "hours", (int, float), None))),
        allowed_regions=tuple(regions),
        max_price_minor=None if budget is None else yuan_to_minor(float(budget), "max_price_yuan"),
        deadline_ms=None if deadline is None else parse_deadline(deadline),
        priority=_typed(data, "priority", int, 0),
        data_region=_typed(data, "data_region", str, ""),
        data_mb=round(float(data_gb) * 1000),
        command=tuple(command),
        env=tuple(sorted(env.items())),
        image=_typed(data, "image", str, ""),
        memory_mb=_typed(data, "memory_mb", int, 0),
        millicpus=cpus_to_milli(float(_typed(data, "cpus", (int, float), 0))),
        network=network,
    )


def load_spec(path: Path) -> JobSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidJobSpec(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidJobSpec(f"{path} is not valid TOML: {exc}") from exc
    return spec_from_toml(data)
