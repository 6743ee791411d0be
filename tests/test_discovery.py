"""Device discovery through NVML, against answers recorded in tests/fixtures/nvml (see its
README): a fake of NVIDIA's management library replays them, since no GPU can exist on
the test machines. Whose process uses a GPU is decided on real processes and cgroups."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from core.errors import InvalidConfig
from core.types import CenterDescriptor, PoolId
from node_agent.config import parse_center
from node_agent.discovery import (
    Gpu,
    GpuFault,
    NvmlWatch,
    OwnRuns,
    center_devices,
    center_pools,
    discover,
    parse_source,
)
from node_agent.errors import DiscoveryUnavailable
from tests.conftest import run_icx, wait_for

RECORDINGS = Path(__file__).parent / "fixtures" / "nvml"
OUTSIDE_PID = 3900001  # the recordings' process that icx did not start


class FakeNvml:
    """A fake of NVIDIA's management library (no GPU can exist here): the pynvml functions
    discovery calls, answering from a recording. Errors are pynvml's own exceptions,
    made as pynvml makes them (`pynvml.NVMLError(code)`)."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.recording = recording
        self.open = 0  # nvmlInit minus nvmlShutdown
        self.calls: list[str] = []

    @classmethod
    def load(cls, name: str) -> FakeNvml:
        return cls(json.loads((RECORDINGS / name).read_text(encoding="utf-8")))

    def _answer(self, call: str, index: int | None = None) -> Any:
        self.calls.append(call)
        table = self.recording["system"] if index is None else self.recording["devices"][index]
        if call not in table:
            raise AssertionError(f"the recording has no answer for {call} (GPU {index})")
        value = table[call]
        if isinstance(value, dict) and set(value) == {"error"}:
            raise pynvml.NVMLError(getattr(pynvml, value["error"]))
        return value

    def nvmlInit(self) -> None:
        self._answer("nvmlInit")
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self.open -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._answer("nvmlSystemGetDriverVersion"))

    def nvmlDeviceGetCount(self) -> int:
        return int(self._answer("nvmlDeviceGetCount"))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._answer("nvmlDeviceGetHandleByIndex", index)
        return index  # a handle stands for its GPU

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._answer("nvmlDeviceGetName", handle))

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._answer("nvmlDeviceGetUUID", handle))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return pynvml.c_nvmlMemory_t(**self._answer("nvmlDeviceGetMemoryInfo", handle))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return int(self._answer("nvmlDeviceGetEnforcedPowerLimit", handle))

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        return int(self._answer("nvmlDeviceGetPowerManagementLimit", handle))

    def _processes(self, call: str, handle: int) -> list[Any]:
        return [pynvml.nvmlFriendlyObject(p) for p in self._answer(call, handle)]

    # pynvml's own wrapper: an unversioned call on a driver without it (Function Not
    # Found) raises NVMLLibraryMismatchError, as the real module does.
    @pynvml.throwOnVersionMismatch
    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses", handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[Any]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v2", handle)

    @pynvml.throwOnVersionMismatch
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return self._processes("nvmlDeviceGetGraphicsRunningProcesses", handle)

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: int) -> list[Any]:
        return self._processes("nvmlDeviceGetGraphicsRunningProcesses_v2", handle)


CONFIG = """
[center]
id = "CN07"
name = "Test center"
region = "YRD"
pue = 1.3
grid_g_co2_per_kwh = 500
{discover}

[[pools]]
id = "{pool}"
accelerator = "{model}"
devices = 64
memory_gb = 1
fp16_tflops = 989
power_w = 1
price_minor_per_device_hour = 1800
"""


def config(model: str, pool: str = "gpu", discover_line: str = "") -> CenterDescriptor:
    text = CONFIG.format(model=model, pool=pool, discover=discover_line)
    return parse_center(tomllib.loads(text))


def write_config(tmp_path: Path, model: str, discover_line: str) -> Path:
    path = tmp_path / "center.toml"
    path.write_text(CONFIG.format(model=model, pool="gpu", discover=discover_line))
    return path


NOBODY = OwnRuns()


