"""Places in the reference scenario: hubs, latency nodes, and where each center sits.

The two CSVs name places differently. `centers_cn.csv` gives each center a *hub* of the
East-Data-West-Computing plan (JJJ, YRD, GBA, CY, IM, GZ, GS, NX, or "none"), while
`hub_latency_ms.csv` has one node per national computing *cluster* (ZJK, YRD, WUH, SG,
TF, CQ, HLGE, GA, QY, ZW) plus three demand metros (BJ, SH, SZ). Two names collide:
YRD is both a hub (the Yangtze River Delta) and a node (its Qingpu demo-zone cluster),
and the node WUH is Wuhu (Anhui), not Wuhan.

So a center carries two places:
- its *region* (`CenterDescriptor.region`, what jobs' `allowed_regions` name): its hub
  code, or, for a center in no hub, its city as `centers_cn.csv` spells it without the
  district ("Wuhan", "Xi'an"); a city label is never a hub code or a latency node;
- its *latency node* (CENTER_NODE): the node it sits at or, for the four centers at
  none, the nearest node by great-circle distance. This is what the matcher's region
  is when a problem carries the latency matrix.
HUB_NODES gives the nodes of each hub, to turn a residency rule over hubs into nodes.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping

from scenario._files import DATA

__all__ = ["CENTER_NODE", "HUB_NODES", "latency_ms", "region_label"]

# hub -> its latency nodes: the hub's clusters and the demand metro inside it.
HUB_NODES: dict[str, tuple[str, ...]] = {
    "JJJ": ("ZJK", "BJ"),
    "YRD": ("YRD", "SH", "WUH"),
    "GBA": ("SG", "SZ"),
    "CY": ("TF", "CQ"),
    "IM": ("HLGE",),
    "GZ": ("GA",),
    "GS": ("QY",),
    "NX": ("ZW",),
}

# center_id -> latency node.
CENTER_NODE: dict[str, str] = {
    "CN01": "SZ",  # Shenzhen (GBA): the Shenzhen metro node
    "CN02": "WUH",  # Wuhan (no hub): at no node; nearest is Wuhu, 375 km
    "CN03": "WUH",  # Wuhan (no hub): at no node; nearest is Wuhu, 375 km
    "CN04": "WUH",  # Nanjing (YRD): at no node; nearest is Wuhu, 90 km
    "CN05": "QY",  # Xi'an (no hub): at no node; nearest is Qingyang, 200 km
    "CN06": "TF",  # Chengdu (CY): the Tianfu cluster
    "CN07": "BJ",  # Beijing (JJJ): the Beijing metro node
    "CN08": "SH",  # Shanghai Lingang (YRD): the Shanghai metro node
    "CN09": "WUH",  # Wuhu (YRD): the Wuhu cluster
    "CN10": "ZJK",  # Zhangjiakou (JJJ)
    "CN11": "SG",  # Shaoguan (GBA)
    "CN12": "CQ",  # Chongqing (CY)
    "CN13": "HLGE",  # Hohhot, Horinger (IM)
    "CN14": "GA",  # Gui'an (GZ)
    "CN15": "QY",  # Qingyang (GS)
    "CN16": "ZW",  # Zhongwei (NX)
    "CN17": "YRD",  # Shanghai Qingpu (YRD): the demo-zone cluster
}


def region_label(hub: str, city: str) -> str:
    """A center's region from its `centers_cn.csv` hub and city: the hub code, or for
    hub "none" the city without a district in parentheses ("Wuhan", "Xi'an")."""
    if hub != "none":
        return hub
    return city.split(" (")[0]


def latency_ms() -> dict[str, dict[str, float]]:
    """Round-trip times between latency nodes, `latency_ms()[a][b]` in ms, from
    `hub_latency_ms.csv` (a square matrix, the same nodes across and down)."""
    with (DATA / "hub_latency_ms.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    across = rows[0][1:]
    down = [row[0] for row in rows[1:]]
    if down != across:
        raise ValueError(
            f"hub_latency_ms.csv: rows must name the columns' nodes {across}, got {down}"
        )
    return {row[0]: {b: float(v) for b, v in zip(across, row[1:], strict=True)} for row in rows[1:]}


def region_latency_ms(centers: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Round-trip times between the regions that `centers` (center id -> region) fall
    in, for a broker whose regions are hubs: each region is represented by the latency
    node of its lowest-numbered center (for JJJ, CN07's BJ)."""
    nodes = latency_ms()
    where: dict[str, str] = {}
    for center_id in sorted(centers):
        where.setdefault(centers[center_id], CENTER_NODE[center_id])
    return {a: {b: nodes[na][nb] for b, nb in where.items() if b != a} for a, na in where.items()}
