"""Prometheus metrics of one broker (own registry, so that tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.placed = Counter(
            "icx_match_placed", "Jobs the matcher placed (before claims)", registry=self.registry
        )
        for state in JobState:
            self.jobs.labels(state=state.value).set(0)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP; returns the bound port (pass 0 for any)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
