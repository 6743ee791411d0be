"""The reference scenario as matcher values: one pool per center of centers_cn.csv, the
RTT matrix of hub_latency_ms.csv.

Both CSVs are copied unchanged from the project's shared scenario folder
(`scenario/centers_cn.csv`, `scenario/hub_latency_ms.csv`; see its README and
SOURCES.md for their sources).

The two files name places differently: centers_cn.csv gives each center a *hub* of the
East-Data-West-Computing plan (JJJ, YRD, GBA, CY, IM, GZ, GS, NX, or "none"), while the
latency matrix has one node per *cluster* (ZJK, YRD, WUH, SG, TF, CQ, HLGE, GA, QY, ZW)
plus three demand metros (BJ, SH, SZ). Note that WUH is Wuhu (Anhui), not Wuhan. The
matcher's region is the matrix node; CENTER_REGION maps each center to the node it sits
at, or, for the three centers that sit at none (Wuhan x2, Nanjing, Xi'an), the nearest
node by great-circle distance (Wuhan -> WUH 375 km, Nanjing -> WUH 90 km,
Xi'an -> QY 200 km). HUB_REGIONS gives the nodes of each hub, for residency rules.
"""

from __future__ import annotations

import csv
from pathlib import Path

from core.accelerators import CATALOGUE
from matcher import JobRequest, Policy, PoolSlot, Problem

DATA = Path(__file__).parent / "data"

CENTER_REGION = {
    "CN01": "SZ",  # Shenzhen (GBA): the Shenzhen metro node
    "CN02": "WUH",  # Wuhan (no hub): nearest node, Wuhu
    "CN03": "WUH",  # Wuhan (no hub): nearest node, Wuhu
    "CN04": "WUH",  # Nanjing (YRD): nearest node, Wuhu
    "CN05": "QY",  # Xi'an (no hub): nearest node, Qingyang
    "CN06": "TF",  # Chengdu (CY): Tianfu cluster
    "CN07": "BJ",  # Beijing (JJJ): the Beijing metro node
    "CN08": "SH",  # Shanghai Lingang (YRD): the Shanghai metro node
    "CN09": "WUH",  # Wuhu (YRD)
    "CN10": "ZJK",  # Zhangjiakou (JJJ)
    "CN11": "SG",  # Shaoguan (GBA)
    "CN12": "CQ",  # Chongqing (CY)
    "CN13": "HLGE",  # Hohhot, Horinger (IM)
    "CN14": "GA",  # Gui'an (GZ)
    "CN15": "QY",  # Qingyang (GS)
    "CN16": "ZW",  # Zhongwei (NX)
    "CN17": "YRD",  # Qingpu demo zone (YRD)
}

HUB_REGIONS = {
    "JJJ": ("ZJK", "BJ"),
    "YRD": ("YRD", "SH", "WUH"),
    "GBA": ("SG", "SZ"),
    "CY": ("TF", "CQ"),
    "IM": ("HLGE",),
    "GZ": ("GA",),
    "GS": ("QY",),
    "NX": ("ZW",),
}

# centers_cn.csv describes accelerators in words; the catalogue has ids. The three
# "mixed" fleets are modelled as Ascend 910B (their domestic share), an assumption.
ACCELERATOR = {
    "Huawei Ascend 910": "ascend-910",
    "Huawei Ascend 910B est": "ascend-910b",
    "Huawei Ascend 910C (CloudMatrix384)": "ascend-910c",
    "NVIDIA H800 est": "nvidia-h800",
    "NVIDIA A800 est": "nvidia-a800",
    "domestic (Cambricon MLU est)": "cambricon-mlu370",
    "domestic inference card (Enflame)": "enflame-s60",
    "mixed GPU/NPU (NVIDIA+domestic) est": "ascend-910b",
    "domestic 10k-card liquid-cooled pool + mixed": "ascend-910b",
    "mixed NVIDIA+domestic est": "ascend-910b",
}


def centers() -> list[dict[str, str]]:
    with (DATA / "centers_cn.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def latency_ms() -> dict[str, dict[str, float]]:
    with (DATA / "hub_latency_ms.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    return {row[0]: {b: float(v) for b, v in zip(names, row[1:], strict=True)} for row in rows[1:]}


def pools(free_fraction: float = 1.0) -> tuple[PoolSlot, ...]:
    """One pool per center, `free_fraction` of its devices free."""
    out = []
    for row in centers():
        model = CATALOGUE[ACCELERATOR[row["accelerator"]]]
        out.append(
            PoolSlot(
                pool_id=f"{row['center_id']}/{model.model_id}",
                center_id=row["center_id"],
                region=CENTER_REGION[row["center_id"]],
                accelerator=model.model_id,
                free=int(int(row["devices"]) * free_fraction),
                memory_gb=model.memory_gb,
                tflops=model.fp16_tflops,
                power_w=model.power_w,
                pue_milli=round(float(row["pue"]) * 1000),
                grid_g_per_kwh=round(float(row["grid_kgco2_per_kwh"]) * 1000),
                price_fen_per_device_hour=round(float(row["price_yuan_per_device_hour"]) * 100),
            )
        )
    return tuple(out)


def problem(
    jobs: tuple[JobRequest, ...], *, policy: Policy | None = None, free_fraction: float = 1.0
) -> Problem:
    return Problem(
        pools=pools(free_fraction),
        jobs=jobs,
        policy=policy or Policy(),
        latency_ms=latency_ms(),
    )
