"""The images that compose/ runs, made on this machine without a registry.

No image can be pulled here, so the base is made locally: `debootstrap --variant=minbase
bookworm` from the machine's own apt mirror (with Debian's python3, python3-venv and
what the services need, PostgreSQL included), packed as a tarball and `docker import`ed
as `BASE_IMAGE`. compose/Dockerfile then builds `ICX_IMAGE` on it from wheels prepared
here (`pip wheel` with requirements.lock), and compose/postgres/ builds `POSTGRES_IMAGE`,
so neither build needs the network.

The slow steps are cached on the machine (`cache_dir()`: `$ICX_CACHE`, else
`$XDG_CACHE_HOME/icx`, else `~/.cache/icx`), each keyed by what it is made of:

- `base/bookworm-KEY.tar`: the root file system, KEY from the suite, the mirror and the
  package list (about 2 min to make, then reused);
- `wheels/KEY/`: every dependency's wheel, KEY from requirements.lock and pyproject.toml
  (about a minute: fastecdsa is compiled against GMP). icx's own wheel is built afresh
  from the working tree for every image;
- `base/bookworm-KEY-deps-KEY.tar`: the base with those wheels installed in `VENV`
  (under a minute), so that building the image installs only icx's wheel; the one
  `BASE_IMAGE` is imported from when the images are built for a project.

A missing cache is made from nothing, as in CI. One maker at a time per entry (a lock
file beside it); an entry appears whole or not at all (made aside, then renamed).

    with contextlib.closing(docker.DockerClient(base_url=socket)) as client:
        build_images(client, repo)          # imports the base first
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
from docker.errors import DockerException  # type: ignore[import-untyped]

from cli.debian import SetupError, ensure_debian

BASE_IMAGE = "icx/bookworm-base:1"
ICX_IMAGE = "icx:local"
POSTGRES_IMAGE = "icx/postgres:local"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3 is 3.11 in bookworm, as the wheels need; libgmp10 for fastecdsa (coreutils
# brings it already; named so that the list says what the image relies on);
# postgresql-15 for the broker's store (compose/postgres/Dockerfile on the same base).
PACKAGES = ("python3", "python3-venv", "libgmp10", "ca-certificates", "postgresql-15")
# Left out of the tarball: mount points the engine fills, and what only apt or a human
# reader uses (the image is never upgraded in place; it is rebuilt).
TRIMMED = (
    "./dev/*", "./proc/*", "./sys/*", "./run/*", "./tmp/*",
    "./var/cache/apt/*", "./var/lib/apt/lists/*", "./var/log/*",
    "./usr/share/doc/*", "./usr/share/man/*", "./usr/share/locale/*", "./usr/share/info/*",
    # the cluster that installing postgresql-15 makes: the service makes its own in /data
    "./var/lib/postgresql/*", "./etc/postgresql/*",
)  # fmt: skip
# The folder of wheels inside the build context, and the Dockerfile's build argument
# that tells it to install from there instead of building from source with PyPI.
WHEELS = "wheels"
VENV = "/opt/icx"  # the image's virtual environment (compose/Dockerfile)
DEBOOTSTRAP_TIMEOUT_S = 900
PIP_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where the base tarball and the wheels are kept between runs."""
    if explicit := os.environ.get("ICX_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "icx"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for bookworm (deb822 `.sources` or
    one-line `.list` files), or deb.debian.org when none names it."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = _deb822(stanza)
                if SUITE in fields.get("suites", "").split() and "uris" in fields:
                    return fields["uris"].split()[0].rstrip("/")
            continue
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def base_key(mirror: str, packages: tuple[str, ...] = PACKAGES) -> str:
    """What the base tarball is made of, as a short digest (its cache key)."""
    made_of = "\n".join([SUITE, "minbase", mirror, *sorted(packages), *TRIMMED])
    return hashlib.sha256(made_of.encode()).hexdigest()[:16]


