"""What a peering host counts, in a registry it owns (so that a process may hold several
hosts, and a broker can add the registry to what it exposes)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from peering.errors import DropReason

__all__ = ["Counts", "Metrics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """A snapshot of the counters."""

    published: int
    received: int
    dropped: dict[DropReason, int]
    pulls: int
    pull_failures: int
    dial_failures: int
    peers: int


class Metrics:
    """Thread-safe counters (prometheus-client's are); the host's thread writes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.published = Counter(
            "icx_peering_published", "Envelopes this host published", registry=self.registry
        )
        self.received = Counter(
            "icx_peering_received",
            "Envelopes accepted from peers (gossip and pulls): newer than the view held",
            registry=self.registry,
        )
        self.dropped = Counter(
            "icx_peering_dropped",
            "Messages and peers refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in DropReason:
            self.dropped.labels(reason=str(reason))
        self.pulls = Counter(
            "icx_peering_pulls", "Pull requests sent to peers", registry=self.registry
        )
        self.pull_failures = Counter(
            "icx_peering_pull_failures",
            "Pull requests that brought nothing newer (no answer, refused, not newer)",
            registry=self.registry,
        )
        self.dial_failures = Counter(
            "icx_peering_dial_failures",
            "Failed dials of configured peers",
            registry=self.registry,
        )
        self.peers = Gauge(
            "icx_peering_peers", "Connected peers proven to be brokers", registry=self.registry
        )

    def drop(self, reason: DropReason) -> None:
        self.dropped.labels(reason=str(reason)).inc()

    def counts(self) -> Counts:
        def value(name: str, labels: dict[str, str] | None = None) -> int:
            sample = self.registry.get_sample_value(name, labels or {})
            return int(sample or 0)

        return Counts(
            published=value("icx_peering_published_total"),
            received=value("icx_peering_received_total"),
            dropped={r: value("icx_peering_dropped_total", {"reason": str(r)}) for r in DropReason},
            pulls=value("icx_peering_pulls_total"),
            pull_failures=value("icx_peering_pull_failures_total"),
            dial_failures=value("icx_peering_dial_failures_total"),
            peers=value("icx_peering_peers"),
        )
