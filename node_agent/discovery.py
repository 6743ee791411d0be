"""Device discovery through NVIDIA's management library (NVML, the `pynvml` binding).

A center's config says where its devices come from: `[center] discover = "config"` (the
default: the `[[pools]]` as written) or `"nvml"`. With "nvml" the agent reads the
machine's NVIDIA GPUs at start (product name, UUID, total memory, enforced power limit,
the processes using each) and advertises them instead:

- A GPU's product name maps to a catalogue model id (`NVML_MODELS`); a name that is not
  there, a model no `[[pools]]` entry names, and a GPU NVML cannot read (lost, in need of
  a reset) are reported and not offered.
- The pool of model X holds the GPUs of model X, in NVML's order: the pool's device i
  (the DeviceBook's index) is GPU `CenterDevices.gpus[pool][i]`, whose NVML index and
  UUID are what a job's ICX_DEVICES / CUDA_VISIBLE_DEVICES must name.
- What NVML cannot know stays in the config: the pool's id, price and FP16 TFLOPS. Each
  model has one `[[pools]]` entry. A pool's memory is its smallest GPU's, in GiB (NVML's
  total rounded to the nearest GiB: an H200's 143771 MiB is 140); its power the largest
  enforced limit, in W (what any of them may draw, which metering bills; the config's
  where NVML reports none).

Outside use. A GPU used by a process that is not icx's is not offered. NVML names the
processes on a GPU by pid; a process is icx's (`OwnRuns`) when it, one of its ancestors,
its process group or its session is one of the pids the agent names (its own pid, the
leader of each process-backend run, which starts a session of its own; a container's
init; a Slurm job's step daemon), or when its cgroup path contains a fragment the agent
names (a container's full id, `job_<slurm id>`). The agent must see the host's pid
namespace: NVML reports host pids, and a pid absent from this /proc counts as outside.
A GPU NVML can no longer read is counted with the outside ones: it is not offered either.

With "nvml" where NVML is not there (no libnvidia-ml, no driver), the agent starts from
the config and says so once (`center_devices`).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pynvml  # type: ignore[import-untyped]
from pynvml import (
    NVMLError,
    NVMLError_NotSupported,
    NVMLLibraryMismatchError,
)

from core.accelerators import is_known
from core.errors import InvalidConfig
from core.types import CenterDescriptor, Pool, PoolId
from node_agent.errors import DiscoveryUnavailable

log = logging.getLogger("icx.agent.discovery")

SOURCES = ("config", "nvml")

# NVML's product names (nvmlDeviceGetName, as nvidia-smi shows them) -> catalogue ids.
# A name that is not here is reported and not offered: add it once its model is in the
# federation's catalogue (core/accelerators.py).
NVML_MODELS: dict[str, str] = {
    "NVIDIA A100-SXM4-80GB": "nvidia-a100",
    "NVIDIA A100-SXM4-40GB": "nvidia-a100",
    "NVIDIA A100 80GB PCIe": "nvidia-a100",
    "NVIDIA A100-PCIE-40GB": "nvidia-a100",
    "NVIDIA A800-SXM4-80GB": "nvidia-a800",
    "NVIDIA A800-SXM4-40GB": "nvidia-a800",
    "NVIDIA A800 80GB PCIe": "nvidia-a800",
    "NVIDIA H100 80GB HBM3": "nvidia-h100",
    "NVIDIA H100 PCIe": "nvidia-h100",
    "NVIDIA H100 NVL": "nvidia-h100",
    "NVIDIA H200": "nvidia-h200",
    "NVIDIA H200 NVL": "nvidia-h200",
    "NVIDIA H800": "nvidia-h800",
    "NVIDIA H800 PCIe": "nvidia-h800",
}

_GIB = 1 << 30
_MAX_ANCESTORS = 256  # a /proc walk that long has met a loop or a race: stop


class Nvml(Protocol):
    """The part of pynvml that discovery calls: the module itself (the default, looked
    up when called), or a stand-in. Each raises NVMLError on failure."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]: ...
    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Any]: ...
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]: ...
    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Any) -> list[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    """One GPU as NVML reported it. `model_id` is None when its name is not in
    NVML_MODELS; `power_w` None when NVML reports no power limit for it."""

    index: int
    uuid: str
    name: str
    model_id: str | None
    memory_gb: int
    power_w: int | None
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuFault:
    """A GPU that NVML could not read; `reason` says what failed."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    driver_version: str
    gpus: tuple[Gpu, ...]
    faults: tuple[GpuFault, ...] = ()

    def unknown(self) -> tuple[Gpu, ...]:
        """The GPUs whose product name maps to no catalogue model."""
        return tuple(g for g in self.gpus if g.model_id is None)


def discover(nvml: Nvml | None = None) -> Discovery:
    """Read every GPU on this machine once. Raises DiscoveryUnavailable (saying why) when
    NVML cannot start or count its devices; a GPU that fails on its own is a GpuFault."""
    nvml = _library(nvml)
    _start(nvml)
    try:
        return _read(nvml)
    finally:
        _stop(nvml)


def _library(nvml: Nvml | None) -> Nvml:
    return pynvml if nvml is None else nvml


def _start(nvml: Nvml) -> None:
    try:
        nvml.nvmlInit()
    except NVMLError as exc:
        raise DiscoveryUnavailable(f"NVIDIA's management library cannot start: {exc}") from exc


def _stop(nvml: Nvml) -> None:
    try:
        nvml.nvmlShutdown()
    except NVMLError as exc:  # nothing to undo: say so and go on
        log.warning("NVML shutdown failed: %s", exc)


def _read(nvml: Nvml) -> Discovery:
    try:
        count = nvml.nvmlDeviceGetCount()
    except NVMLError as exc:
        raise DiscoveryUnavailable(f"NVML cannot count the GPUs: {exc}") from exc
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
    except NVMLError:
        driver = "unknown"
    gpus: list[Gpu] = []
    faults: list[GpuFault] = []
    for index in range(count):
        try:
            gpus.append(_read_gpu(nvml, index))
        except _Failed as failed:
            faults.append(GpuFault(index=index, reason=str(failed)))
    return Discovery(driver_version=driver, gpus=tuple(gpus), faults=tuple(faults))


class _Failed(Exception):
    """One NVML call on one GPU failed: "<NVML's reason> (<function>)"."""


def _call(fn: Callable[[Any], Any], handle: Any) -> Any:
    try:
        return fn(handle)
    except NVMLError as exc:
        raise _Failed(f"{exc} ({fn.__name__})") from exc


def _optional(fn: Callable[[Any], Any], handle: Any) -> Any:
    """`fn(handle)`, or None where this GPU or driver does not support it."""
    try:
        return _call(fn, handle)
    except _Failed as failed:
        if isinstance(failed.__cause__, NVMLError_NotSupported):
            return None
        raise


def _read_gpu(nvml: Nvml, index: int) -> Gpu:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except NVMLError as exc:
        raise _Failed(f"{exc} (nvmlDeviceGetHandleByIndex)") from exc
    name = _call(nvml.nvmlDeviceGetName, handle)
    memory = _call(nvml.nvmlDeviceGetMemoryInfo, handle)
    power_mw = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    if power_mw is None:
        power_mw = _optional(nvml.nvmlDeviceGetPowerManagementLimit, handle)
    model = NVML_MODELS.get(name)
    return Gpu(
        index=index,
        uuid=_call(nvml.nvmlDeviceGetUUID, handle),
        name=name,
        model_id=model if model is not None and is_known(model) else None,
        memory_gb=round(memory.total / _GIB),
        power_w=None if power_mw is None else round(power_mw / 1000),
        pids=_pids(nvml, handle),
    )


def _pids(nvml: Nvml, handle: Any) -> tuple[int, ...]:
    """The pids of the compute and graphics processes on the GPU. pynvml's unversioned
    calls need the driver's _v3 entry points, which older drivers (470, for one) lack:
    those are asked through _v2."""
    pids: set[int] = set()
    lists = (
        (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetComputeRunningProcesses_v2),
        (
            nvml.nvmlDeviceGetGraphicsRunningProcesses,
            nvml.nvmlDeviceGetGraphicsRunningProcesses_v2,
        ),
    )
    for current, older in lists:
        try:
            processes = _optional(current, handle)
        except NVMLLibraryMismatchError:
            processes = _optional(older, handle)
        pids.update(p.pid for p in processes or ())
    return tuple(sorted(pids))


# --- the config switch --------------------------------------------------------------


def parse_source(data: Mapping[str, Any]) -> str:
    """`[center] discover` of a parsed config: one of SOURCES, "config" when absent."""
    center = data.get("center")
    value = center.get("discover", "config") if isinstance(center, dict) else "config"
    if value not in SOURCES:
        raise InvalidConfig(f"center.discover must be one of {', '.join(SOURCES)}, got {value!r}")
    return str(value)


def load_source(path: Path) -> str:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfig(f"cannot read {path}: {exc}") from exc
    return parse_source(data)


# --- pools from a discovery -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CenterDevices:
    """The center as discovered: `center` with its pools sized from the GPUs found;
    `gpus[pool][i]` is the pool's device i; `notes`, one line each, what was found and
    is not offered; `outside[pool]` the pool's devices (indices into `gpus[pool]`) in use
    outside icx or unreadable."""

    center: CenterDescriptor
    gpus: dict[PoolId, tuple[Gpu, ...]]
    notes: tuple[str, ...] = ()
    outside: dict[PoolId, frozenset[int]] = field(default_factory=dict)

    def gpu_indices(self, pool_id: PoolId, indices: Iterable[int]) -> tuple[int, ...]:
        """NVML's indices of the pool's devices `indices` (what CUDA_VISIBLE_DEVICES
        names, with CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML's own order)."""
        gpus = self.gpus[pool_id]
        return tuple(gpus[i].index for i in indices)

    def gpu_uuids(self, pool_id: PoolId, indices: Iterable[int]) -> tuple[str, ...]:
        """The UUIDs of the pool's devices `indices`: CUDA_VISIBLE_DEVICES takes them too,
        and they name the same GPUs whatever order CUDA enumerates them in."""
        gpus = self.gpus[pool_id]
        return tuple(gpus[i].uuid for i in indices)


def center_pools(found: Discovery, config: CenterDescriptor, own: OwnRuns) -> CenterDevices:
    """The config's center with each pool holding the GPUs of its model: pool ids, prices
    and TFLOPS from the config; device count, memory and power from `found`. Raises
    InvalidConfig when two pools name the same model (the GPUs could not be shared out)."""
    by_model: dict[str, Pool] = {}
    for pool in config.pools:
        other = by_model.setdefault(pool.accelerator, pool)
        if other is not pool:
            raise InvalidConfig(
                f"pools {other.pool_id!r} and {pool.pool_id!r} both offer {pool.accelerator}: "
                'with center.discover = "nvml" each model has one pool'
            )
    notes = [f"GPU {f.index}: cannot be read: {f.reason}: not offered" for f in found.faults]
    for gpu in found.unknown():
        notes.append(
            f"GPU {gpu.index}: {gpu.name!r} is not a catalogue model this agent knows: not offered"
        )
    for gpu in found.gpus:
        if gpu.model_id is not None and gpu.model_id not in by_model:
            notes.append(
                f"GPU {gpu.index}: {gpu.name} ({gpu.model_id}) has no [[pools]] entry "
                "in the config: not offered"
            )
    pools: list[Pool] = []
    gpus: dict[PoolId, tuple[Gpu, ...]] = {}
    for pool in config.pools:
        mine = tuple(g for g in found.gpus if g.model_id == pool.accelerator)
        gpus[pool.pool_id] = mine
        if not mine:
            notes.append(f"pool {pool.pool_id}: no {pool.accelerator} GPU found: offers none")
            pools.append(replace(pool, devices_total=0, devices_free=0))
            continue
        powers = [g.power_w for g in mine if g.power_w is not None]
        pools.append(
            replace(
                pool,
                devices_total=len(mine),
                devices_free=len(mine),
                memory_gb=min(g.memory_gb for g in mine),
                power_w=max(powers) if powers else pool.power_w,
            )
        )
    devices = CenterDevices(
        center=replace(config, pools=tuple(pools)), gpus=gpus, notes=tuple(notes)
    )
    return replace(devices, outside=outside_use(found, devices, own))


def outside_use(
    found: Discovery, devices: CenterDevices, own: OwnRuns
) -> dict[PoolId, frozenset[int]]:
    """Each pool's devices that must not be offered now: used by a process `own` does
    not claim, or missing from `found` (matched by UUID: lost, reset, unreadable)."""
    now = {g.uuid: g for g in found.gpus}
    out: dict[PoolId, frozenset[int]] = {}
    for pool_id, gpus in devices.gpus.items():
        busy = set()
        for i, gpu in enumerate(gpus):
            seen = now.get(gpu.uuid)
            if seen is None or not all(own.owns(pid) for pid in seen.pids):
                busy.add(i)
        out[pool_id] = frozenset(busy)
    return out


# --- whose processes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnRuns:
    """The processes icx started: those under one of `pids` (the process itself, an
    ancestor, its process group or its session) or in a cgroup whose path contains one
    of `cgroups`. `proc` is the procfs to read (the host's)."""

    pids: frozenset[int] = frozenset()
    cgroups: frozenset[str] = frozenset()
    proc: Path = Path("/proc")

    def owns(self, pid: int) -> bool:
        """Whether `pid` is icx's. False for a pid this procfs does not show."""
        if self.cgroups and self._in_cgroup(pid):
            return True
        current, steps = pid, 0
        while current > 0 and steps < _MAX_ANCESTORS:
            if current in self.pids:
                return True
            stat = self._stat(current)
            if stat is None:
                return False
            parent, group, session = stat
            if group in self.pids or session in self.pids:
                return True
            current, steps = parent, steps + 1
        return False

    def _stat(self, pid: int) -> tuple[int, int, int] | None:
        """(parent, process group, session) from /proc/PID/stat, None if gone."""
        try:
            text = (self.proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and ")".
        fields = text.rpartition(")")[2].split()
        try:
            return int(fields[1]), int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            return None

    def _in_cgroup(self, pid: int) -> bool:
        try:
            text = (self.proc / str(pid) / "cgroup").read_text(encoding="utf-8")
        except OSError:
            return False
        paths = [line.split(":", 2)[-1] for line in text.splitlines()]
        return any(mark in path for path in paths for mark in self.cgroups)


# --- the agent's side -----------------------------------------------------------------


class NvmlWatch:
    """NVML kept open for the agent's life: each housekeeping tick, `outside(own)` reads
    the GPUs again and says, per pool, which devices are not to be offered. Logs what
    changes, not every tick. Its NVML calls block for a few milliseconds: an agent on
    asyncio calls it through `asyncio.to_thread`."""

    def __init__(self, devices: CenterDevices, nvml: Nvml | None = None) -> None:
        self.devices = devices
        self._nvml = nvml = _library(nvml)
        self._last = devices.outside
        self._unreadable = ""
        self._faults: frozenset[int] = frozenset()
        _start(nvml)

    def outside(self, own: OwnRuns) -> dict[PoolId, frozenset[int]]:
        """`{pool_id: devices not to offer}` for every pool (empty sets included). When
        NVML cannot read at all, every device is withheld until it can again."""
        try:
            found = _read(self._nvml)
        except DiscoveryUnavailable as exc:
            if str(exc) != self._unreadable:
                log.error("%s: no device is offered until NVML answers again", exc)
            self._unreadable = str(exc)
            now = {p: frozenset(range(len(g))) for p, g in self.devices.gpus.items()}
        else:
            if self._unreadable:
                log.info("NVML answers again")
                self._unreadable = ""
            for fault in found.faults:
                if fault.index not in self._faults:
                    log.warning("GPU %d: cannot be read: %s", fault.index, fault.reason)
            self._faults = frozenset(f.index for f in found.faults)
            now = outside_use(found, self.devices, own)
        for pool_id, busy in now.items():
            if busy != self._last.get(pool_id, frozenset()):
                log.info(
                    "pool %s: devices %s not offered (in use outside icx or unreadable)",
                    pool_id,
                    ",".join(map(str, sorted(busy))) or "none",
                )
        self._last = now
        return now

    def close(self) -> None:
        _stop(self._nvml)


def center_devices(
    config_path: Path,
    config: CenterDescriptor,
    own: OwnRuns,
    nvml: Nvml | None = None,
) -> tuple[CenterDescriptor, NvmlWatch | None]:
    """The center the agent advertises, and the watch to ask each tick (None: the
    config's devices, nothing to watch). Logs once which source it used, and each GPU
    found but not offered."""
    if load_source(config_path) == "config":
        return config, None  # the default: nothing to say
    try:
        found = discover(nvml)
        devices = center_pools(found, config, own)
        watch = NvmlWatch(devices, nvml)
    except DiscoveryUnavailable as exc:
        log.warning(
            'center.discover = "nvml" but %s: devices from the [[pools]] of %s',
            exc,
            config_path,
        )
        return config, None
    for pool in devices.center.pools:
        gpus = devices.gpus[pool.pool_id]
        log.info(
            "devices from NVML (driver %s): pool %s: %d x %s (GPUs %s), %d GB, %d W",
            found.driver_version,
            pool.pool_id,
            pool.devices_total,
            pool.accelerator,
            ",".join(str(g.index) for g in gpus) or "none",
            pool.memory_gb,
            pool.power_w,
        )
    for note in devices.notes:
        log.warning("%s", note)
    return devices.center, watch


def report(found: Discovery, devices: CenterDevices | None = None) -> dict[str, Any]:
    """What `icx agent discover --json` prints: the GPUs found and, given a config's
    pools, the pools they make (`in_use`: pool devices used by any process, since the
    command is not the agent and owns none)."""
    out: dict[str, Any] = {
        "source": "nvml",
        "driver_version": found.driver_version,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "model_id": g.model_id,
                "memory_gb": g.memory_gb,
                "power_w": g.power_w,
                "pids": list(g.pids),
            }
            for g in found.gpus
        ],
        "faults": [{"index": f.index, "reason": f.reason} for f in found.faults],
    }
    if devices is not None:
        out["pools"] = [
            {
                "pool_id": p.pool_id,
                "accelerator": p.accelerator,
                "devices_total": p.devices_total,
                "gpus": [g.index for g in devices.gpus[p.pool_id]],
                "memory_gb": p.memory_gb,
                "power_w": p.power_w,
                "in_use": sorted(devices.outside[p.pool_id]),
            }
            for p in devices.center.pools
        ]
        out["notes"] = list(devices.notes)
    return out