def test_h200_is_one_pool_of_its_model_with_nvml_memory_and_power() -> None:
    nvml = FakeNvml.load("h200-1.json")
    found = discover(nvml)
    assert found.driver_version == "550.54.15"
    assert found.gpus == (
        Gpu(
            index=0,
            uuid=nvml.recording["devices"][0]["nvmlDeviceGetUUID"],
            name="NVIDIA H200",
            model_id="nvidia-h200",
            memory_gb=140,  # 143771 MiB, to the nearest GiB
            power_w=700,
            pids=(),
        ),
    )
    assert found.faults == ()
    assert nvml.open == 0, "discover leaves NVML shut down"
    devices = center_pools(found, config("nvidia-h200"), NOBODY)
    (pool,) = devices.center.pools
    assert (pool.pool_id, pool.accelerator, pool.devices_total, pool.devices_free) == (
        "gpu",
        "nvidia-h200",
        1,
        1,
    )
    assert (pool.memory_gb, pool.power_w) == (140, 700)
    # What NVML cannot know stays the config's.
    assert (pool.fp16_tflops, pool.price_minor_per_device_hour) == (989, 1800)
    assert devices.outside == {"gpu": frozenset()}
    assert devices.notes == ()


def test_eight_gpus_two_used_outside_icx_are_not_offered() -> None:
    found = discover(FakeNvml.load("h800-8-outside-2.json"))
    assert [g.pids for g in found.gpus] == [(), (), (OUTSIDE_PID,), (OUTSIDE_PID,), (), (), (), ()]
    devices = center_pools(found, config("nvidia-h800"), NOBODY)
    (pool,) = devices.center.pools
    assert (pool.devices_total, pool.memory_gb, pool.power_w) == (8, 80, 700)
    assert devices.outside == {"gpu": frozenset({2, 3})}
    assert devices.gpu_indices(PoolId("gpu"), range(8)) == tuple(range(8))


def test_old_driver_answers_through_the_v2_process_queries() -> None:
    nvml = FakeNvml.load("a100-4-driver470.json")
    found = discover(nvml)
    assert [g.pids for g in found.gpus] == [(), (3900002,), (), ()]
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in nvml.calls
    devices = center_pools(found, config("nvidia-a100"), NOBODY)
    assert [
        (p.accelerator, p.devices_total, p.memory_gb, p.power_w) for p in devices.center.pools
    ] == [("nvidia-a100", 4, 80, 400)]
    assert devices.outside == {"gpu": frozenset({1})}


def test_a_model_not_in_the_catalogue_is_reported_and_not_offered() -> None:
    found = discover(FakeNvml.load("h20-2-a800-2.json"))
    assert [(g.index, g.name, g.model_id) for g in found.unknown()] == [
        (0, "NVIDIA H20", None),
        (1, "NVIDIA H20", None),
    ]
    devices = center_pools(found, config("nvidia-a800", pool="a800"), NOBODY)
    assert devices.notes == (
        "GPU 0: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
        "GPU 1: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
    )
    (pool,) = devices.center.pools
    assert pool.devices_total == 2
    # The pool's devices 0 and 1 are the machine's GPUs 2 and 3: what a job must be given.
    assert devices.gpu_indices(PoolId("a800"), (0, 1)) == (2, 3)
    assert devices.gpu_uuids(PoolId("a800"), (1,)) == (found.gpus[3].uuid,)


def test_gpus_that_fail_part_way_are_reported_and_the_rest_offered() -> None:
    found = discover(FakeNvml.load("a800-8-faults.json"))
    assert found.faults == (
        GpuFault(index=5, reason="GPU is lost (nvmlDeviceGetMemoryInfo)"),
        GpuFault(index=7, reason="GPU requires restart (nvmlDeviceGetHandleByIndex)"),
    )
    assert [g.index for g in found.gpus] == [0, 1, 2, 3, 4, 6]
    assert found.gpus[-1].power_w == 400  # no enforced limit: the management limit
    devices = center_pools(found, config("nvidia-a800"), NOBODY)
    assert devices.notes == (
        "GPU 5: cannot be read: GPU is lost (nvmlDeviceGetMemoryInfo): not offered",
        "GPU 7: cannot be read: GPU requires restart (nvmlDeviceGetHandleByIndex): not offered",
    )
    assert devices.center.pools[0].devices_total == 6
    assert devices.gpu_indices(PoolId("gpu"), (4, 5)) == (4, 6)


def test_discovered_models_without_a_pool_and_pools_without_gpus_are_reported() -> None:
    found = discover(FakeNvml.load("h200-1.json"))
    devices = center_pools(found, config("nvidia-h800", pool="h800"), NOBODY)
    assert devices.notes == (
        "GPU 0: NVIDIA H200 (nvidia-h200) has no [[pools]] entry in the config: not offered",
        "pool h800: no nvidia-h800 GPU found: offers none",
    )
    (pool,) = devices.center.pools
    assert (pool.devices_total, pool.devices_free) == (0, 0)


