"""The backends side by side in one run (issue "Running jobs at real centers"):

1. launch-to-running latency of a trivial job: from the agent's `launch()` call to the
   job's own first instruction (it prints `date +%s.%N`), and to that line reaching the
   agent (what the broker can hear first), median and p90;
2. jobs per second: trivial jobs (`true`) launched and waited for, 4 in flight (a 4-GPU
   node: each job holds one device);
3. beside them, Slurm's own `sbatch`-to-running latency on the same daemons: `sbatch`
   of the same one-line job with one GPU, to its first instruction, no agent involved.

Every backend runs on this machine: the process backend; the Slurm backend against a
one-node Slurm started for the run (cli/slurm_local.py: munged, slurmctld, slurmd on
private ports; needs root and Debian's `slurmctld slurmd slurm-client munge`); the Docker
backend against a dockerd started for the run on a private socket, with the tests' busybox
image (tests/docker_engine.py; Debian's `docker.io` and `busybox-static`).
Backends alternate sample by sample so that a slower minute of the shared machine does
not fall on one backend only.

    .venv/bin/python -m bench.backend_bench [--quick] [--samples N] [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cli.debian import SetupError
from cli.docker_local import start_engine
from cli.slurm_local import LocalSlurm
from core.errors import Unavailable
from core.types import CenterDescriptor, CenterId, Pool, PoolId
from node_agent.backends import Backend, LaunchRequest, ProcessBackend, make_backend
from node_agent.backends._docker import DockerBackend
from node_agent.config import BackendConfig

IN_FLIGHT = 4
POLL_S = 0.1
FIRST_LINE = "date +%s.%N"
# busybox's date has no %N: the time a file is touched, from its mtime in ns.
FIRST_LINE_BUSYBOX = 'touch /tmp/t; set -- $(stat -c "%Y %y" /tmp/t); echo "$1.${3#*.}"'


def center() -> CenterDescriptor:
    pool = Pool(
        pool_id=PoolId("p"),
        accelerator="ascend-910",
        devices_total=4,
        devices_free=4,
        memory_gb=32,
        fp16_tflops=100,
        power_w=300,
        price_minor_per_device_hour=500,
    )
    return CenterDescriptor(
        center_id=CenterId("BENCH"),
        name="Backend bench",
        region="TF",
        pue_milli=1200,
        grid_g_co2_per_kwh=500,
        pools=(pool,),
    )


@dataclass(slots=True)
class Entry:
    """One backend under test: how to make it; samples gathered."""

    name: str
    make: Callable[[Path], Backend]
    image: str = ""  # what a container backend runs the jobs in
    first_line: str = FIRST_LINE
    started_s: list[float] = field(default_factory=list)
    seen_s: list[float] = field(default_factory=list)
    jobs_per_s: list[float] = field(default_factory=list)


class FirstLine:
    """An OutputSink that notes when the first line arrived, and what it said."""

    def __init__(self) -> None:
        self.data = b""
        self.at = 0.0
        self.arrived = asyncio.Event()

    async def __call__(self, stream: str, data: bytes) -> None:
        if stream == "stdout" and not self.arrived.is_set():
            self.data += data
            if b"\n" in self.data:
                self.at = time.time()
                self.arrived.set()


def request(
    root: Path, n: int, command: tuple[str, ...], device: int, image: str = ""
) -> LaunchRequest:
    return LaunchRequest(
        claim_id=f"c-{n}",
        job_id=f"j-{n}",
        command=command,
        env={"ICX_POOL_ID": "p"},
        device_indices=(device,),
        workdir=root / "jobs" / f"j-{n}",
        image=image,
    )


async def one_latency(entry: Entry, root: Path, n: int) -> None:
    backend = entry.make(root / entry.name)
    sink = FirstLine()
    t0 = time.time()
    command = ("sh", "-c", entry.first_line)
    run = await backend.launch(request(root, n, command, 0, entry.image), sink)
    await sink.arrived.wait()
    code = await run.wait()
    assert code == 0, f"{entry.name}: job {n} exit {code}"
    entry.started_s.append(float(sink.data.split()[0]) - t0)
    entry.seen_s.append(sink.at - t0)


async def throughput(entry: Entry, root: Path, jobs: int, base: int) -> None:
    backend = entry.make(root / entry.name)
    free = asyncio.Queue[int]()
    for device in range(IN_FLIGHT):
        free.put_nowait(device)

    async def one(n: int) -> None:
        device = await free.get()
        try:
            run = await backend.launch(request(root, n, ("true",), device, entry.image), _discard)
            assert await run.wait() == 0
        finally:
            free.put_nowait(device)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(base + i) for i in range(jobs)))
    entry.jobs_per_s.append(jobs / (time.perf_counter() - t0))


async def _discard(stream: str, data: bytes) -> None:
    pass


async def sbatch_latency(slurm: LocalSlurm, root: Path, n: int) -> float:
    """Slurm alone: sbatch of the same job (one GPU) to its first instruction."""
    out = root / "sbatch" / f"{n}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    proc = await asyncio.create_subprocess_exec(
        "sbatch", "--parsable", "--quiet", f"--partition={slurm.partition}",
        f"--gres=gpu:{slurm.gres_type}:1", f"--output={out}", "--wrap", FIRST_LINE,
        env=slurm.env | {"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await proc.wait() == 0, "sbatch failed"
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = out.read_text()
            if text.endswith("\n"):
                return float(text.split()[0]) - t0
        await asyncio.sleep(0.01)


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(values) * 1000:7.0f} {p90 * 1000:7.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (5 samples, 12 jobs)")
    parser.add_argument("--samples", type=int, default=20, help="latency samples per backend")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per backend")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.jobs, args.rounds = 5, 12, 1
    root = Path(tempfile.mkdtemp(prefix="icx-backend-bench-"))
    slurm = LocalSlurm(root=root / "slurm")
    started = time.monotonic()
    try:
        slurm.start()
    except Unavailable as exc:
        print(f"bench: cannot start a local Slurm: {exc}", file=sys.stderr)
        return 1
    setup_s = time.monotonic() - started
    started = time.monotonic()
    try:
        engine = start_engine(root / "docker")
    except SetupError as exc:
        slurm.stop()
        print(f"bench: cannot start a local Docker engine: {exc}", file=sys.stderr)
        return 1
    docker_s = time.monotonic() - started
    docker_backends: dict[Path, DockerBackend] = {}

    def docker(folder: Path) -> Backend:
        """One backend per folder, as one agent keeps one."""
        if folder not in docker_backends:
            docker_backends[folder] = DockerBackend(
                socket=engine.socket, images=(engine.image,), workdir=folder
            )
        return docker_backends[folder]

    try:
        options = {
            "partition": slurm.partition,
            "slurm_conf": str(slurm.conf),
            "poll_s": POLL_S,
            "gres": {"p": f"gpu:{slurm.gres_type}"},
        }
        entries = [
            Entry("process", lambda folder: ProcessBackend()),
            Entry(
                "slurm",
                lambda folder: make_backend(BackendConfig("slurm", options), folder, center()),
            ),
            Entry("docker", docker, image=engine.image, first_line=FIRST_LINE_BUSYBOX),
        ]
        sbatch: list[float] = []

        async def run_all() -> None:
            for n in range(args.samples):
                for entry in entries:
                    await one_latency(entry, root, 1000 * n + len(entry.name))
                sbatch.append(await sbatch_latency(slurm, root, n))
            for r in range(args.rounds):
                for entry in entries:
                    await throughput(entry, root, args.jobs, 100_000 * (r + 1))

        asyncio.run(run_all())
    finally:
        for backend in docker_backends.values():
            backend.close()
        engine.stop()
        slurm.stop()
    print(
        f"{len(entries)} backends and Slurm's own sbatch on this machine; Slurm up in "
        f"{setup_s:.1f} s, dockerd in {docker_s:.1f} s; "
        f"{args.samples} latency samples each, throughput {args.rounds} x {args.jobs} jobs, "
        f"{IN_FLIGHT} in flight; the Slurm backend polls every {POLL_S} s"
    )
    print(f"{'':22} {'to running ms':>15} {'to agent ms':>15} {'jobs/s':>8}")
    print(f"{'':22} {'median     p90':>15} {'median     p90':>15} {'median':>8}")
    for entry in entries:
        rate = f"{statistics.median(entry.jobs_per_s):8.1f}" if entry.jobs_per_s else "-"
        print(f"{entry.name:22} {ms(entry.started_s):>15} {ms(entry.seen_s):>15} {rate}")
    print(f"{'sbatch (Slurm alone)':22} {ms(sbatch):>15} {'-':>15} {'-':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
