"""The agent's own endpoints on an address already in use: one clear line and a non-zero
exit before the agent starts, never a traceback and never a shared port."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation, center_toml
from tests.conftest import make_center


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """CL's config beside its usage key and its admitted member folder (CL.identity)."""
    center = make_center("CL")
    folder, _ = LocalFederation(root=tmp_path).center_identity("CL")
    path = folder.parent / "CL.toml"
    path.write_text(center_toml(center, key_file="CL.key"))
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port with a listener that allows sharing (SO_REUSEPORT), as a gRPC
    server's does: a second server must still refuse it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def agent_run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "agent", "run", "--config", str(config),
         "--broker", "127.0.0.1:1", "--workdir", str(config.parent / "work"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_metrics_on_a_port_in_use_fails_in_one_line(config: Path, taken_port: int) -> None:
    result = agent_run(config, "--metrics", str(taken_port))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"icx: error: --metrics 127.0.0.1:{taken_port}: Address already in use\n"
    )


def test_health_on_a_port_in_use_fails_in_one_line(config: Path, taken_port: int) -> None:
    result = agent_run(config, "--health", f"127.0.0.1:{taken_port}")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"icx: error: --health 127.0.0.1:{taken_port}: Address already in use\n"
    )
