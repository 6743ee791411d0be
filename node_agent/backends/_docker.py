"""The Docker backend: each job a container on the center's own Docker engine, driven
through the Engine API (the `docker` package).

    [backend]
    kind = "docker"
    socket = "unix:///run/docker.sock"   # the engine (default unix:///var/run/docker.sock)
    images = ["icx/pytorch:2.5"]         # the images jobs may name (required; advertised
                                         # in the center's descriptor)
    allow_network = false                # a job asking for the network gets the host's
    max_memory_mb = 65536                # optional ceiling for one job (MiB); also the
                                         # limit of a job that states none
    stop_grace_s = 10                    # on cancel: SIGTERM, then SIGKILL after this

At start the engine must answer on the socket (else InvalidConfig naming the socket); an
accepted image the engine does not hold is logged (it may be loaded later). A launch is
refused, before anything runs, when the job names no image or one the center does not
accept, an image the engine does not hold, a program the image lacks (FileNotFoundError,
as the process backend says it), more memory or CPUs than the engine (or the ceiling)
has, or the network where the center allows none; the job fails with that reason.

A container runs the job's command as its entrypoint (the image's own entrypoint is not
used) in the job's folder, mounted at the same path, with the job's environment
(`job_environment`: ICX_DEVICES always), network "none" (or "host" when the job asks and
the center allows; never a bridge), the spec's memory (no swap beyond it) and CPU limits,
a small init as PID 1 (so that a stop's SIGTERM reaches the job), and the job's devices
as a device request where the engine has the NVIDIA runtime (inside, CUDA_VISIBLE_DEVICES
then counts from 0; ICX_DEVICES keeps the center's indices). Labels name the agent
(`icx.owner`: its workdir), the job and the claim, so that a restarted agent finds its
containers (`list_runs`). The engine reports a job killed by signal N as exit 128 + N;
the run reports -N, as the process backend does (a job that exits 137 by itself reads as
killed by SIGKILL, as it would in a shell).

The run id is the container id. Output comes from the engine's log (the json-file driver
keeps all of it), stdout and stderr apart: a thread per run reads the log stream and an
asyncio task owned by the run hands it to the output sink in order, with back-pressure.
What was delivered is counted per stream in `<workdir>/docker/<id>.pos` (16 bytes,
rewritten in place after each delivery), so that a re-attach reads the log from the start
and skips exactly what was delivered: nothing is repeated, short of the agent dying
between a delivery and the count's write. Once `wait` has read the exit code the
container is removed and its count with it; `list_runs` then no longer holds it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import logging
import os
import socket as _socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import docker  # type: ignore[import-untyped]
from docker.errors import DockerException, ImageNotFound, NotFound  # type: ignore[import-untyped]
from docker.types import DeviceRequest  # type: ignore[import-untyped]

from core.errors import InvalidArgument, InvalidConfig
from node_agent.backends._protocol import LaunchRequest, OutputSink, Run, job_environment
from node_agent.config import BackendConfig, backend_images
from node_agent.errors import CannotReattach

log = logging.getLogger("icx.agent.docker")

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
OPTIONS = ("socket", "images", "allow_network", "max_memory_mb", "stop_grace_s")
DEFAULT_STOP_GRACE_S = 10
MIN_MEMORY_MB = 6  # the engine's own floor for a memory limit
API_TIMEOUT_S = 60
LABEL_OWNER = "icx.owner"
LABEL_JOB = "icx.job_id"
LABEL_CLAIM = "icx.claim_id"
# The engine's PATH for an image that sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What job_environment takes from the agent's own environment: a container has its
# image's (unless the job's spec sets them).
_HOST_ONLY_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
_STREAMS = {1: "stdout", 2: "stderr"}
_POSITION = struct.Struct("<QQ")  # bytes delivered: stdout, stderr
_MIB = 1024 * 1024
_PIECE_BYTES = 64 * 1024  # the most one delivery merges
_QUEUED_PIECES = 256  # log frames read ahead of the sink
_MODE_DIR = 1 << 31  # Go's os.ModeDir, in the engine's path stat
_MAX_SIGNAL = 64


class DockerBackend:
    """Jobs as containers on the engine at `socket`; see the module docstring. Checks the
    engine at construction (InvalidConfig saying what is wrong). `close()` stops
    following output and closes the engine client (the containers run on)."""

    name = "docker"

    def __init__(
        self,
        *,
        socket: str,
        images: tuple[str, ...],
        workdir: Path,
        allow_network: bool = False,
        max_memory_mb: int = 0,
        stop_grace_s: int = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.socket = socket
        self.images = images
        self.allow_network = allow_network
        self.max_memory_mb = max_memory_mb
        self.stop_grace_s = stop_grace_s
        self.owner = str(workdir.resolve())
        self.state_dir = workdir / "docker"
        self._runs: set[DockerRun] = set()
        _probe(socket)
        try:
            self.client = docker.DockerClient(
                base_url=socket, timeout=API_TIMEOUT_S, max_pool_size=256
            )
        except DockerException as exc:
            raise InvalidConfig(
                f"backend.socket {socket}: the Docker engine does not answer ({_short(exc)})"
            ) from exc
        try:
            info = self.client.info()
            self.memory_mb = int(info["MemTotal"]) // _MIB
            self.cpus = int(info["NCPU"])
            self.gpus = "nvidia" in (info.get("Runtimes") or {})
            for image in images:
                try:
                    self.client.images.get(image)
                except ImageNotFound:
                    log.warning(
                        "accepted image %s is not in the Docker engine at %s: jobs naming it "
                        "fail until it is loaded there",
                        image,
                        socket,
                    )
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._sweep_state()
        except DockerException as exc:
            self.client.close()
            raise InvalidConfig(
                f"backend.socket {socket}: the Docker engine does not answer ({_short(exc)})"
            ) from exc

    @classmethod
    def from_config(cls, config: BackendConfig, workdir: Path) -> DockerBackend:
        """The backend a `[backend] kind = "docker"` table describes."""
        options = config.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InvalidConfig(
                f"backend.kind = 'docker' takes {', '.join(OPTIONS)}; got {', '.join(unknown)}"
            )
        socket = options.get("socket", DEFAULT_SOCKET)
        if not isinstance(socket, str) or not socket.startswith(("unix://", "tcp://")):
            raise InvalidConfig(
                f"backend.socket must be an engine address like unix:///run/docker.sock, "
                f"got {socket!r}"
            )
        allow_network = options.get("allow_network", False)
        if not isinstance(allow_network, bool):
            raise InvalidConfig(
                f"backend.allow_network must be true or false, got {allow_network!r}"
            )
        numbers = {}
        for key, default in (("max_memory_mb", 0), ("stop_grace_s", DEFAULT_STOP_GRACE_S)):
            value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidConfig(f"backend.{key} must be an integer >= 0, got {value!r}")
            numbers[key] = value
        return cls(
            socket=socket,
            images=backend_images(config),
            workdir=workdir,
            allow_network=allow_network,
            max_memory_mb=numbers["max_memory_mb"],
            stop_grace_s=numbers["stop_grace_s"],
        )

    # ------------------------------------------------------------------ the protocol

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        self._check(request)
        api = self.client.api
        try:
            image = await asyncio.to_thread(api.inspect_image, request.image)
        except ImageNotFound:
            raise InvalidArgument(
                f"image {request.image} is accepted here but not in the Docker engine"
            ) from None
        request.workdir.mkdir(parents=True, exist_ok=True)
        env = job_environment(request)
        for key in _HOST_ONLY_ENV:
            if key not in request.env:
                env.pop(key, None)
        devices = [str(i) for i in request.device_indices]
        device_requests = None
        if self.gpus and devices:
            device_requests = [
                DeviceRequest(driver="nvidia", device_ids=devices, capabilities=[["gpu"]])
            ]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(devices)))
        memory_mb = request.memory_mb or self.max_memory_mb
        folder = str(request.workdir.resolve())
        host_config = api.create_host_config(
            binds={folder: {"bind": folder, "mode": "rw"}},
            network_mode="host" if request.network else "none",
            mem_limit=f"{memory_mb}m" if memory_mb else None,
            memswap_limit=f"{memory_mb}m" if memory_mb else None,
            nano_cpus=request.millicpus * 1_000_000 or None,
            device_requests=device_requests,
            init=True,
        )
        created = await asyncio.to_thread(
            api.create_container,
            request.image,
            command=list(request.command[1:]),
            entrypoint=[request.command[0]],
            environment=env,
            working_dir=folder,
            labels={
                LABEL_OWNER: self.owner,
                LABEL_JOB: request.job_id,
                LABEL_CLAIM: request.claim_id,
            },
            host_config=host_config,
            detach=True,
            stdin_open=False,
            tty=False,
        )
        container_id: str = created["Id"]
        try:
            path = env.get("PATH") or _image_path(image)
            await asyncio.to_thread(self._find_program, container_id, request, path)
            await asyncio.to_thread(api.start, container_id)
        except BaseException:
            # Nothing half-launched: the container that would not start goes.
            with contextlib.suppress(DockerException):
                await asyncio.to_thread(api.remove_container, container_id, force=True)
            raise
        log.info(
            "job %s: container %s of %s started", request.job_id, container_id[:12], request.image
        )
        return self._follow(container_id, output, (0, 0))

    async def list_runs(self) -> list[str]:
        found = await asyncio.to_thread(
            self.client.api.containers, all=True, filters={"label": f"{LABEL_OWNER}={self.owner}"}
        )
        return sorted(c["Id"] for c in found)

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        try:
            found = await asyncio.to_thread(self.client.api.inspect_container, run_id)
        except NotFound:
            raise CannotReattach(
                f"run {run_id}: no such container in the Docker engine at {self.socket}"
            ) from None
        labels = found.get("Config", {}).get("Labels") or {}
        if labels.get(LABEL_OWNER) != self.owner:
            raise CannotReattach(f"run {run_id}: the container is not this agent's")
        return self._follow(found["Id"], output, self._position(found["Id"]))

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop following every run's output, and close the engine client."""
        for run in self._runs:
            run.detach()
        self._runs.clear()
        self.client.close()

    # ------------------------------------------------------------------ internals

    def _check(self, request: LaunchRequest) -> None:
        """What refuses a job before anything is created (InvalidArgument saying why)."""
        accepted = ", ".join(self.images)
        if not request.image:
            raise InvalidArgument(
                f"the job names no container image; this center runs only containers of {accepted}"
            )
        if request.image not in self.images:
            raise InvalidArgument(
                f"image {request.image} is not accepted at this center (it runs {accepted})"
            )
        if request.network and not self.allow_network:
            raise InvalidArgument(
                "the job asks for the network; this center gives containers none "
                "(backend.allow_network = false)"
            )
        if 0 < request.memory_mb < MIN_MEMORY_MB:
            raise InvalidArgument(
                f"the job asks for {request.memory_mb} MiB of memory; a container needs at "
                f"least {MIN_MEMORY_MB} MiB"
            )
        ceiling = min(self.memory_mb, self.max_memory_mb or self.memory_mb)
        if request.memory_mb > ceiling:
            raise InvalidArgument(
                f"the job asks for {request.memory_mb} MiB of memory; this center allows at "
                f"most {ceiling} MiB for one job"
            )
        if request.millicpus > self.cpus * 1000:
            raise InvalidArgument(
                f"the job asks for {request.millicpus / 1000:g} CPUs; the engine has {self.cpus}"
            )

    def _find_program(self, container_id: str, request: LaunchRequest, path: str) -> None:
        """FileNotFoundError unless the created container holds the job's program (as
        `resolve_program` says it for the process backend): runs on a thread."""
        program = request.command[0]
        if "/" in program:
            place = program if program.startswith("/") else f"{request.workdir.resolve()}/{program}"
            if not self._executable(container_id, place):
                raise FileNotFoundError(errno.ENOENT, "no executable file", program)
            return
        for folder in path.split(":"):
            if folder and self._executable(container_id, f"{folder.rstrip('/')}/{program}"):
                return
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", program)

    def _executable(self, container_id: str, place: str) -> bool:
        """Whether `place` in the container is a file (or a link) that may run."""
        api = self.client.api
        url = api._url("/containers/{0}/archive", container_id)
        response = api.head(url, params={"path": place}, timeout=API_TIMEOUT_S)
        if response.status_code == 404:
            return False
        api._raise_for_status(response)
        stat = json.loads(base64.b64decode(response.headers["X-Docker-Container-Path-Stat"]))
        mode = int(stat.get("mode", 0))
        return not mode & _MODE_DIR and bool(mode & 0o111 or stat.get("linkTarget"))

    def _follow(self, container_id: str, output: OutputSink, skip: tuple[int, int]) -> DockerRun:
        follower = _Follower(
            self.client.api, container_id, output, self.state_dir / f"{container_id}.pos", skip
        )
        run = DockerRun(self, container_id, follower)
        self._runs = {r for r in self._runs if not r.ended} | {run}
        return run

    def _position(self, container_id: str) -> tuple[int, int]:
        try:
            data = (self.state_dir / f"{container_id}.pos").read_bytes()
        except FileNotFoundError:
            return (0, 0)
        if len(data) < _POSITION.size:
            return (0, 0)
        out, err = _POSITION.unpack(data[: _POSITION.size])
        return (out, err)

    def _sweep_state(self) -> None:
        """Counts of this agent's containers that are gone (removed while no agent
        followed them)."""
        found = self.client.api.containers(
            all=True, filters={"label": f"{LABEL_OWNER}={self.owner}"}
        )
        live = {c["Id"] for c in found}
        for path in self.state_dir.glob("*.pos"):
            if path.stem not in live:
                path.unlink(missing_ok=True)


