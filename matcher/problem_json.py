"""The replayable problem file (JSON) and the solution's JSON form.

The file speaks the coordinator's units (hours, GB, yuan per tonne, PUE as a ratio); the
model speaks integers (seconds, MB, fen per tonne, PUE in thousandths). This module is
the one place that converts, with these rounding rules:

- `hours` -> seconds, rounded up (a job is never under-estimated);
- `deadline_hours`, `waited_hours` -> seconds, rounded down (a deadline is never extended);
- `data_gb` -> MB (1 GB = 1000 MB), rounded up;
- `pue` -> thousandths, `grid_g_per_kwh` -> g, `bandwidth_gbps` -> Mbit/s: to nearest;
- `carbon_price_yuan_per_tonne`, `incentive.yuan_per_device_hour` -> fen, to nearest.

Every error names the field (`jobs[3].devices`), the value and what was expected. The
format is documented in docs/matcher-problem.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.ids import SHOWN_CHARS, shown
from matcher.errors import InvalidProblem
from matcher.model import (
    DEFAULT_AGING_S,
    DEFAULT_BANDWIDTH_MBPS,
    JobRequest,
    Policy,
    PoolSlot,
    Problem,
    Solution,
)

_POOL_FIELDS = {
    "id",
    "center",
    "region",
    "accelerator",
    "free",
    "memory_gb",
    "tflops",
    "power_w",
    "pue",
    "grid_g_per_kwh",
    "price_minor_per_device_hour",
}
_OPTIONAL_POOL_FIELDS = {"images"}
_JOB_FIELDS = {
    "id",
    "tenant",
    "accelerator",
    "devices",
    "hours",
    "regions",
    "max_price_minor",
    "priority",
    "data_region",
    "data_gb",
    "deadline_hours",
    "waited_hours",
    "min_memory_gb",
    "min_tflops",
    "image",
}
_TOP_FIELDS = {
    "weights",
    "carbon_price_yuan_per_tonne",
    "aging_hours",
    "quotas",
    "incentive",
    "regions",
    "latency_ms",
    "bandwidth_gbps",
    "default_bandwidth_gbps",
    "pools",
    "jobs",
}


def _bad(path: str, expected: str, got: object) -> InvalidProblem:
    text = json.dumps(got, default=str)
    if len(text) > SHOWN_CHARS:
        text = f"{text[:SHOWN_CHARS]}… ({len(text)} chars)"
    return InvalidProblem(f"{path}: expected {expected}, got {text}")


def _obj(value: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "an object", value)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidProblem(
            f"{path}: unknown field {shown(unknown[0])} "
            f"(expected one of {', '.join(sorted(allowed))})"
        )
    return value


def _int(value: object, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, f"an integer >= {minimum}", value)
    if isinstance(value, float) and not value.is_integer():
        raise _bad(path, f"an integer >= {minimum}", value)
    if value < minimum:
        raise _bad(path, f"an integer >= {minimum}", value)
    return int(value)


def _num(value: object, path: str, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, f"a number {'>' if strict else '>='} {minimum:g}", value)
    if value < minimum or (strict and value == minimum):
        raise _bad(path, f"a number {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


def _str(value: object, path: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise _bad(path, "a non-empty string" if not empty_ok else "a string", value)
    return value


def _scaled_up(value: float, scale: int) -> int:
    return math.ceil(round(value * scale, 6))


def _scaled_down(value: float, scale: int) -> int:
    return math.floor(round(value * scale, 6))


def _pool(raw: object, path: str) -> PoolSlot:
    obj = _obj(raw, path, _POOL_FIELDS | _OPTIONAL_POOL_FIELDS)
    for name in sorted(_POOL_FIELDS):
        if name not in obj:
            raise InvalidProblem(f"{path}.{name}: missing")
    pue = _num(obj["pue"], f"{path}.pue", 1.0)
    return PoolSlot(
        pool_id=_str(obj["id"], f"{path}.id"),
        center_id=_str(obj["center"], f"{path}.center"),
        region=_str(obj["region"], f"{path}.region"),
        accelerator=_str(obj["accelerator"], f"{path}.accelerator"),
        free=_int(obj["free"], f"{path}.free"),
        memory_gb=_int(obj["memory_gb"], f"{path}.memory_gb"),
        tflops=_int(obj["tflops"], f"{path}.tflops"),
        power_w=_int(obj["power_w"], f"{path}.power_w"),
        pue_milli=round(pue * 1000),
        grid_g_per_kwh=round(_num(obj["grid_g_per_kwh"], f"{path}.grid_g_per_kwh")),
        price_minor_per_device_hour=_int(
            obj["price_minor_per_device_hour"], f"{path}.price_minor_per_device_hour"
        ),
        images=_images(obj.get("images", []), f"{path}.images"),
    )


def _images(raw: object, path: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise _bad(path, "a list of image references", raw)
    return tuple(_str(image, f"{path}[{i}]") for i, image in enumerate(raw))


def _optional(obj: Mapping[str, Any], name: str) -> object:
    return obj.get(name)


def _job(raw: object, path: str) -> JobRequest:
    obj = _obj(raw, path, _JOB_FIELDS)
    for name in ("id", "accelerator", "devices", "hours"):
        if name not in obj:
            raise InvalidProblem(f"{path}.{name}: missing")
    regions_raw = obj.get("regions")
    regions: tuple[str, ...] | None = None
    if regions_raw is not None:
        if not isinstance(regions_raw, list):
            raise _bad(f"{path}.regions", "a list of region names or null", regions_raw)
        regions = tuple(_str(r, f"{path}.regions[{i}]") for i, r in enumerate(regions_raw))
    max_price = obj.get("max_price_minor")
    deadline = obj.get("deadline_hours")
    data_gb = _num(obj.get("data_gb", 0), f"{path}.data_gb")
    return JobRequest(
        job_id=_str(obj["id"], f"{path}.id"),
        tenant=_str(obj.get("tenant", ""), f"{path}.tenant", empty_ok=True),
        accelerator=_str(obj["accelerator"], f"{path}.accelerator"),
        devices=_int(obj["devices"], f"{path}.devices", 1),
        seconds=_scaled_up(_num(obj["hours"], f"{path}.hours", 0.0, strict=True), 3600),
        regions=regions,
        max_price_minor=None if max_price is None else _int(max_price, f"{path}.max_price_minor"),
        priority=_int(obj.get("priority", 0), f"{path}.priority"),
        data_region=_str(obj.get("data_region", ""), f"{path}.data_region", empty_ok=True),
        data_mb=_scaled_up(data_gb, 1000),
        deadline_s=None
        if deadline is None
        else _scaled_down(_num(deadline, f"{path}.deadline_hours"), 3600),
        waited_s=_scaled_down(_num(obj.get("waited_hours", 0), f"{path}.waited_hours"), 3600),
        min_memory_gb=_int(obj.get("min_memory_gb", 0), f"{path}.min_memory_gb"),
        min_tflops=_int(obj.get("min_tflops", 0), f"{path}.min_tflops"),
        image=_str(obj.get("image", ""), f"{path}.image", empty_ok=True),
    )


def _matrix(raw: object, path: str, known: set[str], scale: float) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise _bad(path, "an object of objects (region -> region -> number)", raw)
    out: dict[str, dict[str, float]] = {}
    for a, row in raw.items():
        if a not in known:
            raise InvalidProblem(f"{path}.{a}: unknown region {shown(a)} (known: {_names(known)})")
        if not isinstance(row, dict):
            raise _bad(f"{path}.{a}", "an object (region -> number)", row)
        out[a] = {}
        for b, v in row.items():
            if b not in known:
                raise InvalidProblem(
                    f"{path}.{a}.{b}: unknown region {shown(b)} (known: {_names(known)})"
                )
            out[a][b] = _num(v, f"{path}.{a}.{b}", 0.0, strict=scale != 1.0) * scale
    return out


def _names(known: set[str]) -> str:
    names = sorted(known)
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def load_problem(data: object) -> Problem:
    """A `Problem` from the parsed JSON document. Raises InvalidProblem naming the field."""
    top = _obj(data, "problem", _TOP_FIELDS)
    for name in ("pools", "jobs"):
        if not isinstance(top.get(name), list):
            raise _bad(name, "a list", top.get(name))
    pools = [_pool(p, f"pools[{i}]") for i, p in enumerate(top["pools"])]
    jobs = [_job(j, f"jobs[{i}]") for i, j in enumerate(top["jobs"])]
    _unique([p.pool_id for p in pools], "pools")
    _unique([j.job_id for j in jobs], "jobs")

    weights = _obj(top.get("weights", {}), "weights", {"cost", "carbon", "latency"})
    quotas_raw = top.get("quotas", {})
    if not isinstance(quotas_raw, dict):
        raise _bad("quotas", "an object (region -> devices)", quotas_raw)
    incentive = _obj(top.get("incentive", {}), "incentive", {"yuan_per_device_hour", "regions"})
    incentive_regions = incentive.get("regions", [])
    if not isinstance(incentive_regions, list):
        raise _bad("incentive.regions", "a list of region names", incentive_regions)
    policy = Policy(
        w_cost=_int(weights.get("cost", 1), "weights.cost"),
        w_carbon=_int(weights.get("carbon", 0), "weights.carbon"),
        w_latency=_int(weights.get("latency", 0), "weights.latency"),
        carbon_price_minor_per_tonne=round(
            _num(top.get("carbon_price_yuan_per_tonne", 100), "carbon_price_yuan_per_tonne") * 100
        ),
        aging_s=_scaled_down(
            _num(top.get("aging_hours", DEFAULT_AGING_S / 3600), "aging_hours", 0.0, strict=True),
            3600,
        )
        or 1,
        quota_devices={_str(r, "quotas"): _int(q, f"quotas.{r}") for r, q in quotas_raw.items()},
        incentive_minor_per_device_hour=round(
            _num(incentive.get("yuan_per_device_hour", 0), "incentive.yuan_per_device_hour") * 100
        ),
        incentive_regions=tuple(
            _str(r, f"incentive.regions[{i}]") for i, r in enumerate(incentive_regions)
        ),
    )

    if "regions" in top:
        declared = top["regions"]
        if not isinstance(declared, list):
            raise _bad("regions", "a list of region names", declared)
        known = {_str(r, f"regions[{i}]") for i, r in enumerate(declared)}
        for i, p in enumerate(pools):
            if p.region not in known:
                raise InvalidProblem(
                    f"pools[{i}].region: unknown region {shown(p.region)} (known: {_names(known)})"
                )
    else:
        known = {p.region for p in pools} | {j.data_region for j in jobs if j.data_region}
        known |= set(policy.quota_devices) | set(policy.incentive_regions)
        for j in jobs:
            known |= set(j.regions or ())
    latency = _matrix(top.get("latency_ms", {}), "latency_ms", known, 1.0)
    bandwidth = _matrix(top.get("bandwidth_gbps", {}), "bandwidth_gbps", known, 1000.0)
    default_gbps = _num(
        top.get("default_bandwidth_gbps", DEFAULT_BANDWIDTH_MBPS / 1000),
        "default_bandwidth_gbps",
        0.0,
        strict=True,
    )
    return Problem(
        pools=tuple(pools),
        jobs=tuple(jobs),
        policy=policy,
        latency_ms=latency,
        bandwidth_mbps={
            a: {b: max(1, round(v)) for b, v in row.items()} for a, row in bandwidth.items()
        },
        default_bandwidth_mbps=max(1, round(default_gbps * 1000)),
    )


def _unique(ids: Sequence[str], path: str) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise InvalidProblem(f"{path}[{i}].id: duplicate id {shown(x)}")
        seen.add(x)


def load_problem_file(path: str | Path) -> Problem:
    """Read and parse a problem file. Raises InvalidProblem (unreadable, not JSON, bad field)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidProblem(f"cannot read problem file {str(path)!r}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidProblem(
            f"problem file {str(path)!r} is not JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from exc
    return load_problem(data)


def dump_problem(problem: Problem) -> dict[str, Any]:
    """The JSON document for `problem`; `load_problem(dump_problem(p))` equals `p`."""
    policy = problem.policy
    regions = {p.region for p in problem.pools} | set(policy.quota_devices)
    regions |= set(policy.incentive_regions)
    for j in problem.jobs:
        regions |= set(j.regions or ()) | ({j.data_region} if j.data_region else set())
    for table in (problem.latency_ms, problem.bandwidth_mbps):
        for a, row in table.items():
            regions |= {a} | set(row)
    doc: dict[str, Any] = {
        "regions": sorted(regions),
        "weights": {"cost": policy.w_cost, "carbon": policy.w_carbon, "latency": policy.w_latency},
        "carbon_price_yuan_per_tonne": policy.carbon_price_minor_per_tonne / 100,
        "aging_hours": policy.aging_s / 3600,
        "quotas": dict(policy.quota_devices),
        "incentive": {
            "yuan_per_device_hour": policy.incentive_minor_per_device_hour / 100,
            "regions": list(policy.incentive_regions),
        },
        "latency_ms": {a: dict(row) for a, row in problem.latency_ms.items()},
        "bandwidth_gbps": {
            a: {b: v / 1000 for b, v in row.items()} for a, row in problem.bandwidth_mbps.items()
        },
        "default_bandwidth_gbps": problem.default_bandwidth_mbps / 1000,
        "pools": [
            {
                "id": p.pool_id,
                "center": p.center_id,
                "region": p.region,
                "accelerator": p.accelerator,
                "free": p.free,
                "memory_gb": p.memory_gb,
                "tflops": p.tflops,
                "power_w": p.power_w,
                "pue": p.pue_milli / 1000,
                "grid_g_per_kwh": p.grid_g_per_kwh,
                "price_minor_per_device_hour": p.price_minor_per_device_hour,
                # Only where set, so that files without containers read as before.
                **({"images": list(p.images)} if p.images else {}),
            }
            for p in problem.pools
        ],
        "jobs": [
            {
                "id": j.job_id,
                "tenant": j.tenant,
                "accelerator": j.accelerator,
                "devices": j.devices,
                "hours": j.seconds / 3600,
                "regions": None if j.regions is None else list(j.regions),
                "max_price_minor": j.max_price_minor,
                "priority": j.priority,
                "data_region": j.data_region,
                "data_gb": j.data_mb / 1000,
                "deadline_hours": None if j.deadline_s is None else j.deadline_s / 3600,
                "waited_hours": j.waited_s / 3600,
                "min_memory_gb": j.min_memory_gb,
                "min_tflops": j.min_tflops,
                **({"image": j.image} if j.image else {}),
            }
            for j in problem.jobs
        ],
    }
    return doc


def solution_to_json(solution: Solution) -> dict[str, Any]:
    """The solution as a JSON-ready document (see docs/matcher-problem.md)."""
    return {
        "assignments": [
            {
                "job": a.job_id,
                "pool": a.pool_id,
                "charge_minor": a.charge_minor,
                "energy_wh": a.energy_wh,
                "carbon_g": a.carbon_g,
                "transfer_ms": a.transfer_ms,
                "cost_milli_minor": a.cost_milli_minor,
                "runner_up": a.runner_up,
                "explanation": a.explanation,
            }
            for a in solution.assignments
        ],
        "unplaced": [{"job": u.job_id, "reason": u.reason} for u in solution.unplaced],
        "objective": solution.objective,
        "bound": solution.bound,
        "gap": solution.gap,
        "cost_milli_minor": solution.cost_milli_minor,
        "cost_bound_milli_minor": solution.cost_bound_milli_minor,
        "optimal": solution.optimal,
        "solver": solution.solver,
        "seconds": solution.seconds,
    }
