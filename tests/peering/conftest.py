"""Brokers' credentials from a real federation root, and hosts on loopback."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from identity import Credentials, Role
from peering import SUMMARIES_TOPIC, PeerHost, PeeringConfig

# Short periods, so that loss and recovery happen within a test's time.
FAST = {
    "republish_s": 1.0,
    "silence_s": 2.0,
    "publish_interval_s": 0.05,
    "pull_check_s": 0.1,
    "redial_min_s": 0.1,
    "redial_max_s": 0.4,
    "pull_timeout_s": 2.0,
}

Brokers = Callable[..., Credentials]


@pytest.fixture
def federation(tmp_path: Path) -> LocalFederation:
    return LocalFederation(root=tmp_path / "fed")


@pytest.fixture
def broker(federation: LocalFederation) -> Brokers:
    """broker(name, region=name) -> the credentials of an admitted broker."""

    def make(name: str, region: str = "") -> Credentials:
        return Credentials.load(federation.member(name, Role.BROKER, region=region or name))

    return make


def fast(**overrides: object) -> PeeringConfig:
    return PeeringConfig(**{**FAST, **overrides})  # type: ignore[arg-type]


def view(host: PeerHost) -> dict[str, bytes]:
    """origin -> payload, as `host`'s asyncio-side view holds it."""
    return {s.origin: s.payload for s in host.summaries(SUMMARIES_TOPIC)}


async def start(stack: AsyncExitStack, creds: Credentials, **config: object) -> PeerHost:
    """A host with FAST settings and `config`, stopped when `stack` closes."""
    return await stack.enter_async_context(PeerHost(fast(**config), creds))


def converged(hosts: list[PeerHost], expected: dict[str, bytes]) -> bool:
    return all(view(h) == expected for h in hosts)


@pytest.fixture(autouse=True)
def collect_libp2p_sockets() -> Iterator[None]:
    """py-libp2p 0.8.1 leaves the sockets of some closed connections (simultaneous
    dials, dials cut short) to the garbage collector, which warns whenever it runs.
    During each peering test that warning (and only it) is silenced, and the test ends
    by collecting them, so that it neither fails a later test nor hides anything else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        yield
        gc.collect()
