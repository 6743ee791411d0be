"""One federation, one dashboard and one browser for all the dashboard tests: a
broker (mutual TLS) with three centers in three hubs, a small workload run to its end,
`icx dashboard` as a child process on loopback acting as the coordinator, and Debian's
Chromium driven by Playwright (installed with apt when absent; never a downloaded
browser).

The dashboard is given `--broker DOWN,UP`: DOWN a port bound with nothing listening (a
standby that has not taken over), so every test also runs through the pick of the broker
that listens."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.dashboard_cmd import start_beside
from cli.debian import ensure_debian
from cli.federation import Child, LocalFederation
from client import BrokerClient
from core.types import CenterDescriptor, JobSpec
from identity import Role
from tests.conftest import FAST_BROKER, make_center, wait_centers, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"

# Three centers, each in its own hub, at their reference coordinates; priced so that a
# job of a second costs whole fen (the ledger's sums are then not all zero).
CENTERS: tuple[CenterDescriptor, ...] = (
    dataclasses.replace(
        make_center("CN07", region="JJJ", pools={"main": ("ascend-910", 8, 360_000)}, grid=570),
        latitude=39.9,
        longitude=116.4,
    ),
    dataclasses.replace(
        make_center("CN15", region="GS", pools={"main": ("ascend-910", 8, 180_000)}, grid=590),
        latitude=35.71,
        longitude=107.64,
    ),
    dataclasses.replace(
        make_center("CN16", region="NX", pools={"main": ("ascend-910", 4, 240_000)}, grid=590),
        latitude=37.51,
        longitude=105.19,
    ),
)


def short_job(seconds: float = 0.3, devices: int = 1) -> JobSpec:
    code = f"import time; time.sleep({seconds})"
    return JobSpec(
        accelerator="any", devices=devices, estimated_s=60, command=(sys.executable, "-c", code)
    )


# Another name the test dashboard is started to answer to (`--allow-host`).
ALLOWED_HOST = "dash.example"


@dataclass(slots=True)
class Dashboard:
    fed: LocalFederation
    brokers: str  # DOWN,UP as `--broker` takes them
    child: Child
    url: str
    token: str
    token_file: Path
    coordinator: Path
    user: BrokerClient
    admin: BrokerClient

    def get(self, path: str) -> Any:
        """An API path's JSON, read with the token (as a script does)."""
        request = urllib.request.Request(
            self.url.rstrip("/") + path, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.load(reply)


def wait_quiet(client: BrokerClient, n_done: int, timeout_s: float = 30) -> None:
    """Until `n_done` jobs have ended and every one of them is in the ledger's checkpoint."""

    def done() -> bool:
        jobs = client.list_jobs().jobs
        return sum(1 for j in jobs if j.state.terminal) >= n_done and all(
            j.state.terminal for j in jobs
        )

    wait_for(done, timeout_s, f"{n_done} jobs ended")


@pytest.fixture(scope="package")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dash")
    with (
        LocalFederation(root=root / "fed", broker_args=FAST_BROKER, broker_region="JJJ") as fed,
        socket.socket() as down,  # bound, never listening: connections to it are refused
    ):
        down.bind(("127.0.0.1", 0))
        brokers = f"127.0.0.1:{down.getsockname()[1]},{fed.address}"
        for center in CENTERS:
            fed.start_agent(center)
        with (
            fed.client("lab-a") as user,
            fed.client(role=Role.COORDINATOR) as admin,
        ):
            wait_centers(admin, len(CENTERS))
            for _ in range(3):
                user.submit(short_job(1.5, devices=2))
            wait_quiet(admin, 3)
            coordinator = fed.authority.folder / "coordinator"
            started = start_beside(
                fed, coordinator, "--poll", "0.3", "--allow-host", ALLOWED_HOST, broker=brokers
            )
            try:
                yield Dashboard(
                    fed=fed,
                    brokers=brokers,
                    child=started.child,
                    url=started.url,
                    token=started.token,
                    token_file=started.token_file,
                    coordinator=coordinator,
                    user=user,
                    admin=admin,
                )
            finally:
                started.child.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_debian({"chromium": "chromium"})
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()