@pytest.mark.parametrize(
    ("recording", "reason"),
    [
        ("library-not-found.json", "NVML Shared Library Not Found"),
        ("driver-not-loaded.json", "Driver Not Loaded"),
    ],
)
def test_no_library_or_driver_is_a_clear_error(recording: str, reason: str) -> None:
    nvml = FakeNvml.load(recording)
    with pytest.raises(DiscoveryUnavailable) as caught:
        discover(nvml)
    assert str(caught.value) == f"NVIDIA's management library cannot start: {reason}"
    assert nvml.calls == ["nvmlInit"]


def test_the_installed_pynvml_either_discovers_or_says_why() -> None:
    """The real binding: on a machine without libnvidia-ml (these test machines) the
    reason is NVML's own; where the library is installed, a discovery."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        with pytest.raises(DiscoveryUnavailable, match="NVML Shared Library Not Found"):
            discover()
    else:  # a GPU machine
        try:
            found = discover()
        except DiscoveryUnavailable as exc:  # the library without a driver
            assert "cannot start" in str(exc)
        else:
            assert all(g.uuid.startswith("GPU-") for g in found.gpus)


def test_a_count_that_fails_makes_discovery_unavailable() -> None:
    nvml = FakeNvml.load("h200-1.json")
    nvml.recording["system"]["nvmlDeviceGetCount"] = {"error": "NVML_ERROR_UNKNOWN"}
    with pytest.raises(DiscoveryUnavailable, match=r"^NVML cannot count the GPUs: Unknown Error$"):
        discover(nvml)
    assert nvml.open == 0


# --- whose processes: real processes and cgroups ------------------------------------


@pytest.fixture
def own_job() -> Iterator[tuple[int, int, int]]:
    """A job as the process backend starts one (its own session), with a child, and a
    grandchild that escaped (its parent exited): (job pid, child pid, orphan pid)."""
    job = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; sh -c 'sleep 60 & echo $!'; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert job.stdout is not None
    child = int(job.stdout.readline())
    orphan = int(job.stdout.readline())
    try:
        yield job.pid, child, orphan
    finally:
        os.killpg(job.pid, 9)
        job.wait()
        job.stdout.close()


@pytest.fixture
def outsider() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_own_runs_are_the_agents_process_trees_and_sessions(
    own_job: tuple[int, int, int], outsider: int
) -> None:
    job, child, orphan = own_job
    # The orphan's parent has exited: it hangs under init (or a subreaper) now.
    wait_for(lambda: _reparented(orphan, job), 5, "the orphan to be reparented")
    own = OwnRuns(pids=frozenset({job}))
    assert own.owns(job) and own.owns(child)
    assert own.owns(orphan), "its process group and session are still the job's"
    assert not own.owns(outsider)
    assert not own.owns(OUTSIDE_PID), "a pid this /proc does not show is outside"
    # The agent's own pid covers what it started (this test process is the "agent").
    assert OwnRuns(pids=frozenset({os.getpid()})).owns(outsider)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _reparented(orphan: int, job: int) -> bool:
    """Whether the orphan's parent (a shell under `job`) has exited: its parent is now
    neither `job` nor a child of it. (It starts out as that shell, not `job`.)"""
    try:
        parent = _parent(orphan)
        return job not in (parent, _parent(parent) if parent > 1 else 0)
    except (FileNotFoundError, ProcessLookupError):
        return False  # the shell exiting while it was read


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A real cgroup of this machine's pids hierarchy (v1) or the unified one (v2)."""
    v1 = Path("/sys/fs/cgroup/pids")
    base = v1 if v1.is_dir() else Path("/sys/fs/cgroup")
    path = base / f"icx-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def test_own_runs_include_the_named_cgroups(cgroup: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        assert OwnRuns(cgroups=frozenset({cgroup.name})).owns(proc.pid)
        assert not OwnRuns(cgroups=frozenset({"icx-test-other"})).owns(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_gpus_used_by_own_runs_stay_offered_and_outsiders_not(
    own_job: tuple[int, int, int], outsider: int
) -> None:
    nvml = FakeNvml.load("h800-8-outside-2.json")
    devices = nvml.recording["devices"]
    job, child, _ = own_job
    devices[2]["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": child, "usedGpuMemory": 1}]
    devices[3]["nvmlDeviceGetComputeRunningProcesses"] = [
        {"pid": child, "usedGpuMemory": 1},
        {"pid": outsider, "usedGpuMemory": 1},
    ]
    devices[4]["nvmlDeviceGetGraphicsRunningProcesses"] = [{"pid": outsider, "usedGpuMemory": 1}]
    found = discover(nvml)
    devices_now = center_pools(found, config("nvidia-h800"), OwnRuns(pids=frozenset({job})))
    assert devices_now.outside == {"gpu": frozenset({3, 4})}


