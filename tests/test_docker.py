"""The Docker backend against a real engine (tests/docker_engine.py: dockerd on a private
socket, the test image imported from a static busybox), beyond the contract every backend
keeps (tests/backends, where the docker entry runs launch, output, exit codes, cancel and
re-attach): the container's environment, limits and labels, a stop past the grace,
refusals that leave nothing behind, a run that ended while no agent followed it, the
configuration, and a federation whose center runs its jobs in containers, through an
agent killed with SIGKILL and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker.ledger import ledger_paths
from cli.federation import Child, LocalFederation, center_toml
from client import BrokerClient
from core.errors import InvalidArgument, InvalidConfig
from core.states import JobState
from core.types import CenterDescriptor, Job, JobSpec, LogChunk
from icx.v1 import broker_pb2_grpc
from node_agent import runs_on_disk
from node_agent.backends import LaunchRequest, make_backend
from node_agent.backends._docker import LABEL_JOB, DockerBackend
from node_agent.config import parse_backend, parse_center
from node_agent.errors import CannotReattach
from tests.conftest import (
    RESTART_BROKER,
    make_center,
    run_icx,
    wait_centers,
    wait_for,
    wait_for_async,
)
from tests.docker_engine import DockerEngine, docker_engine  # noqa: F401 (a fixture)
from tests.test_agent_restart import usage_records
from tests.test_cli import icx

T = TypeVar("T")
TENANT = "lab-d"


class Output:
    """An output sink that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.pieces: list[tuple[str, bytes]] = []

    async def __call__(self, stream: str, data: bytes) -> None:
        self.pieces.append((stream, data))

    def text(self, stream: str) -> str:
        return b"".join(d for s, d in self.pieces if s == stream).decode()


def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(body())


def backend(engine: DockerEngine, workdir: Path, **options: Any) -> DockerBackend:
    table = {"kind": "docker", "socket": engine.socket, "images": [engine.image], **options}
    made = make_backend(parse_backend({"backend": table}), workdir)
    assert isinstance(made, DockerBackend)
    return made


def request(
    engine: DockerEngine, workdir: Path, script: str, job_id: str = "j-1", **fields: Any
) -> LaunchRequest:
    return LaunchRequest(
        claim_id=f"c-{job_id}",
        job_id=job_id,
        command=fields.pop("command", ("sh", "-c", script)),
        env=fields.pop("env", {}),
        device_indices=fields.pop("device_indices", (1, 3)),
        workdir=workdir / job_id,
        image=fields.pop("image", engine.image),
        **fields,
    )


def containers_of(engine: DockerEngine, job_id: str) -> list[dict[str, Any]]:
    """The engine's containers labelled with `job_id`, running or not."""
    with contextlib.closing(engine.client()) as client:
        found = client.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
    return list(found)


def open_gate(engine: DockerEngine, container_id: str) -> None:
    """Let a job waiting for /tmp/go in its container go on. The job may see the file,
    end, and take its container down before the engine reports the `touch` itself ended:
    the engine then reports it killed (137). The caller checks that the job finished."""
    with contextlib.closing(engine.client()) as client:
        done = client.containers.get(container_id).exec_run(["touch", "/tmp/go"])
    assert done.exit_code in (0, 137), done.output


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    """The session's engine (`docker_engine`); each test leaves it without containers."""
    shared: DockerEngine = request.getfixturevalue("docker_engine")
    yield shared
    left = shared.containers()
    with contextlib.closing(shared.client()) as client:
        for container_id in left:
            client.api.remove_container(container_id, force=True)
    assert left == [], "a test left containers behind"


# ------------------------------------------------------------------ the backend


def test_a_job_runs_in_a_container_with_its_environment_output_and_exit_code(
    engine: DockerEngine, tmp_path: Path
) -> None:
    script = (
        "echo one; echo uh-oh >&2; echo two; echo still >&2; "
        'echo "devices=$ICX_DEVICES cuda=$CUDA_VISIBLE_DEVICES job=$ICX_JOB_ID a=$A"; '
        'echo "path=$PATH"; ls /sys/class/net; exit 3'
    )

    async def body() -> tuple[int, Output, list[str]]:
        b = backend(engine, tmp_path)
        try:
            out = Output()
            run_ = await b.launch(request(engine, tmp_path, script, env={"A": "x y"}), out)
            listed = await b.list_runs()
            return await run_.wait(), out, listed
        finally:
            b.close()

    code, out, listed = run(body)
    assert code == 3
    assert out.text("stdout") == (
        "one\ntwo\ndevices=1,3 cuda=1,3 job=j-1 a=x y\n"
        # The image's PATH, not the agent's; and no network but loopback.
        "path=/bin\nlo\n"
    )
    assert out.text("stderr") == "uh-oh\nstill\n"
    assert len(listed) == 1  # while it ran
    assert containers_of(engine, "j-1") == []  # removed once its end was read


