"""Peering between brokers over libp2p: a host on its own trio thread bridged to
asyncio, bindings of libp2p peer ids to broker memberships, signed envelopes and the
lossy-gossip views they feed (docs/peering.md)."""

from peering.binding import Binding, sign_binding, verify_binding
from peering.config import CHECKPOINTS_TOPIC, SUMMARIES_TOPIC, PeeringConfig, peer_key_seed
from peering.envelope import Envelope, Verifier, sign_envelope
from peering.errors import DropReason, HostStopped, PeeringError, PullFailed, Refused
from peering.host import PeerHost
from peering.metrics import Counts
from peering.summaries import Summaries, Summary

__all__ = [
    "CHECKPOINTS_TOPIC",
    "SUMMARIES_TOPIC",
    "Binding",
    "Counts",
    "DropReason",
    "Envelope",
    "HostStopped",
    "PeerHost",
    "PeeringConfig",
    "PeeringError",
    "PullFailed",
    "Refused",
    "Summaries",
    "Summary",
    "Verifier",
    "peer_key_seed",
    "sign_binding",
    "sign_envelope",
    "verify_binding",
]