# --- the agent's side: the tick, the switch, the fallback -----------------------------


def test_the_watch_follows_outside_use_and_logs_only_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml.load("h800-8-outside-2.json")
    devices = center_pools(discover(nvml), config("nvidia-h800"), NOBODY)
    watch = NvmlWatch(devices, nvml)
    caplog.set_level(logging.INFO, logger="icx.agent.discovery")
    assert watch.outside(NOBODY) == {"gpu": frozenset({2, 3})}
    assert caplog.messages == [], "nothing changed since the discovery"
    # The outside job ends on GPU 3; GPU 6 falls off the bus.
    recorded = nvml.recording["devices"]
    recorded[3]["nvmlDeviceGetComputeRunningProcesses"] = []
    recorded[6]["nvmlDeviceGetName"] = {"error": "NVML_ERROR_GPU_IS_LOST"}
    assert watch.outside(NOBODY) == {"gpu": frozenset({2, 6})}
    assert caplog.messages == [
        "GPU 6: cannot be read: GPU is lost (nvmlDeviceGetName)",
        "pool gpu: devices 2,6 not offered (in use outside icx or unreadable)",
    ]
    caplog.clear()
    assert watch.outside(NOBODY) == {"gpu": frozenset({2, 6})}
    assert caplog.messages == []
    # NVML stops answering at all: nothing is offered until it answers again.
    nvml.recording["system"]["nvmlDeviceGetCount"] = {"error": "NVML_ERROR_DRIVER_NOT_LOADED"}
    assert watch.outside(NOBODY) == {"gpu": frozenset(range(8))}
    assert watch.outside(NOBODY) == {"gpu": frozenset(range(8))}
    assert caplog.messages == [
        "NVML cannot count the GPUs: Driver Not Loaded: no device is offered until NVML "
        "answers again",
        "pool gpu: devices 0,1,2,3,4,5,6,7 not offered (in use outside icx or unreadable)",
    ]
    caplog.clear()
    nvml.recording["system"]["nvmlDeviceGetCount"] = 8
    recorded[2]["nvmlDeviceGetComputeRunningProcesses"] = []
    recorded[6]["nvmlDeviceGetName"] = "NVIDIA H800"
    assert watch.outside(NOBODY) == {"gpu": frozenset()}
    assert caplog.messages == [
        "NVML answers again",
        "pool gpu: devices none not offered (in use outside icx or unreadable)",
    ]
    watch.close()
    assert nvml.open == 0


def test_the_switch_defaults_to_the_config_and_refuses_other_values() -> None:
    assert parse_source({"center": {}}) == "config"
    assert parse_source({"center": {"discover": "nvml"}}) == "nvml"
    with pytest.raises(
        InvalidConfig, match=r"^center.discover must be one of config, nvml, got 'gpu'$"
    ):
        parse_source({"center": {"discover": "gpu"}})
    with pytest.raises(InvalidConfig, match=r"got 1$"):
        parse_source({"center": {"discover": 1}})


def test_config_source_never_touches_nvml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="icx.agent.discovery")
    nvml = FakeNvml.load("h800-8-outside-2.json")
    path = write_config(tmp_path, "nvidia-h800", "")
    center = config("nvidia-h800")
    assert center_devices(path, center, NOBODY, nvml) == (center, None)
    assert nvml.calls == []
    assert caplog.messages == [], "the default says nothing"


@pytest.mark.parametrize("recording", ["library-not-found.json", "driver-not-loaded.json"])
def test_nvml_source_without_nvml_falls_back_to_the_config_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recording: str
) -> None:
    nvml = FakeNvml.load(recording)
    path = write_config(tmp_path, "nvidia-h800", 'discover = "nvml"')
    center = config("nvidia-h800")
    assert center_devices(path, center, NOBODY, nvml) == (center, None)
    reason = nvml.recording["system"]["nvmlInit"]["error"]
    text = str(pynvml.NVMLError(getattr(pynvml, reason)))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f'center.discover = "nvml" but NVIDIA\'s management library cannot start: '
            f"{text}: devices from the [[pools]] of {path}",
        )
    ]