def base_tarball(
    cache: Path | None = None, packages: tuple[str, ...] = PACKAGES, mirror: str | None = None
) -> Path:
    """The base root file system as a tarball: from the cache, else made now with
    debootstrap (as root) from `mirror` (by default this machine's). Raises SetupError
    saying what failed."""
    cache = cache or cache_dir()
    mirror = mirror or apt_mirror()
    tarball = cache / "base" / f"{SUITE}-{base_key(mirror, packages)}.tar"
    if tarball.is_file():
        return tarball
    ensure_debian({"debootstrap": "debootstrap"})
    with _locked(tarball):
        if tarball.is_file():
            return tarball
        with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".making-") as work:
            root = Path(work) / "root"
            try:
                _run(
                    [
                        _program("debootstrap"), "--variant=minbase",
                        f"--include={','.join(packages)}", SUITE, str(root), mirror,
                    ],
                    DEBOOTSTRAP_TIMEOUT_S,
                    "debootstrap",
                )  # fmt: skip
            finally:
                _unmount_under(root)  # what a failed debootstrap left mounted (/proc)
            partial = Path(work) / "base.tar"
            excludes = [f"--exclude={pattern}" for pattern in TRIMMED]
            _run(
                ["tar", "--numeric-owner", "--xattrs", *excludes, "-C", str(root),
                 "-cf", str(partial), "."],
                DEBOOTSTRAP_TIMEOUT_S,
                "tar of the base",
            )  # fmt: skip
            partial.rename(tarball)
    return tarball


def dependency_wheels(repo: Path, cache: Path | None = None) -> Path:
    """A folder with a wheel of every dependency of the project at `repo` (pinned by its
    requirements.lock), from the cache or made now with pip. icx's own wheel is not in
    it: `build_context` builds that from the working tree."""
    cache = cache or cache_dir()
    lock, project = repo / "requirements.lock", repo / "pyproject.toml"
    key = hashlib.sha256(lock.read_bytes() + b"\0" + project.read_bytes()).hexdigest()[:16]
    folder = cache / "wheels" / key
    if folder.is_dir():
        return folder
    with _locked(folder):
        if folder.is_dir():
            return folder
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".making-") as work:
            partial = Path(work) / "wheels"
            _pip_wheel(["--wheel-dir", str(partial), "-c", str(lock), str(repo)])
            for own in partial.glob("icx-*.whl"):
                own.unlink()
            partial.rename(folder)
    return folder


