"""compose/ for real: the images built on a local Debian base, the deployment (PostgreSQL,
a broker on it, three agents) brought up with Debian's docker-compose on a Docker engine
of the test's own (cli/docker_local.py, a private socket), jobs submitted from outside
the containers as a member over mutual TLS, their usage proven from the ledger, and
`docker-compose down -v` leaving no container, network or volume of the project behind.

The engine stores layers with overlay2 where the file system allows it (vfs copies every
layer whole: minutes for an image of this size), else with vfs. The base image (with the
dependencies' virtual environment) and the wheels are cached on the machine
(cli/base_image.py); a machine without them makes them first (debootstrap, pip wheel and
pip install: minutes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cli.base_image import apt_mirror, base_key, base_tarball, build_images
from cli.debian import SetupError, ensure_debian
from cli.docker_local import DockerEngine, mounts_under, start_engine
from core.money import charge_minor
from tests.conftest import run_icx, wait_for

REPO = Path(__file__).resolve().parent.parent
PROJECT = "icxup"
BROKER = "127.0.0.11:7700"  # compose/docker-compose.yml
DATABASE = "postgresql://icx@127.0.0.10:5432/icx"
SERVICES = ("postgres", "broker", "agent-cn06", "agent-cn08", "agent-cn16")
UID = 10001  # the image's user (compose/Dockerfile)
PRICES = {"CN06": 500, "CN08": 750, "CN16": 540}  # compose/centers/*.toml, minor per device-hour
UP_TIMEOUT_S = 180.0
COMPOSE_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Stack:
    """The deployment as run: its folder (a copy of compose/ with its members), the
    engine, and a user of tenant lab-a (`user`, a member folder on the host)."""

    compose: Path
    engine: DockerEngine
    user: Path

    def compose_cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = self.engine.socket
        return subprocess.run(
            ["docker-compose", "-f", str(self.compose / "docker-compose.yml"), "-p", PROJECT,
             *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=COMPOSE_TIMEOUT_S,
        )  # fmt: skip

    def containers(self) -> list[Any]:
        with contextlib.closing(self.engine.client()) as client:
            return list(client.containers.list(all=True, filters={"label": _label()}))

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, networks and volumes still in the engine."""
        ours = {"label": _label()}
        with contextlib.closing(self.engine.client()) as client:
            return {
                "containers": [c.name for c in client.containers.list(all=True, filters=ours)],
                "networks": [n.name for n in client.networks.list(filters=ours)],
                "volumes": [v.name for v in client.volumes.list(filters=ours)],
            }

    def icx(self, *args: str) -> Any:
        """`icx ARGS --json` as the user, from the host; the parsed answer."""
        done = run_icx(args[0], "--json", *args[1:], identity=self.user)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _label() -> str:
    return f"com.docker.compose.project={PROJECT}"


def _health(stack: Stack) -> dict[str, str]:
    """Each service's container health (or its state when it has stopped)."""
    out = {}
    for container in stack.containers():
        state = container.attrs["State"]
        service = container.labels["com.docker.compose.service"]
        out[service] = (
            state.get("Health", {}).get("Status", "")
            if state["Running"]
            else (f"{state['Status']} (exit {state['ExitCode']})")
        )
    return out


def _all_healthy(stack: Stack) -> bool:
    health = _health(stack)
    stopped = {s: h for s, h in health.items() if h.startswith(("exited", "dead"))}
    if stopped:
        logs = stack.compose_cmd("logs", "--tail", "20").stdout
        raise AssertionError(f"services stopped: {stopped}\n{logs}")
    return sorted(health) == sorted(SERVICES) and set(health.values()) == {"healthy"}


def _billed(stack: Stack, job_id: str) -> dict[str, Any] | None:
    """The job's bill once its usage is in the ledger."""
    bill: dict[str, Any] = stack.icx("bill", job_id)
    return bill if bill["records"] else None


def _in_postgres(stack: Stack, query: str) -> list[tuple[Any, ...]]:
    """The rows `query` gives on the deployment's database, as its user icx, from the host."""
    password = (stack.compose / "postgres.password").read_text().strip()
    with psycopg.connect(DATABASE, password=password, connect_timeout=10) as conn:
        return sorted(conn.execute(query).fetchall())


def _members(compose: Path) -> None:
    """init-members.sh in the copy, with this installation's icx, then the folders given
    to the image's user (as compose/README.md tells an operator on Linux)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICX_")}
    env["ICX"] = str(Path(sys.executable).parent / "icx")
    made = subprocess.run(
        ["sh", str(compose / "init-members.sh")], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    mounted = [compose / "broker.identity", *compose.glob("centers/*.identity")]
    secrets = [*compose.glob("centers/*.key"), *compose.glob("postgres.*")]
    for path in [*mounted, *secrets]:
        for item in [path, *path.rglob("*")]:
            os.chown(item, UID, UID)


def _user(compose: Path, home: Path) -> Path:
    """A user of tenant lab-a, admitted by the deployment's coordinator."""
    folder = home / "alice"
    federation = compose / "federation"
    for args in (
        ("user", "init", "--name", "alice", "--identity", str(folder),
         "--root", str(federation / "root.pem"), "--broker", BROKER),
        ("admin", "admit", str(folder / "request.pem"), "--role", "user", "--tenant", "lab-a",
         "--federation", str(federation), "--out", str(home / "alice.cert.pem")),
        ("user", "accept", str(home / "alice.cert.pem"), "--identity", str(folder)),
    ):  # fmt: skip
        done = run_icx(*args)
        assert done.returncode == 0, done.stderr
    return folder


