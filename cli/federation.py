"""A federation on this machine: a broker and node agents as child processes on
loopback. Used by `icx demo` and by the tests (real processes, real SQLite, real gRPC).

It is a real federation: a throw-away root of trust in `ROOT/federation`, every broker,
center and user admitted with its own certificate, every connection mutually
authenticated TLS. `secure=False` runs the development mode (--insecure) instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.errors import Unavailable
from core.types import CenterDescriptor
from identity import Authority, Credentials, Role, init_member
from identity.tls import channel
from ledger import SignerKey

if TYPE_CHECKING:
    from client import BrokerClient


def icx_command() -> list[str]:
    """How to run this installation's `icx` in a child process."""
    return [sys.executable, "-m", "cli.main"]


def center_toml(center: CenterDescriptor, key_file: str | None = None) -> str:
    """The agent config file for a descriptor (the inverse of node_agent.config)."""
    lines = [
        "[center]",
        f"id = {json.dumps(center.center_id)}",
        f"name = {json.dumps(center.name)}",
        f"region = {json.dumps(center.region)}",
        f"latitude = {center.latitude}",
        f"longitude = {center.longitude}",
        f"pue = {center.pue_milli / 1000}",
        f"grid_g_co2_per_kwh = {center.grid_g_co2_per_kwh}",
    ]
    if key_file is not None:
        lines.append(f"key_file = {json.dumps(key_file)}")
    for p in center.pools:
        lines += [
            "",
            "[[pools]]",
            f"id = {json.dumps(p.pool_id)}",
            f"accelerator = {json.dumps(p.accelerator)}",
            f"devices = {p.devices_total}",
            f"memory_gb = {p.memory_gb}",
            f"fp16_tflops = {p.fp16_tflops}",
            f"power_w = {p.power_w}",
            f"price_minor_per_device_hour = {p.price_minor_per_device_hour}",
        ]
    return "\n".join(lines) + "\n"