class DockerRun:
    """One container, followed. `wait` and `kill` share one ending: the output delivered,
    the exit code read, the container and its count removed."""

    def __init__(self, backend: DockerBackend, container_id: str, follower: _Follower) -> None:
        self.backend = backend
        self.container_id = container_id
        self.follower = follower
        # Owned by the run: awaited by its end (or cancelled by `detach`).
        self._pump = asyncio.ensure_future(follower.pump())
        self._end: asyncio.Future[int] | None = None
        self._stopped = False

    @property
    def run_id(self) -> str:
        return self.container_id

    @property
    def ended(self) -> bool:
        return self._end is not None and self._end.done()

    async def wait(self) -> int:
        if self._end is None:
            self._end = asyncio.ensure_future(self._finish())
        return await asyncio.shield(self._end)

    async def kill(self) -> None:
        self._stopped = True
        if not self.ended:
            with contextlib.suppress(NotFound):
                # SIGTERM, then SIGKILL after the grace; returns once the container stopped.
                await asyncio.to_thread(
                    self.backend.client.api.stop,
                    self.container_id,
                    timeout=self.backend.stop_grace_s,
                )
        await self.wait()

    def detach(self) -> None:
        """Stop following (the agent goes; the container runs on)."""
        self._pump.cancel()

    async def _finish(self) -> int:
        api = self.backend.client.api
        await self._pump
        status = await asyncio.to_thread(api.wait, self.container_id)
        code = int(status["StatusCode"])
        state = (await asyncio.to_thread(api.inspect_container, self.container_id))["State"]
        if state.get("OOMKilled"):
            log.warning("container %s: killed for lack of memory", self.container_id[:12])
        await asyncio.to_thread(api.remove_container, self.container_id, v=True)
        with contextlib.suppress(FileNotFoundError):
            self.follower.position.unlink()
        if 128 < code <= 128 + _MAX_SIGNAL:
            return -(code - 128)  # killed by a signal, as the engine reports it
        return code