def _engine(root: Path) -> DockerEngine:
    """An engine of this module's own: overlay2, else (a file system that cannot take it,
    such as overlayfs itself) vfs."""
    try:
        return start_engine(root / "overlay2", storage_driver="overlay2")
    except SetupError:
        return start_engine(root / "vfs")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The deployment, up and healthy; brought down (if a test has not) and the engine
    stopped afterwards, its layers removed with it."""
    ensure_debian({"docker-compose": "docker-compose"})
    home = tmp_path_factory.mktemp("compose")
    made = shutil.ignore_patterns(
        "federation", "*.identity", "*.key", "*.cert.pem", "postgres.password", "postgres.pgpass"
    )
    compose = home / "compose"
    shutil.copytree(REPO / "compose", compose, ignore=made)
    _members(compose)
    engine = _engine(home / "docker")
    try:
        with contextlib.closing(engine.client()) as client:
            build_images(client, REPO)
        stack = Stack(compose=compose, engine=engine, user=_user(compose, home))
        try:
            up = stack.compose_cmd("up", "-d", "--no-build")
            assert up.returncode == 0, up.stderr
            try:
                wait_for(lambda: _all_healthy(stack), UP_TIMEOUT_S, "healthy services")
            except AssertionError as exc:
                logs = stack.compose_cmd("logs", "--tail", "10").stdout
                raise AssertionError(f"{exc}: {_health(stack)}\n{logs}") from exc
            yield stack
        finally:
            stack.compose_cmd("down", "-v")
    finally:
        engine.stop()
        shutil.rmtree(engine.root / "data", ignore_errors=True)
    assert mounts_under(engine.root) == []  # not even dockerd's own bind mounts


def test_jobs_run_in_the_containers_and_are_billed_then_down_leaves_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    centers = {c["center_id"]: c for c in stack.icx("centers")}
    assert sorted(centers) == ["CN06", "CN08", "CN16"]
    assert all(c["connected"] for c in centers.values()), centers

    # One job for each center's accelerator, from the host, over mutual TLS.
    wanted = {"CN06": "ascend-910", "CN08": "ascend-910b", "CN16": "nvidia-a800"}
    jobs = {
        center: stack.icx(
            "submit", "--devices", "2", "--accelerator", accelerator, "--hours", "0.1",
            "--", "sh", "-c", 'sleep 1; echo "devices=$ICX_DEVICES as $(id -u)"',
        )["job_id"]
        for center, accelerator in wanted.items()
    }  # fmt: skip

    def ended() -> dict[str, Any] | None:
        found = {center: stack.icx("status", job) for center, job in jobs.items()}
        done = all(j["state"] in ("succeeded", "failed", "cancelled") for j in found.values())
        return found if done else None

    finished = wait_for(ended, 120, "the jobs to end")
    for center, job in finished.items():
        assert (job["state"], job["center_id"]) == ("succeeded", center), job
        log = run_icx("logs", job["job_id"], identity=stack.user)
        assert log.returncode == 0, log.stderr
        # The process backend ran it inside the agent's container, as the image's user.
        assert f"devices={','.join(map(str, job['device_indices']))} as {UID}" in log.stdout

    # The broker keeps them in the PostgreSQL container.
    assert _in_postgres(stack, "SELECT job_id, state FROM jobs") == sorted(
        (job, "succeeded") for job in jobs.values()
    )

    # Each job's usage is in the ledger (in PostgreSQL too), signed by its center, and
    # proves offline.
    logged = set()
    for center, job_id in jobs.items():
        bill = wait_for(functools.partial(_billed, stack, job_id), 60, f"{job_id}'s usage")
        [record] = bill["records"]
        logged.add((record["index"], record["record_id"]))
        assert (record["center"], record["devices"], bill["tenant"]) == (center, 2, "lab-a")
        # At least a second on two devices, charged at the center's price by the one rule.
        assert record["device_s"] >= 2 and record["energy_wh"] >= 0
        assert record["unit_price_minor"] == PRICES[center]
        assert record["charge_minor"] == charge_minor(record["device_s"], PRICES[center]) > 0
        for step in ("trust", "prove"):
            command = (bill if step == "trust" else record)[step].split()[1:]
            done = run_icx(*command, identity=stack.user, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
        verify = run_icx(*record["verify"].split()[1:], cwd=tmp_path)
        assert verify.returncode == 0, verify.stderr + verify.stdout

    assert logged <= set(_in_postgres(stack, "SELECT idx, record_id FROM ledger_entries"))

    down = stack.compose_cmd("down", "-v")
    assert down.returncode == 0, down.stderr
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
    with contextlib.closing(stack.engine.client()) as client:
        assert sorted(n.name for n in client.networks.list()) == ["host", "none"]


# ---------------------------------------------------------------- the base image's inputs


def test_the_mirror_is_read_from_either_apt_format(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert apt_mirror(tmp_path) == "http://deb.debian.org/debian"  # nothing names bookworm
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64] http://one.example/debian/ bookworm main\n"
    )
    assert apt_mirror(tmp_path) == "http://one.example/debian"
    (tmp_path / "sources.list").unlink()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://two.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert apt_mirror(tmp_path) == "http://two.example/debian"


def test_the_base_is_keyed_by_what_it_is_made_of() -> None:
    key = base_key("http://one.example/debian")
    assert key == base_key("http://one.example/debian")
    assert key != base_key("http://two.example/debian")
    assert key != base_key("http://one.example/debian", ("python3",))


def test_a_mirror_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"^debootstrap failed \(1\): .*127\.0\.0\.1:9"):
        base_tarball(tmp_path, mirror="http://127.0.0.1:9/debian")
    # Nothing half-made is left in the cache, nothing mounted under it.
    assert [p.name for p in (tmp_path / "base").iterdir() if not p.name.endswith(".lock")] == []
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()
