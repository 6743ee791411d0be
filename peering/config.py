"""How a peering host runs: where it listens, whom it dials, how it gossips."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidConfig
from identity.files import write_private

__all__ = ["CHECKPOINTS_TOPIC", "SUMMARIES_TOPIC", "PeeringConfig", "peer_key_seed"]

# Offer summaries, and each broker's latest ledger checkpoint with its keys.
SUMMARIES_TOPIC = "icx/summaries/1"
CHECKPOINTS_TOPIC = "icx/checkpoints/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeeringConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: a free port, reported by PeerHost.address
    # Multiaddrs of the peers to keep connected, each ending in /p2p/<peer id>.
    bootstrap: tuple[str, ...] = ()
    topics: tuple[str, ...] = (SUMMARIES_TOPIC,)
    # The libp2p (Ed25519) key's 32-byte seed: keep it to keep the peer id across restarts.
    peer_key_seed: bytes | None = None
    # GossipSub: py-libp2p's own default heartbeat is 120 s.
    heartbeat_s: int = 1
    mesh_degree: int = 3
    mesh_degree_low: int = 2
    mesh_degree_high: int = 4
    # At most one publication per topic per interval (the latest payload wins) ...
    publish_interval_s: float = 0.2
    # ... and the current one again every republish_s (jittered), re-signed.
    republish_s: float = 5.0
    # An origin not heard from for this long is pulled (itself first).
    silence_s: float = 15.0
    # How often the pull loop looks for gaps and silent origins.
    pull_check_s: float = 0.25
    pull_timeout_s: float = 3.0
    # Re-dialling a configured peer: from min to max, doubling, for ever.
    redial_min_s: float = 0.25
    redial_max_s: float = 10.0
    dial_timeout_s: float = 5.0
    # Each proven peer is pinged this often; one that misses this many pings in a row
    # (each unanswered within the timeout) has its connection closed and re-dialled.
    liveness_s: float = 5.0
    liveness_timeout_s: float = 3.0
    liveness_misses: int = 2
    # How long a binding of this host's peer id is valid (re-signed at half of it).
    binding_ttl_s: int = 3600
    # Test hook: the fraction of gossiped envelopes the receive path discards (relayed
    # but not applied), as a lossy GossipSub would. 0 outside tests.
    test_drop_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= 65535:
            raise InvalidConfig(f"listen_port must be 0..65535, got {self.listen_port}")
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise InvalidConfig(f"bootstrap peer must end in /p2p/<peer id>, got {addr!r}")
            _check_peer_address(addr)
        if not self.topics:
            raise InvalidConfig("topics must name at least one topic")
        if self.peer_key_seed is not None and len(self.peer_key_seed) != 32:
            raise InvalidConfig(f"peer_key_seed must be 32 bytes, got {len(self.peer_key_seed)}")
        if self.heartbeat_s < 1:
            raise InvalidConfig(f"heartbeat_s must be >= 1, got {self.heartbeat_s}")
        if not 1 <= self.mesh_degree_low <= self.mesh_degree <= self.mesh_degree_high:
            raise InvalidConfig(
                "mesh degrees must satisfy 1 <= low <= degree <= high, got"
                f" {self.mesh_degree_low}, {self.mesh_degree}, {self.mesh_degree_high}"
            )
        for name in (
            "publish_interval_s",
            "republish_s",
            "silence_s",
            "pull_check_s",
            "pull_timeout_s",
            "redial_min_s",
            "dial_timeout_s",
            "liveness_s",
            "liveness_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise InvalidConfig(f"{name} must be > 0, got {getattr(self, name)}")
        if self.redial_max_s < self.redial_min_s:
            raise InvalidConfig(
                f"redial_max_s ({self.redial_max_s}) must be >= redial_min_s ({self.redial_min_s})"
            )
        if self.liveness_misses < 1:
            raise InvalidConfig(f"liveness_misses must be >= 1, got {self.liveness_misses}")
        if self.binding_ttl_s < 60:
            raise InvalidConfig(f"binding_ttl_s must be >= 60, got {self.binding_ttl_s}")
        if not 0 <= self.test_drop_fraction < 1:
            raise InvalidConfig(
                f"test_drop_fraction must be in [0, 1), got {self.test_drop_fraction}"
            )


def _check_peer_address(addr: str) -> None:
    """A peer's multiaddr that libp2p can dial: /ip4|ip6|dns/HOST/tcp/PORT/p2p/<peer id>."""
    import multiaddr  # type: ignore[import-untyped]
    from libp2p.peer.peerinfo import info_from_p2p_addr

    try:
        info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # the parsers raise several unrelated types
        raise InvalidConfig(
            f"not a peer address: {addr!r} ({exc}); expected "
            "/ip4/HOST/tcp/PORT/p2p/<peer id>, as the peer's broker logs it at start"
        ) from None


def peer_key_seed(path: Path) -> bytes:
    """The libp2p key seed kept at `path` (32 bytes, made on first use, mode 0600), so
    that a restarted broker keeps its peer id and its peers' configured addresses."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, os.urandom(32))
    seed = path.read_bytes()
    if len(seed) != 32:
        raise InvalidConfig(f"{path} must hold a 32-byte peer key seed, holds {len(seed)} bytes")
    return seed
