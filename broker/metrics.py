"""Prometheus metrics of one broker (own registry, so that tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core.errors import FailedPrecondition
from core.states import JobState


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("icx_jobs", "Jobs by state", ["state"], registry=self.registry)
        self.queue_length = Gauge("icx_queue_length", "Jobs waiting", registry=self.registry)
        self.offers = Gauge(
            "icx_offers", "Centers with a live offer in matching", registry=self.registry
        )
        self.centers_connected = Gauge(
            "icx_centers_connected", "Connected node agents", registry=self.registry
        )
        self.claim_refusals = Counter(
            "icx_claim_refusals", "Claims an agent refused", registry=self.registry
        )
        self.claims = Counter("icx_claims", "Claims sent to agents", registry=self.registry)
        self.refused = Counter(
            "icx_center_messages_refused",
            "Messages from centers refused: claims they do not hold, usage that does not "
            "match what the broker saw",
            ["kind"],
            registry=self.registry,
        )
        self.calls_refused = Counter(
            "icx_calls_refused",
            "Calls refused at the gate: not a member (expired, revoked) or a role without "
            "the right to the method",
            ["method", "code"],
            registry=self.registry,
        )
        self.log_chunks_dropped = Counter(
            "icx_log_chunks_dropped",
            "Job output chunks not kept: past a job's cap, or over a center's rate",
            ["reason"],
            registry=self.registry,
        )
        self.forwards = Counter(
            "icx_forwards",
            "Jobs this broker forwarded to peer brokers, by outcome: accepted, refused (by the"
            " owner's own view), handed_back (after acceptance), never_delivered (the owner"
            " gone before any forward reached it)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("accepted", "refused", "handed_back", "never_delivered"):
            self.forwards.labels(outcome=outcome)
        self.peer_brokers = Gauge(
            "icx_peer_brokers",
            "Peer brokers whose summary this broker holds, by whether it is still believed",
            ["live"],
            registry=self.registry,
        )
        self.cosigned = Counter(
            "icx_checkpoints_cosigned",
            "Peer brokers' checkpoints this broker cosigned as a witness",
            registry=self.registry,
        )
        self.checkpoints_ignored = Counter(
            "icx_checkpoints_ignored",
            "Peer checkpoints not cosigned because they are older than the one cosigned (a"
            " lagging relay, a replay)",
            registry=self.registry,
        )
        self.equivocations = Counter(
            "icx_equivocations",
            "Peer logs caught showing two histories (evidence stored; the peer distrusted)",
            ["origin"],
            registry=self.registry,
        )
        self.requeues = Counter(
            "icx_requeues", "Jobs put back in the queue", registry=self.registry
        )
        self.round_seconds = Histogram(
            "icx_match_round_seconds",
            "Wall time of one matching round",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
        )
        self.round_objective = Gauge(
            "icx_match_objective",
            "Latest round: placed priority-weighted device-hours",
            registry=self.registry,
        )
        self.round_bound = Gauge(
            "icx_match_bound",
            "Latest round: proven upper bound on the objective",
            registry=self.registry,
        )
        self.round_gap = Gauge(
            "icx_match_gap_ratio",
            "Latest round: (bound - objective) / bound",
            registry=self.registry,
        )
        self.round_solve_seconds = Gauge(
            "icx_match_solve_seconds", "Latest round: matcher time", registry=self.registry
        )
        self.rounds = Counter("icx_match_rounds", "Matching rounds solved", registry=self.registry)
        self.round_jobs = Gauge(
            "icx_match_round_jobs", "Latest round: jobs considered", registry=self.registry
        )
        self.round_unplaced = Gauge(
            "icx_match_round_unplaced",
            "Latest round: jobs the matcher could not place",
            registry=self.registry,
        )
        self.placed = Counter(
            "icx_match_placed", "Jobs the matcher placed (before claims)", registry=self.registry
        )
        for state in JobState:
            self.jobs.labels(state=state.value).set(0)

    def observe(
        self,
        *,
        job_counts: Mapping[JobState, int],
        centers_connected: Callable[[], int],
        offers: Callable[[], int],
    ) -> None:
        """Gauges read from the broker's state when scraped, so they are never stale."""
        for state in JobState:
            self.jobs.labels(state=state.value).set_function(
                lambda state=state: job_counts[state]  # type: ignore[misc]
            )
        self.queue_length.set_function(lambda: job_counts[JobState.QUEUED])
        self.centers_connected.set_function(centers_connected)
        self.offers.set_function(offers)

    def call_refused(self, method: str, code: grpc.StatusCode) -> None:
        self.calls_refused.labels(method=method.rpartition("/")[2], code=code.name).inc()

    def include(self, other: CollectorRegistry) -> None:
        """Expose `other`'s metrics with these (the peering host's, which its own thread
        writes)."""
        self.registry.register(_Registry(other))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP; returns the bound port (pass 0 for any). Unavailable
        if the port is taken."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}"
            ) from exc
        return int(server.server_port)


class _Registry(Collector):
    """Another registry's metrics, collected with this one's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()