def wait_serving(
    address: str, timeout_s: float = 15.0, credentials: Credentials | None = None
) -> None:
    """Block until the gRPC health service at address says SERVING."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with channel(address, credentials) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.05)
    raise Unavailable(f"broker at {address} not serving after {timeout_s} s ({last})")


@dataclass(slots=True, kw_only=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait()
        self.log_file.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@dataclass(slots=True, kw_only=True)
class LocalFederation:
    """Children of this process; `stop()` ends them all (agents first)."""

    root: Path
    broker_args: tuple[str, ...] = ()
    # Mutual TLS with a throw-away root of trust (False: the --insecure development mode).
    secure: bool = True
    broker_region: str = "TF"
    # The broker's member name; and, for several brokers of one federation, the folder
    # whose `federation/` holds their shared root of trust (default: `root`).
    broker_name: str = "broker"
    authority_root: Path | None = None
    # Peer with other brokers (libp2p on loopback, a port it picks once and keeps), and
    # the multiaddrs of the peers to dial.
    peering: bool = False
    peers: tuple[str, ...] = ()
    # The address the broker listens on (gRPC and libp2p) and that clients and agents
    # dial: another than loopback goes into its certificate too. And what every child's
    # command line starts with: `ip netns exec NS` runs the broker and the agents in a
    # network namespace.
    host: str = "127.0.0.1"
    command_prefix: tuple[str, ...] = ()
    # The broker's store: a PostgreSQL URL, or "" for the SQLite file `db`.
    store: str = ""
    broker: Child | None = None
    broker_port: int = 0
    metrics_port: int | None = None
    peer_port: int = 0
    peer_address: str = ""
    agents: dict[str, Child] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def db(self) -> Path:
        return self.root / "broker.db"

    def __enter__(self) -> LocalFederation:
        """Start the broker (on a port it picks); leaving ends every child."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.start_broker(port=0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ membership

    @property
    def authority(self) -> Authority:
        folder = (self.authority_root or self.root) / "federation"
        if not (folder / "root-key.pem").exists():
            Authority.create(folder, "local")
        return Authority(folder)

    def member(
        self,
        name: str,
        role: Role,
        *,
        region: str = "",
        tenant: str = "",
        usage_key: str = "",
        folder: Path | None = None,
        days: int = 30,
    ) -> Path:
        """A member folder for `name`, admitted in `role` (made once; kept)."""
        folder = folder or self.root / "members" / f"{role}-{name}"
        if not (folder / "cert.pem").exists():
            hosts: tuple[str, ...] = ()
            if role in (Role.BROKER, Role.CENTER):
                hosts = ("localhost", "127.0.0.1")
            if role is Role.BROKER and self.host not in hosts:
                hosts += (self.host,)
            init_member(folder, name, hosts=hosts, usage_key=usage_key)
            self.authority.admit_into(folder, role=role, region=region, tenant=tenant, days=days)
        return folder

    def credentials(
        self, role: Role | str = Role.USER, name: str = "", *, tenant: str = "default"
    ) -> Credentials | None:
        """Credentials of a member in `role`: a user of `tenant` (named TENANT.user), the
        coordinator, a broker or a center `name` (centers started here have theirs).
        None when the federation runs --insecure."""
        if not self.secure:
            return None
        role = Role(role)
        if role is Role.COORDINATOR:
            return Credentials.load(self.authority.folder / "coordinator")
        if role is Role.CENTER:
            return Credentials.load(self.center_identity(name)[0])
        if role in (Role.USER, Role.TENANT_ADMIN):
            return Credentials.load(self.member(name or f"{tenant}.user", role, tenant=tenant))
        return Credentials.load(
            self.member(name or self.broker_name, role, region=self.broker_region)
        )

    def center_identity(self, center_id: str, region: str = "TF") -> tuple[Path, SignerKey]:
        """The member folder and usage key of center `center_id` (made and admitted the
        first time, in `region`): what `start_agent` uses, and what a test that speaks
        the agent stream itself presents."""
        folder = self.root / "centers"
        folder.mkdir(parents=True, exist_ok=True)
        key_path = folder / f"{center_id}.key"
        if not key_path.exists():  # each center signs its usage with its own key
            key_path.write_text(SignerKey.generate(center_id).text() + "\n")
            key_path.chmod(0o600)
        key = SignerKey.parse(key_path.read_text())
        identity = folder / f"{center_id}.identity"
        if self.secure:
            self.member(
                center_id,
                Role.CENTER,
                region=region,
                usage_key=key.verifier.text(),
                folder=identity,
            )
        return identity, key

    def client(
        self, tenant: str = "default", *, role: Role | str = Role.USER, **kw: Any
    ) -> BrokerClient:
        """A client of the broker acting as a user of `tenant` (or another role)."""
        from client import BrokerClient

        creds = self.credentials(role, tenant=tenant)
        return BrokerClient(self.address, creds, tenant=tenant, **kw)

    def channel(
        self, role: Role | str = Role.USER, name: str = "", *, tenant: str = "default"
    ) -> grpc.Channel:
        """A raw channel to the broker as a member (for tests that speak protobuf)."""
        return channel(self.address, self.credentials(role, name, tenant=tenant))

    def start_child(self, name: str, args: list[str]) -> Child:
        """`icx ARGS` as a child beside the federation (its log in `logs/NAME.log`), such
        as a dashboard on its broker; the caller stops it."""
        return self._spawn(name, args)

    def _spawn(self, name: str, args: list[str]) -> Child:
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [*self.command_prefix, *icx_command(), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        return Child(name=name, proc=proc, log_path=log_path, log_file=log_file)

    def start_broker(self, port: int | None = None, timeout_s: float = 15.0) -> None:
        """Start (or restart, on the same database and port) the broker; wait for SERVING."""
        if self.broker is not None:
            self.broker.stop()
        ready = self.root / "broker.ready"
        ready.unlink(missing_ok=True)
        listen_port = self.broker_port if port is None else port
        args = [
            "broker", "serve",
            "--listen", f"{self.host}:{listen_port}",
            *(["--store", self.store, "--state-dir", str(self.root)] if self.store
              else ["--db", str(self.db)]),
            "--metrics", "0",
            "--ready-file", str(ready),
            *self._broker_identity(),
            *self._peering(),
            *self.broker_args,
        ]  # fmt: skip
        self.broker = self._spawn("broker", args)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if not self.broker.alive():
                raise Unavailable(f"broker exited; see {self.broker.log_path}")
            if time.monotonic() > deadline:
                raise Unavailable(f"broker not ready after {timeout_s} s")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.broker_port = info["port"]
        self.metrics_port = info["metrics_port"]
        if info.get("peer_address"):
            self.peer_address = info["peer_address"]
            self.peer_port = int(self.peer_address.split("/tcp/")[1].split("/")[0])
        wait_serving(self.address, timeout_s, self.credentials(Role.COORDINATOR))

    def _broker_identity(self) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        folder = self.member(self.broker_name, Role.BROKER, region=self.broker_region)
        return ["--identity", str(folder)]

    def _peering(self) -> list[str]:
        if not self.peering:
            return []
        args = ["--peer-listen", f"{self.host}:{self.peer_port}"]
        for address in self.peers:
            args += ["--peer", address]
        return args

    def start_agent(
        self, center: CenterDescriptor, *extra_args: str, backend_toml: str = ""
    ) -> Child:
        """`icx agent run` for `center`; `backend_toml`, a `[backend]` table for its
        config (default: the process backend)."""
        config = self.root / "centers" / f"{center.center_id}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        self.center_identity(center.center_id, center.region)
        config.write_text(center_toml(center, key_file=f"{center.center_id}.key") + backend_toml)
        identity = [] if self.secure else ["--insecure"]
        workdir = self.root / "work" / center.center_id
        child = self._spawn(
            f"agent-{center.center_id}",
            [
                "agent", "run",
                "--config", str(config),
                "--broker", self.address,
                "--workdir", str(workdir),
                *identity,
                *extra_args,
            ],
        )  # fmt: skip
        self.agents[center.center_id] = child
        return child

    def stop(self) -> None:
        for child in self.agents.values():
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
        for child in self.agents.values():
            child.stop()
        if self.broker is not None:
            self.broker.stop()
