"""Prometheus metrics of one node agent (own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.devices_free = Gauge(
            "icx_agent_devices_free", "Free devices by pool", ["pool"], registry=self.registry
        )
        self.devices_total = Gauge(
            "icx_agent_devices_total", "Devices by pool", ["pool"], registry=self.registry
        )
        self.jobs_running = Gauge(
            "icx_agent_jobs_running", "Jobs running at this center", registry=self.registry
        )
        self.connected = Gauge(
            "icx_agent_connected", "1 while the broker stream is up", registry=self.registry
        )
        self.claims = Counter(
            "icx_agent_claims", "Claims by outcome", ["outcome"], registry=self.registry
        )
        self.jobs_ended = Counter(
            "icx_agent_jobs_ended", "Jobs ended by state", ["state"], registry=self.registry
        )
        self.metering_failures = Counter(
            "icx_agent_metering_failures",
            "Ended runs whose usage record could not be made, signed or kept",
            registry=self.registry,
        )
        self.usage_orphaned_chains = Gauge(
            "icx_agent_usage_orphaned_chains",
            "Runs whose later usage records are set aside unsent: an earlier one was refused",
            registry=self.registry,
        )
        self.faults = Counter(
            "icx_agent_faults",
            "Errors contained to one job or one message of the broker, by where they arose",
            ["where"],
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