def test_exit_zero_and_the_limits_and_labels_the_engine_applies(
    engine: DockerEngine, tmp_path: Path
) -> None:
    async def body() -> tuple[int, dict[str, Any]]:
        b = backend(engine, tmp_path)
        try:
            out = Output()
            job = request(engine, tmp_path, "echo ready; sleep 30", memory_mb=96, millicpus=500)
            run_ = await b.launch(job, out)
            await wait_for_async(lambda: out.pieces, 10, "the container's first output")
            with contextlib.closing(engine.client()) as client:
                seen = client.api.inspect_container(run_.run_id)
            await run_.kill()
            return await run_.wait(), seen
        finally:
            b.close()

    code, seen = run(body)
    host = seen["HostConfig"]
    assert (host["NetworkMode"], host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (
        "none", 96 * 1024 * 1024, 96 * 1024 * 1024, 500_000_000,
    )  # fmt: skip
    assert host["Init"] is True
    labels = seen["Config"]["Labels"]
    assert (labels["icx.job_id"], labels["icx.claim_id"]) == ("j-1", "c-j-1")
    assert labels["icx.owner"] == str(tmp_path.resolve())
    assert code == -signal.SIGTERM  # stopped: the job got SIGTERM within the grace

    async def zero() -> int:
        b = backend(engine, tmp_path)
        try:
            return await (await b.launch(request(engine, tmp_path, "true"), Output())).wait()
        finally:
            b.close()

    assert run(zero) == 0


def test_a_cancelled_job_is_stopped_and_its_container_removed(
    engine: DockerEngine, tmp_path: Path
) -> None:
    async def body() -> tuple[int, list[str]]:
        b = backend(engine, tmp_path, stop_grace_s=1)
        try:
            out = Output()
            # A job that ignores SIGTERM: the stop ends it with SIGKILL after the grace.
            script = "trap '' TERM; echo started; while true; do sleep 0.1; done"
            run_ = await b.launch(request(engine, tmp_path, script), out)
            await wait_for_async(lambda: out.pieces, 10, "the container's first output")
            await run_.kill()
            return await run_.wait(), await b.list_runs()
        finally:
            b.close()

    code, listed = run(body)
    assert code == -signal.SIGKILL
    assert listed == []
    assert containers_of(engine, "j-1") == []  # gone, as the engine sees it


@pytest.mark.parametrize(
    ("fields", "options", "reason"),
    [
        (
            {"image": "icx/other:1"},
            {},
            "image icx/other:1 is not accepted at this center (it runs icx/busybox:1)",
        ),
        (
            {"image": ""},
            {},
            "the job names no container image; this center runs only containers of icx/busybox:1",
        ),
        (
            {"memory_mb": 10**9},
            {},
            "the job asks for 1000000000 MiB of memory; this center allows at most {mem} MiB "
            "for one job",
        ),
        (
            {"memory_mb": 5},
            {},
            "the job asks for 5 MiB of memory; a container needs at least 6 MiB",
        ),
        (
            {"memory_mb": 512},
            {"max_memory_mb": 256},
            "the job asks for 512 MiB of memory; this center allows at most 256 MiB for one job",
        ),
        (
            {"millicpus": 10_000_000},
            {},
            "the job asks for 10000 CPUs; the engine has {cpus}",
        ),
        (
            {"network": True},
            {},
            "the job asks for the network; this center gives containers none "
            "(backend.allow_network = false)",
        ),
    ],
    ids=["image-not-accepted", "no-image", "memory-beyond-engine", "memory-below-floor",
         "memory-beyond-ceiling", "cpus", "network"],
)  # fmt: skip
def test_a_job_the_center_cannot_run_is_refused_before_anything_is_created(
    engine: DockerEngine,
    tmp_path: Path,
    fields: dict[str, Any],
    options: dict[str, Any],
    reason: str,
) -> None:
    engine.tag("icx/other:1")  # in the engine, but not accepted by the center

    async def body() -> tuple[str, int, int]:
        b = backend(engine, tmp_path, **options)
        try:
            with pytest.raises(InvalidArgument) as info:
                await b.launch(request(engine, tmp_path, "echo never", **fields), Output())
            return str(info.value), b.memory_mb, b.cpus
        finally:
            b.close()

    try:
        message, mem, cpus = run(body)
    finally:
        engine.untag("icx/other:1")
    assert message == reason.format(mem=mem, cpus=cpus)
    assert containers_of(engine, "j-1") == []


def test_an_accepted_image_the_engine_no_longer_holds_fails_the_launch(
    engine: DockerEngine, tmp_path: Path
) -> None:
    engine.tag("icx/gone:1")

    async def body() -> str:
        b = backend(engine, tmp_path, images=[engine.image, "icx/gone:1"])
        try:
            engine.untag("icx/gone:1")  # removed behind the agent's back
            with pytest.raises(InvalidArgument) as info:
                await b.launch(request(engine, tmp_path, "true", image="icx/gone:1"), Output())
            return str(info.value)
        finally:
            b.close()

    assert run(body) == "image icx/gone:1 is accepted here but not in the Docker engine"
    assert containers_of(engine, "j-1") == []


def test_a_program_the_image_lacks_is_refused_before_anything_runs(
    engine: DockerEngine, tmp_path: Path
) -> None:
    async def body() -> list[str]:
        b = backend(engine, tmp_path)
        try:
            for program, why in (
                ("python3", "not found on PATH"),
                ("/bin/nothing", "no executable file"),
                ("/tmp", "no executable file"),  # a folder
            ):
                job = request(engine, tmp_path, "", command=(program, "-c", "print(1)"))
                with pytest.raises(FileNotFoundError, match=re.escape(f"{why}: '{program}'")):
                    await b.launch(job, Output())
            return await b.list_runs()
        finally:
            b.close()

    assert run(body) == []
    assert containers_of(engine, "j-1") == []


def test_a_run_that_ended_while_the_agent_was_away_is_found_with_its_exit_code(
    engine: DockerEngine, tmp_path: Path
) -> None:
    async def body() -> tuple[int, str, int]:
        old, out = backend(engine, tmp_path), Output()
        run_ = await old.launch(request(engine, tmp_path, "echo done; exit 4"), out)
        await wait_for_async(lambda: out.pieces, 10, "the output")
        old.close()
        new = backend(engine, tmp_path)
        try:
            # Ended while nobody followed it: still in the engine, its end read now.
            assert await new.list_runs() == [run_.run_id]
            again = Output()
            ended = await (await new.reattach(run_.run_id, again)).wait()
            assert again.pieces == []  # "done" was delivered before
            # Collected: the container is gone, and so is the run.
            with pytest.raises(CannotReattach) as info:
                await new.reattach(run_.run_id, Output())
            return ended, str(info.value), len(await new.list_runs())
        finally:
            new.close()

    code, refused, left = run(body)
    assert (code, left) == (4, 0)
    assert refused.endswith("no such container in the Docker engine at " + engine.socket)


def test_list_runs_holds_only_this_agents_containers(engine: DockerEngine, tmp_path: Path) -> None:
    async def body() -> tuple[list[str], list[str], str]:
        mine = backend(engine, tmp_path / "a")
        other = backend(engine, tmp_path / "b")
        try:
            out = Output()
            run_ = await mine.launch(request(engine, tmp_path, "echo up; sleep 30"), out)
            await wait_for_async(lambda: out.pieces, 10, "the output")
            listed = (await mine.list_runs(), await other.list_runs())
            with pytest.raises(CannotReattach) as info:
                await other.reattach(run_.run_id, Output())
            await run_.kill()
            return *listed, str(info.value)
        finally:
            mine.close()
            other.close()

    mine, other, refused = run(body)
    assert (len(mine), other) == (1, [])
    assert refused.endswith("the container is not this agent's")


# ------------------------------------------------------------------ configuration


def test_an_unreachable_socket_is_a_clear_error_at_start(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path / 'nothing.sock'}"
    table = {"kind": "docker", "socket": socket, "images": ["icx/busybox:1"]}
    with pytest.raises(InvalidConfig, match=f"^{re.escape(f'backend.socket {socket}: ')}"):
        make_backend(parse_backend({"backend": table}), tmp_path)

    config = tmp_path / "center.toml"
    center = make_center("CD")
    config.write_text(center_toml(center) + _backend_toml(socket, ["icx/busybox:1"]))
    done = run_icx(
        "agent", "run", "--config", str(config), "--broker", "127.0.0.1:1", "--insecure",
        "--workdir", str(tmp_path / "work"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"icx: error: backend.socket {socket}: the Docker engine does not answer "
        "(No such file or directory)"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "backend.images must list the images the center runs jobs in"),
        ({"images": ["busybox"]}, "backend.images[0] must name a tag or a digest"),
        ({"images": ["icx/busybox:1"], "colour": 1}, "takes socket, images, allow_network"),
        ({"images": ["icx/busybox:1"], "allow_network": "yes"}, "backend.allow_network must be"),
        ({"images": ["icx/busybox:1"], "max_memory_mb": -1}, "backend.max_memory_mb must be"),
        ({"images": ["icx/busybox:1"], "socket": "/run/docker.sock"}, "backend.socket must be"),
    ],
    ids=["no-images", "no-tag", "unknown-option", "network", "memory", "socket"],
)
def test_a_bad_backend_table_is_refused_naming_the_option(
    engine: DockerEngine, tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    full = {"kind": "docker", "socket": engine.socket, **table}
    with pytest.raises(InvalidConfig, match=re.escape(message)):
        make_backend(parse_backend({"backend": full}), tmp_path)


def test_an_accepted_image_the_engine_lacks_is_logged_at_start(
    engine: DockerEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend(engine, tmp_path, images=[engine.image, "icx/absent:1"]).close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"accepted image icx/absent:1 is not in the Docker engine at {engine.socket}: jobs "
        "naming it fail until it is loaded there"
    ]


def test_the_centers_descriptor_carries_its_accepted_images() -> None:
    data = {
        "center": {"id": "CD", "name": "D", "region": "TF", "pue": 1.2, "grid_g_co2_per_kwh": 1},
        "pools": [
            {
                "id": "p", "accelerator": "ascend-910", "devices": 2, "memory_gb": 32,
                "fp16_tflops": 256, "power_w": 300, "price_minor_per_device_hour": 100,
            }
        ],
    }  # fmt: skip
    assert parse_center(data).images == ()
    images = ["icx/busybox:1", "registry.example:5000/t/train:v2"]
    assert parse_center({**data, "backend": {"kind": "docker", "images": images}}).images == (
        "icx/busybox:1",
        "registry.example:5000/t/train:v2",
    )
    with pytest.raises(InvalidConfig, match="images must be unique"):
        parse_center({**data, "backend": {"kind": "docker", "images": images + images[:1]}})


# ------------------------------------------------------------------ a federation


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A broker whose center expiry (15 s) outlasts an agent's restart by far."""
    with LocalFederation(root=tmp_path / "fed", broker_args=RESTART_BROKER) as fed:
        yield fed


@pytest.fixture
def client(federation: LocalFederation) -> Iterator[BrokerClient]:
    with federation.client(TENANT) as c:
        yield c


@pytest.fixture
def stub(federation: LocalFederation) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    with federation.channel() as channel:
        yield broker_pb2_grpc.BrokerServiceStub(channel)


def start_docker_agent(
    fed: LocalFederation, center: CenterDescriptor, engine: DockerEngine
) -> Child:
    """`icx agent run` for `center`, its jobs in containers on `engine`."""
    config = fed.root / "centers" / f"{center.center_id}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    fed.center_identity(center.center_id, center.region)
    config.write_text(
        center_toml(center, key_file=f"{center.center_id}.key")
        + _backend_toml(engine.socket, [engine.image], stop_grace_s=1)
    )
    name = f"agent-{center.center_id}"
    log_path = fed.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cli.main", "agent", "run",
            "--config", str(config),
            "--broker", fed.address,
            "--workdir", str(fed.root / "work" / center.center_id),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    child = Child(name=name, proc=proc, log_path=log_path, log_file=log_file)
    fed.agents[center.center_id] = child
    return child


def container_spec(script: str, image: str, devices: int = 1) -> JobSpec:
    return JobSpec(
        accelerator="any",
        devices=devices,
        estimated_s=60,
        command=("sh", "-c", script),
        image=image,
        memory_mb=64,
    )


def output_of(client: BrokerClient, job_id: str, stream: str = "stdout") -> str:
    items = client.watch(job_id, include_logs=True, follow=False)
    return "".join(i.data.decode() for i in items if isinstance(i, LogChunk) and i.stream == stream)


def ended(client: BrokerClient, job_id: str) -> Job:
    return wait_for(
        lambda: (j := client.get_job(job_id)).state.terminal and j, 30, f"job {job_id} to end"
    )


def test_images_decide_where_jobs_run_and_a_job_no_center_accepts_waits_saying_why(
    engine: DockerEngine,
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
) -> None:
    boxed = make_center("CD", pools={"p": ("ascend-910", 4, 500)})
    plain = make_center("CP", pools={"p": ("ascend-910", 4, 900)})  # dearer
    start_docker_agent(federation, boxed, engine)
    federation.start_agent(plain)
    wait_centers(stub, 2)
    [stored] = [c for c in client.centers() if c.center.center_id == "CD"]
    assert stored.center.images == (engine.image,)

    inside = client.submit(
        container_spec('echo "in $ICX_CENTER_ID devices $ICX_DEVICES"; echo e >&2', engine.image)
    ).job_id
    nowhere = client.submit(container_spec("echo never", "icx/absent:1")).job_id
    # No image: never the container center, though it is cheaper.
    bare = client.submit(
        JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",))
    ).job_id

    job = ended(client, inside)
    assert (job.state, job.center_id, job.exit_code) == (JobState.SUCCEEDED, "CD", 0)
    assert output_of(client, inside) == f"in CD devices {job.device_indices[0]}\n"
    assert output_of(client, inside, "stderr") == "e\n"
    job = ended(client, bare)
    assert (job.state, job.center_id) == (JobState.SUCCEEDED, "CP")
    waiting = wait_for(
        lambda: (j := client.get_job(nowhere)).explanation and j, 20, "the explanation"
    )
    assert waiting.state == JobState.QUEUED
    assert waiting.explanation == (
        "no center with a pool of any accelerator in any region accepts the image icx/absent:1"
    )
    status = icx(federation, "status", nowhere, tenant=TENANT)
    assert status.returncode == 0, status.stderr
    assert "runs in      icx/absent:1, 64 MiB" in status.stdout
    assert containers_of(engine, inside) == []


def test_an_agent_killed_while_its_container_runs_finds_it_again_and_meters_it_once(
    engine: DockerEngine,
    federation: LocalFederation,
    stub: broker_pb2_grpc.BrokerServiceStub,
    client: BrokerClient,
) -> None:
    center = make_center("CD", pools={"p": ("ascend-910", 4, 36_000)})
    agent = start_docker_agent(federation, center, engine)
    wait_centers(stub, 1)
    script = "echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo finished"
    job_id = client.submit(container_spec(script, engine.image, devices=2)).job_id
    wait_for(
        lambda: (
            client.get_job(job_id).state == JobState.RUNNING
            and "started" in output_of(client, job_id)
        ),
        30,
        "the container noted running by its agent, and its output",
    )
    [container] = containers_of(engine, job_id)

    agent.kill()  # SIGKILL: the agent dies, its container does not
    assert [c["Id"] for c in containers_of(engine, job_id)] == [container["Id"]]
    table = federation.root / "work" / "CD" / "runs.json"
    start_docker_agent(federation, center, engine)
    wait_for(
        lambda: [r["log_epoch"] for r in runs_on_disk(table)] == [1],
        20,
        "the restarted agent to re-attach",
    )
    open_gate(engine, container["Id"])

    job = ended(client, job_id)
    assert (job.state, job.attempts, job.exit_code) == (JobState.SUCCEEDED, 1, 0)
    assert output_of(client, job_id) == "started\nfinished\n"  # followed on, nothing twice
    assert containers_of(engine, job_id) == []
    outbox = federation.root / "work" / "CD" / "usage-outbox"
    wait_for(lambda: not list(outbox.glob("*.entry")), 20, "the usage to be acknowledged")
    [signed] = usage_records(client, job_id)  # metered once
    assert (signed.record.producer, signed.record.devices) == ("CD", 2)
    federation.stop()
    db, _ = ledger_paths(federation.db)
    audit = run_icx("ledger", "audit", "--db", str(db))
    assert audit.returncode == 0, audit.stderr


# ------------------------------------------------------------------ helpers


def _backend_toml(socket: str, images: list[str], **options: int) -> str:
    lines = ["", "[backend]", 'kind = "docker"', f'socket = "{socket}"']
    lines.append("images = [" + ", ".join(f'"{i}"' for i in images) + "]")
    lines += [f"{k} = {v}" for k, v in options.items()]
    return "\n".join(lines) + "\n"
