"""A Docker engine of its own on one machine, for the tests and the benchmarks: on a
private socket, started and stopped here.

`dockerd` (Debian `docker.io`) and a static busybox (Debian `busybox-static`) are
installed when absent (`cli.debian.ensure_debian`). The engine gets its own data and exec
roots under a folder, `vfs` storage, no iptables rules and no bridge, so containers run
with network "none" or "host" only and the machine's own engine (if any) is never
touched. Its one image is made here, never pulled: a folder holding the static busybox
and its links (sh, echo, sleep, cat, env, touch, ...), imported as `icx/busybox:1`.

Nothing is cached between runs: with the packages installed, the engine starts and the
image is imported in well under a second (figures in docs/benchmarks.md).

    engine = start_engine(folder)
    ...
    engine.stop()                   # no container, dockerd or containerd left
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker  # type: ignore[import-untyped]
from docker.errors import DockerException  # type: ignore[import-untyped]

from cli.debian import SetupError, ensure_debian

IMAGE = "icx/busybox:1"
BUSYBOX = Path("/bin/busybox")
# The programs the test jobs use, as links to busybox in the image's /bin.
APPLETS = (
    "sh", "echo", "sleep", "cat", "env", "ls", "true", "false", "head", "printf", "id", "touch",
    "rm", "mkdir", "grep", "wc", "seq", "date", "stat",
)  # fmt: skip
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(slots=True)
class DockerEngine:
    """A running dockerd: `socket` is its address (unix://...), `image` the test image."""

    root: Path
    socket: str
    process: subprocess.Popen[bytes]
    image: str = IMAGE
    setup_s: dict[str, float] = field(default_factory=dict)

    def client(self) -> docker.DockerClient:
        """A client of this engine; the caller closes it."""
        return docker.DockerClient(base_url=self.socket, timeout=30)

    def containers(self) -> list[str]:
        """The ids of every container the engine holds, running or not."""
        with contextlib.closing(self.client()) as client:
            return [c.id for c in client.containers.list(all=True)]

    def tag(self, reference: str) -> None:
        """Give the test image another name (another image, as far as a center's list of
        accepted images goes)."""
        repository, tag = reference.rsplit(":", 1)
        with contextlib.closing(self.client()) as client:
            client.images.get(self.image).tag(repository, tag)

    def untag(self, reference: str) -> None:
        with contextlib.closing(self.client()) as client:
            client.images.remove(reference)

    def stop(self) -> None:
        """Remove every container, stop dockerd (which stops its containerd), and kill
        anything still running from this engine's exec root."""
        with contextlib.suppress(DockerException), contextlib.closing(self.client()) as client:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in _processes_under(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # dockerd leaves mounts of its own under its roots (a network namespace's bind
        # mount, overlay layers): unmount them, deepest first, so nothing stays behind.
        for mount in sorted(mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.strip()]
    return [p for p in points if p.startswith(prefix)]


def start_engine(root: Path, storage_driver: str = "vfs") -> DockerEngine:
    """Install what is missing, start dockerd under `root`, wait until it answers, and
    import the test image. Raises SetupError saying what failed. `vfs` works on any file
    system; `overlay2` (where the kernel and the file system under `root` allow it)
    shares layers instead of copying them, for images of hundreds of MB."""
    started = time.monotonic()
    ensure_debian({"dockerd": "docker.io", "busybox": "busybox-static"})
    installed = time.monotonic()
    busybox = _static_busybox()
    root.mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text("{}\n")
    socket = f"unix://{root / 'docker.sock'}"
    log = (root / "dockerd.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["PATH"] = env.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    process = subprocess.Popen(
        [
            shutil.which("dockerd", path=env["PATH"]) or "dockerd",
            "--config-file", str(root / "daemon.json"),
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", socket,
            "--storage-driver", storage_driver,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--log-level", "warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    log.close()
    engine = DockerEngine(root=root, socket=socket, process=process)
    try:
        _wait_until_it_answers(engine)
        answered = time.monotonic()
        _import_image(engine, busybox)
    except BaseException as exc:
        engine.stop()
        tail = (root / "dockerd.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SetupError(f"dockerd under {root} did not start: {exc}; log: {tail}") from exc
    done = time.monotonic()
    engine.setup_s = {
        "install": installed - started,
        "start": answered - installed,
        "image": done - answered,
    }
    return engine


def _wait_until_it_answers(engine: DockerEngine) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(engine):
        if time.monotonic() > deadline:
            raise SetupError(
                f"dockerd on {engine.socket} did not answer in {START_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.05)


def _answers(engine: DockerEngine) -> bool:
    if engine.process.poll() is not None:
        raise SetupError(f"dockerd exited with {engine.process.returncode}")
    # A plain connect first: the SDK's client leaves its socket open when the engine
    # is not listening yet.
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(engine.socket.removeprefix("unix://"))
        except OSError:
            return False
    try:
        with contextlib.closing(engine.client()) as client:
            return bool(client.ping())
    except DockerException:
        return False


def _static_busybox() -> Path:
    """The static busybox that `busybox-static` installs: a dynamic one cannot run in an
    image that holds nothing else."""
    if not BUSYBOX.exists():
        raise SetupError(f"{BUSYBOX} is missing after installing busybox-static")
    if _elf_interpreter(BUSYBOX.read_bytes()[:4096]):
        raise SetupError(
            f"{BUSYBOX} is dynamically linked (package busybox); the tests need busybox-static"
        )
    return BUSYBOX


def _elf_interpreter(head: bytes) -> bool:
    """Whether a 64-bit little-endian ELF file's program headers name an interpreter."""
    if head[:4] != b"\x7fELF" or head[4] != 2:
        raise SetupError("busybox is not a 64-bit ELF executable")
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if int.from_bytes(head[start : start + 4], "little") == 3:  # PT_INTERP
            return True
    return False


def _import_image(engine: DockerEngine, busybox: Path) -> None:
    """`docker import` of a folder with /bin/busybox and its links, as engine.image."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    repository, tag = engine.image.rsplit(":", 1)
    with contextlib.closing(engine.client()) as client:
        client.api.import_image_from_data(
            buffer.getvalue(), repository=repository, tag=tag, changes=["ENV PATH=/bin"]
        )
        client.images.get(engine.image)


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names `root` (containerd and its shims)."""
    mark = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if mark in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found