def test_nvml_source_advertises_what_it_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="icx.agent.discovery")
    nvml = FakeNvml.load("h20-2-a800-2.json")
    path = write_config(tmp_path, "nvidia-a800", 'discover = "nvml"')
    center, watch = center_devices(path, config("nvidia-a800"), NOBODY, nvml)
    assert watch is not None
    assert [(p.pool_id, p.devices_total) for p in center.pools] == [("gpu", 2)]
    assert caplog.messages == [
        "devices from NVML (driver 535.86.10): pool gpu: 2 x nvidia-a800 (GPUs 2,3), 80 GB, 400 W",
        "GPU 0: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
        "GPU 1: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
    ]
    assert nvml.open == 1, "the watch keeps NVML open"
    watch.close()
    assert nvml.open == 0


def test_two_pools_of_one_model_are_refused_with_nvml() -> None:
    text = CONFIG.format(model="nvidia-h800", pool="a", discover="") + (
        '\n[[pools]]\nid = "b"\naccelerator = "nvidia-h800"\ndevices = 1\nmemory_gb = 80\n'
        "fp16_tflops = 989\npower_w = 700\nprice_minor_per_device_hour = 900\n"
    )
    center = parse_center(tomllib.loads(text))
    found = discover(FakeNvml.load("h800-8-outside-2.json"))
    with pytest.raises(
        InvalidConfig,
        match=r"^pools 'a' and 'b' both offer nvidia-h800: with center.discover = \"nvml\" "
        r"each model has one pool$",
    ):
        center_pools(found, center, NOBODY)


# --- the operator's command -----------------------------------------------------------


