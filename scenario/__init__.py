"""The reference scenario, the one home of its data (`data/`, sources in
`data/README.md`) and of its mapping to domain values: the 17 centers of
`data/centers_cn.csv` as center descriptors, the RTT matrix of `data/hub_latency_ms.csv`
between latency nodes, and a workload shaped like the Philly GPU trace.

Mapping choices (the CSV is descriptive; the exchange needs exact values):
- region: the center's East-Data-West-Computing hub (GBA, YRD, JJJ, CY, IM, GZ, GS, NX);
  the three centers in no hub get their city, "Wuhan" (two) and "Xi'an", a label that
  is neither a hub code nor a latency node (the latency node WUH is Wuhu, in the YRD
  hub). Where each center sits in the latency matrix is CENTER_NODE; see `regions`.
- accelerator: the CSV's text mapped to a catalogue model; a "mixed" center gets two
  pools that split its devices (see ACCELERATOR_POOLS).
- devices: divided by `scale` (at least `min_devices` per pool), so a laptop-sized demo
  still queues; prices, PUE and grid factors are kept as they are.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass

from core import accelerators
from core.types import CenterDescriptor, CenterId, JobSpec, Pool, PoolId
from scenario._files import DATA
from scenario.regions import (
    CENTER_NODE,
    HUB_NODES,
    latency_ms,
    region_label,
    region_latency_ms,
)

__all__ = [
    "ACCELERATOR_POOLS",
    "CENTER_NODE",
    "DATA",
    "DEMAND_MIX",
    "EASTERN_REGIONS",
    "HUB_NODES",
    "DemoJob",
    "TraceJob",
    "demo_workload",
    "latency_ms",
    "load_centers",
    "load_trace",
    "region_label",
    "region_latency_ms",
]

# CSV accelerator text -> [(catalogue model, share of the center's devices)]
ACCELERATOR_POOLS: dict[str, list[tuple[str, float]]] = {
    "Huawei Ascend 910": [("ascend-910", 1.0)],
    "Huawei Ascend 910B est": [("ascend-910b", 1.0)],
    "Huawei Ascend 910C (CloudMatrix384)": [("ascend-910c", 1.0)],
    "NVIDIA H800 est": [("nvidia-h800", 1.0)],
    "NVIDIA A800 est": [("nvidia-a800", 1.0)],
    "domestic (Cambricon MLU est)": [("cambricon-mlu370", 1.0)],
    "domestic inference card (Enflame)": [("enflame-s60", 1.0)],
    "domestic 10k-card liquid-cooled pool + mixed": [("ascend-910b", 1.0)],
    "mixed GPU/NPU (NVIDIA+domestic) est": [("nvidia-a800", 0.5), ("ascend-910b", 0.5)],
    "mixed NVIDIA+domestic est": [("nvidia-h800", 0.5), ("ascend-910b", 0.5)],
}


def load_centers(*, scale: int = 1, min_devices: int = 1) -> list[CenterDescriptor]:
    """The 17 reference centers; devices divided by `scale`, at least `min_devices`."""
    centers = []
    with (DATA / "centers_cn.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            pools = []
            for model_id, share in ACCELERATOR_POOLS[row["accelerator"]]:
                model = accelerators.CATALOGUE[model_id]
                devices = max(min_devices, math.floor(int(row["devices"]) * share / scale))
                pools.append(
                    Pool(
                        pool_id=PoolId(model_id),
                        accelerator=model_id,
                        devices_total=devices,
                        devices_free=devices,
                        memory_gb=model.memory_gb,
                        fp16_tflops=model.fp16_tflops,
                        power_w=model.power_w,
                        price_minor_per_device_hour=round(
                            float(row["price_yuan_per_device_hour"]) * 100
                        ),
                    )
                )
            centers.append(
                CenterDescriptor(
                    center_id=CenterId(row["center_id"]),
                    name=row["name_en"],
                    region=region_label(row["hub"], row["city"]),
                    latitude=float(row["lat"]),
                    longitude=float(row["lon"]),
                    pue_milli=round(float(row["pue"]) * 1000),
                    grid_g_co2_per_kwh=round(float(row["grid_kgco2_per_kwh"]) * 1000),
                    pools=tuple(pools),
                )
            )
    return centers


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceJob:
    submit_s: float
    gpus: int
    duration_s: int


def load_trace(limit: int | None = None, offset: int = 0) -> list[TraceJob]:
    """Jobs of the Philly trace in submit order (`submit_s` from the trace's start)."""
    out: list[TraceJob] = []
    with (DATA / "philly_jobs.csv").open(encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i < offset:
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append(
                TraceJob(
                    submit_s=float(row["submit_time_s"]),
                    gpus=int(row["gpus"]),
                    duration_s=int(row["duration_s"]),
                )
            )
    return out


# The demo's accelerator demand (the trace has one GPU model; the federation has many).
DEMAND_MIX = (
    ("any", 0.30),
    ("ascend-910", 0.22),
    ("ascend-910b", 0.18),
    ("nvidia-h800", 0.10),
    ("nvidia-a800", 0.10),
    ("ascend-910c", 0.05),
    ("cambricon-mlu370", 0.05),
)
EASTERN_REGIONS = (("YRD",), ("JJJ",), ("GBA",), ("YRD", "Wuhan"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoJob:
    at_s: float  # when to submit, from the start of the workload
    run_s: float  # how long the command really runs
    spec: JobSpec


def demo_workload(
    n: int,
    *,
    span_s: float = 20.0,
    min_run_s: float = 1.0,
    max_run_s: float = 5.0,
    max_devices: int = 16,
    seed: int = 7,
    offset: int = 1260,
) -> list[DemoJob]:
    """n jobs shaped like the Philly trace (by default a window from job 1260 whose share
    of multi-device jobs, 9%, is the whole month's): its sizes (capped at max_devices), its bursts
    (arrivals squeezed linearly into span_s) and its durations (log-scaled into
    [min_run_s, max_run_s] of real running; the spec keeps the trace's real hours, so
    charges and device-hours are the trace's). A seeded share asks for specific
    accelerators, keeps data in eastern regions, or sets a budget."""
    if n <= 0:
        return []
    rng = random.Random(seed)
    trace = load_trace(limit=n, offset=offset)
    t0, t1 = trace[0].submit_s, trace[-1].submit_s
    longest = math.log1p(max(t.duration_s for t in trace))
    models = [m for m, _ in DEMAND_MIX]
    weights = [w for _, w in DEMAND_MIX]
    jobs = []
    for i, t in enumerate(trace):
        run_s = min_run_s + (max_run_s - min_run_s) * math.log1p(t.duration_s) / longest
        run_s = round(run_s, 1)
        accelerator = rng.choices(models, weights)[0]
        regions: tuple[str, ...] = ()
        if rng.random() < 0.2:
            regions = rng.choice(EASTERN_REGIONS)
        devices = min(t.gpus, max_devices)
        budget = None
        if rng.random() < 0.1:  # a tight budget: ~6 yuan per device-hour
            budget = max(100, 600 * devices * t.duration_s // 3600)
        spec = JobSpec(
            name=f"philly-{offset + i}",
            accelerator=accelerator,
            devices=devices,
            estimated_s=max(1, t.duration_s),
            allowed_regions=regions,
            max_price_minor=budget,
            priority=rng.choice((0, 0, 0, 1, 5)),
            command=(
                "sh",
                "-c",
                'echo "$ICX_JOB_ID on $ICX_CENTER_ID devices $ICX_DEVICES"; sleep "$1"; echo done',
                "job",
                f"{run_s}",
            ),
        )
        at = 0.0 if t1 == t0 else (t.submit_s - t0) / (t1 - t0) * span_s
        jobs.append(DemoJob(at_s=at, run_s=run_s, spec=spec))
    return jobs
