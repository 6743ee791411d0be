"""The reference scenario (the `scenario` package) as matcher values: a PoolSlot for every
pool of `scenario.load_centers()` (a "mixed" center is two pools, as in the demo), placed
at its center's latency node, and the RTT matrix between those nodes.

The matcher's region here is the latency node (scenario.CENTER_NODE), not the center's
hub, so that transfer times come from the matrix; residency rules over hubs become rules
over nodes through scenario.HUB_NODES.
"""

from __future__ import annotations

from matcher import JobRequest, Policy, PoolSlot, Problem
from scenario import CENTER_NODE, HUB_NODES, latency_ms, load_centers

__all__ = ["CENTER_NODE", "HUB_NODES", "latency_ms", "load_centers", "pools", "problem"]


def pools(free_fraction: float = 1.0) -> tuple[PoolSlot, ...]:
    """Every pool of the 17 centers, `free_fraction` of its devices free (rounded down)."""
    out = []
    for center in load_centers():
        for pool in center.pools:
            out.append(
                PoolSlot(
                    pool_id=f"{center.center_id}/{pool.pool_id}",
                    center_id=center.center_id,
                    region=CENTER_NODE[center.center_id],
                    accelerator=pool.accelerator,
                    free=int(pool.devices_total * free_fraction),
                    memory_gb=pool.memory_gb,
                    tflops=pool.fp16_tflops,
                    power_w=pool.power_w,
                    pue_milli=center.pue_milli,
                    grid_g_per_kwh=center.grid_g_co2_per_kwh,
                    price_minor_per_device_hour=pool.price_minor_per_device_hour,
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