def build_context(repo: Path, dest: Path, cache: Path | None = None) -> Path:
    """A build context for compose/Dockerfile at `dest`: the Dockerfile, requirements.lock
    and `wheels/` (the dependencies' wheels, linked from the cache, and icx's own, built
    now from `repo`). Returns `dest`."""
    wheels = dest / WHEELS
    wheels.mkdir(parents=True)
    for wheel in dependency_wheels(repo, cache).iterdir():
        os.link(wheel, wheels / wheel.name)
    # The virtual environment's setuptools builds it (no isolated environment to fetch).
    _pip_wheel(["--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(repo)])
    shutil.copy(repo / "requirements.lock", dest / "requirements.lock")
    shutil.copy(repo / "compose" / "Dockerfile", dest / "Dockerfile")
    return dest


def base_with_dependencies(repo: Path, cache: Path | None = None) -> Path:
    """The base tarball with VENV added: a virtual environment holding every dependency
    of the project at `repo` (not icx itself), installed by the base's own python3 in a
    chroot. From the cache, else made now (as root). Building the image on it then
    installs only icx's wheel: seconds instead of a minute of unpacking and compiling
    the same dependencies for every image."""
    base = base_tarball(cache)
    wheels = dependency_wheels(repo, cache)
    tarball = base.with_name(f"{base.stem}-deps-{wheels.name}.tar")
    if tarball.is_file():
        return tarball
    with _locked(tarball), tempfile.TemporaryDirectory(dir=base.parent, prefix=".making-") as work:
        if tarball.is_file():
            return tarball
        root = Path(work) / "root"
        root.mkdir()
        _run(["tar", "--numeric-owner", "-xf", str(base), "-C", str(root)], PIP_TIMEOUT_S, "untar")
        for name, minor in (("null", 3), ("zero", 5), ("urandom", 9)):  # what pip opens
            os.mknod(root / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        shutil.copytree(wheels, root / "tmp" / "wheels")
        chroot = [_program("chroot"), str(root)]
        _run([*chroot, "python3", "-m", "venv", VENV], PIP_TIMEOUT_S, "venv in the base")
        _run(
            [*chroot, f"{VENV}/bin/pip", "install", "--quiet", "--no-cache-dir",
             "--disable-pip-version-check", "--no-index", "--no-deps",
             *(f"/tmp/wheels/{w.name}" for w in sorted(wheels.iterdir()))],
            PIP_TIMEOUT_S,
            "pip install in the base",
        )  # fmt: skip
        partial = Path(work) / "base.tar"
        shutil.copy(base, partial)
        _run(
            ["tar", "--numeric-owner", "-rf", str(partial), "-C", str(root), f".{VENV}"],
            PIP_TIMEOUT_S,
            "tar of the environment",
        )
        partial.rename(tarball)
        for older in base.parent.glob(f"{base.stem}-deps-*.tar"):  # each is hundreds of MB
            if older != tarball:
                older.unlink()
    return tarball


def import_base(
    client: docker.DockerClient, cache: Path | None = None, repo: Path | None = None
) -> str:
    """`docker import` of the base tarball as BASE_IMAGE, unless the engine has it; with
    `repo`, the base that holds that project's dependencies."""
    with contextlib.suppress(DockerException):
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    tarball = base_tarball(cache) if repo is None else base_with_dependencies(repo, cache)
    repository, tag = BASE_IMAGE.rsplit(":", 1)
    try:
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=tag,
            changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "ENV LANG=C.UTF-8"],
        )  # fmt: skip
        client.images.get(BASE_IMAGE)
    except DockerException as exc:
        raise SetupError(f"docker import of {tarball} failed: {exc}") from exc
    return BASE_IMAGE


def build_images(
    client: docker.DockerClient, repo: Path, cache: Path | None = None
) -> dict[str, float]:
    """Build ICX_IMAGE (compose/Dockerfile) and POSTGRES_IMAGE (compose/postgres/) on the
    local base, with no network: the base imported (made first if need be), the context
    staged, `docker build`. Returns the seconds each step took. Raises SetupError with
    the build's last lines."""
    started = time.monotonic()
    base = import_base(client, cache, repo)
    based = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="icx-image-") as work:
        context = build_context(repo, Path(work) / "context", cache)
        staged = time.monotonic()
        _build(client, context, ICX_IMAGE, {"BASE": base, "WHEELS": WHEELS})
    built = time.monotonic()
    _build(client, repo / "compose" / "postgres", POSTGRES_IMAGE, {"BASE": base})
    return {
        "base": based - started,
        "context": staged - based,
        "icx": built - staged,
        "postgres": time.monotonic() - built,
    }


def _build(client: docker.DockerClient, context: Path, tag: str, args: dict[str, str]) -> None:
    log: list[str] = []
    try:
        for item in client.api.build(
            path=str(context),
            tag=tag,
            buildargs=args,
            network_mode="none",
            rm=True,
            forcerm=True,
            decode=True,
            timeout=BUILD_TIMEOUT_S,
        ):
            log += _build_lines(item)
    except DockerException as exc:
        raise SetupError(f"docker build of {tag} failed: {exc}") from exc
    if any(line.startswith("error: ") for line in log):
        raise SetupError(f"docker build of {tag} failed: {' / '.join(log[-6:])}")


def _build_lines(item: dict[str, Any]) -> list[str]:
    if "error" in item:
        return [f"error: {item['error']}".strip()]
    text = str(item.get("stream", "")).strip()
    return [text] if text else []


def _pip_wheel(args: list[str]) -> None:
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", *args],
        PIP_TIMEOUT_S,
        "pip wheel",
    )


def _program(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _run(argv: list[str], timeout_s: float, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{what} failed ({done.returncode}): {' / '.join(tail)}")


def _unmount_under(root: Path) -> None:
    """Unmount every file system mounted under `root`, deepest first, so that removing
    the folder cannot reach into the host's /proc or /sys."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [Path(line.split()[1]) for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.is_relative_to(root)), reverse=True):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """One maker of a cache entry at a time on this machine."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with (entry.parent / f".{entry.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