def test_discover_command_says_why_when_there_is_no_nvml(tmp_path: Path) -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        result = run_icx("agent", "discover", "--json")
        assert result.returncode == 3, result.stderr
        assert result.stdout == ""
        assert result.stderr == (
            "icx: error: NVIDIA's management library cannot start: NVML Shared Library Not Found\n"
        )
    else:  # a GPU machine: what it found, as JSON
        result = run_icx("agent", "discover", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["source"] == "nvml"


def test_discover_command_refuses_a_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nvidia-h800", 'discover = "gpu"')
    result = run_icx("agent", "discover", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == ("icx: error: center.discover must be one of config, nvml, got 'gpu'\n")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """The library the command loads, replaced by the fake GPU machine of a recording
    (the test sets `machine.recording`)."""
    import node_agent.discovery

    fake = FakeNvml({"system": {}, "devices": []})
    monkeypatch.setattr(node_agent.discovery, "pynvml", fake)
    yield fake


def test_discover_command_shows_gpus_and_the_pools_they_make(
    machine: FakeNvml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    machine.recording = FakeNvml.load("h20-2-a800-2.json").recording
    uuids = [d["nvmlDeviceGetUUID"] for d in machine.recording["devices"]]
    machine.recording["devices"][3]["nvmlDeviceGetComputeRunningProcesses"] = [
        {"pid": OUTSIDE_PID, "usedGpuMemory": 1}
    ]
    path = write_config(tmp_path, "nvidia-a800", 'discover = "nvml"')
    assert main(["agent", "discover", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "NVML driver 535.86.10: 4 GPUs read"
    assert lines[1].split() == ["gpu", "name", "model", "memory_gb", "power_w", "pids", "uuid"]
    assert lines[2].split() == ["0", "NVIDIA", "H20", "-", "96", "400", "-", uuids[0]]
    assert lines[5].split() == [
        "3", "NVIDIA", "A800-SXM4-80GB", "nvidia-a800", "80", "400", str(OUTSIDE_PID), uuids[3]
    ]  # fmt: skip
    assert lines[7] == f"{path}: center.discover = 'nvml'; with \"nvml\" the agent offers:"
    assert lines[9].split() == ["gpu", "nvidia-a800", "2", "2,3", "80", "400", "1"]
    assert lines[10:] == [
        "GPU 0: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
        "GPU 1: 'NVIDIA H20' is not a catalogue model this agent knows: not offered",
    ]
    assert machine.open == 0


def test_discover_command_json(machine: FakeNvml, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    machine.recording = FakeNvml.load("a800-8-faults.json").recording
    assert main(["agent", "discover", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "nvml" and out["driver_version"] == "535.86.10"
    assert [g["index"] for g in out["gpus"]] == [0, 1, 2, 3, 4, 6]
    assert out["gpus"][0] == {
        "index": 0,
        "uuid": machine.recording["devices"][0]["nvmlDeviceGetUUID"],
        "name": "NVIDIA A800-SXM4-80GB",
        "model_id": "nvidia-a800",
        "memory_gb": 80,
        "power_w": 400,
        "pids": [],
    }
    assert out["faults"] == [
        {"index": 5, "reason": "GPU is lost (nvmlDeviceGetMemoryInfo)"},
        {"index": 7, "reason": "GPU requires restart (nvmlDeviceGetHandleByIndex)"},
    ]
    assert "pools" not in out


def test_the_agent_offers_only_the_gpus_nobody_else_uses(tmp_path: Path) -> None:
    """The agent built as `icx agent run` builds it with center.discover = "nvml": its
    offer leaves out the GPUs an outside process holds, and takes them back once that
    process lets go."""
    from node_agent import Agent

    nvml = FakeNvml.load("h800-8-outside-2.json")
    path = write_config(tmp_path, "nvidia-h800", 'discover = "nvml"')
    center, watch = center_devices(path, config("nvidia-h800"), NOBODY, nvml)
    assert watch is not None

    async def offered() -> int:
        agent = Agent(center, "127.0.0.1:1", workdir=tmp_path / "work", devices=watch)
        await agent.refresh_capacity()
        (pool,) = agent.offer().pools
        return pool.devices_free

    assert asyncio.run(offered()) == 6
    for gpu in nvml.recording["devices"]:
        for call in [c for c in gpu if "RunningProcesses" in c]:
            gpu[call] = []  # the outside process ended
    assert asyncio.run(offered()) == 8


def test_a_slurm_job_number_is_never_taken_for_a_pid(
    own_job: tuple[int, int, int], tmp_path: Path
) -> None:
    """Slurm job 1 is not pid 1 (every process's ancestor): a GPU held by a process that
    has left the agent's tree stays outside icx whatever the run ids in the table."""
    from core.states import JobState
    from node_agent import Agent, RunRow
    from node_agent._runs import _Task

    job, _child, orphan = own_job
    wait_for(lambda: _reparented(orphan, job), 5, "the orphan to be reparented")
    agent = Agent(config("nvidia-h800"), "127.0.0.1:1", workdir=tmp_path / "work")
    row = RunRow(
        claim_id="c-1", job_id="j-1", pool_id="gpu", device_indices=(0,), backend="slurm",
        backend_run_id="1", tenant="t", started_at_ms=0, state=JobState.RUNNING,
    )  # fmt: skip
    agent.runs.tasks["c-1"] = _Task(claim_id="c-1", job_id="j-1", row=row)
    own = agent._own_runs()
    assert own.owns(os.getpid())
    assert not own.owns(orphan)


def test_a_job_sees_the_gpus_its_pool_devices_are(tmp_path: Path) -> None:
    """Pool device 0 of the A800 pool is GPU 2 of the machine (GPUs 0-1 are H20s): the
    job's CUDA_VISIBLE_DEVICES names that GPU by its UUID, ICX_DEVICES keeps the pool's
    numbering."""
    from core.types import JobSpec
    from node_agent import Agent
    from node_agent._messages import LaunchOrder
    from node_agent.backends import job_environment

    nvml = FakeNvml.load("h20-2-a800-2.json")
    path = write_config(tmp_path, "nvidia-a800", 'discover = "nvml"')
    center, watch = center_devices(path, config("nvidia-a800"), NOBODY, nvml)
    agent = Agent(center, "127.0.0.1:1", workdir=tmp_path / "work", devices=watch)
    spec = JobSpec(accelerator="nvidia-a800", devices=1, estimated_s=60, command=("true",))
    order = LaunchOrder(claim_id="c-1", job_id="j-1", spec=spec, tenant="t")
    env = job_environment(agent.runs._request(order, "gpu", (1,)))
    gpu3 = nvml.recording["devices"][3]["nvmlDeviceGetUUID"]
    assert (env["ICX_DEVICES"], env["CUDA_VISIBLE_DEVICES"]) == ("1", gpu3)