class _End:
    """The log stream ended."""


_Item = tuple[str, bytes] | BaseException | _End


class _Readable(Protocol):
    def read(self, n: int) -> bytes: ...


class _Follower:
    """One container's log (both streams, from the start, following), read on a thread
    of its own, skipping what an earlier life delivered; `pump` hands it to the sink."""

    def __init__(
        self,
        api: Any,
        container_id: str,
        sink: OutputSink,
        position: Path,
        skip: tuple[int, int],
    ) -> None:
        self.api = api
        self.container_id = container_id
        self.sink = sink
        self.position = position
        self.delivered = {"stdout": skip[0], "stderr": skip[1]}
        self._loop = asyncio.get_running_loop()
        # Frames, then the end or the exception that ended the reading.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._room = threading.Semaphore(_QUEUED_PIECES)
        self._closed = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(
            target=self._read, name=f"icx-docker-logs-{container_id[:12]}", daemon=True
        )

    async def pump(self) -> None:
        """Deliver the log to the sink, a few frames of one stream merged at a time, until
        it ends (the container stopped); raises what broke the reading."""
        self._thread.start()
        fd = os.open(self.position, os.O_WRONLY | os.O_CREAT, 0o644)  # not O_APPEND: pwrite
        try:
            pending: _Item | None = None  # taken from the queue, not yet handled
            while True:
                item = pending if pending is not None else await self._queue.get()
                pending = None
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                self._room.release()
                stream, first = item
                parts, size = [first], len(first)
                while size < _PIECE_BYTES and not self._queue.empty():
                    more = self._queue.get_nowait()
                    if not isinstance(more, tuple) or more[0] != stream:
                        pending = more
                        break
                    self._room.release()
                    parts.append(more[1])
                    size += len(more[1])
                await self.sink(stream, b"".join(parts))
                self.delivered[stream] += size
                # One small write in place: a process killed at any moment leaves the
                # old counts or the new, never half of each.
                os.pwrite(fd, _POSITION.pack(self.delivered["stdout"], self.delivered["stderr"]), 0)
        finally:
            os.close(fd)
            self._close()

    def _close(self) -> None:
        """Stop the reading thread: its stream is shut, its wait for room ended."""
        self._closed.set()
        self._room.release()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                self.api._get_raw_response_socket(response).shutdown(_socket.SHUT_RDWR)

    def _read(self) -> None:
        try:
            skip = dict(self.delivered)
            for stream, frame in self._frames():
                data = frame[min(skip[stream], len(frame)) :]
                skip[stream] -= len(frame) - len(data)
                if not data:
                    continue
                self._room.acquire()
                if self._closed.is_set():
                    return
                self._put((stream, data))
            self._put(_End())
        except BaseException as exc:
            if not self._closed.is_set():
                self._put(exc)

    def _put(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _frames(self) -> Iterator[tuple[str, bytes]]:
        """The engine's multiplexed log stream as (stream, data) frames. The SDK's own
        `logs()` drops which stream a frame came from, so the request is made here."""
        api = self.api
        url = api._url("/containers/{0}/logs", self.container_id)
        params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 0, "tail": "all"}
        response = api._get(url, params=params, stream=True)
        self._response = response
        try:
            api._raise_for_status(response)
            # A job may be silent for hours: no read timeout on this stream.
            api._disable_socket_timeout(api._get_raw_response_socket(response))
            raw = response.raw
            while not self._closed.is_set():
                header = _read_exact(raw, 8)
                if header is None:
                    return
                kind, length = struct.unpack(">BxxxL", header)
                data = _read_exact(raw, length) if length else b""
                if data is None:
                    return
                if kind in _STREAMS and data:
                    yield _STREAMS[kind], data
        finally:
            response.close()


def _read_exact(raw: _Readable, n: int) -> bytes | None:
    """n bytes, or None at the end of the stream."""
    parts: list[bytes] = []
    while n:
        part = raw.read(n)
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _image_path(image: dict[str, Any]) -> str:
    """The PATH an image's containers get."""
    for item in (image.get("Config") or {}).get("Env") or ():
        if item.startswith("PATH="):
            return str(item[len("PATH=") :])
    return DEFAULT_PATH


def _probe(address: str) -> None:
    """A unix socket that nothing listens on: InvalidConfig naming it. (Tried before the
    SDK, whose client leaves its socket open when the engine is not there.)"""
    if not address.startswith("unix://"):
        return
    with _socket.socket(_socket.AF_UNIX) as probe:
        try:
            probe.connect(address.removeprefix("unix://"))
        except OSError as exc:
            raise InvalidConfig(
                f"backend.socket {address}: the Docker engine does not answer "
                f"({exc.strerror or exc})"
            ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
