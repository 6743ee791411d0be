"""The node agent: a center's side of the exchange (see docs/architecture.md)."""

from node_agent._metering import RunFacts, usage_record
from node_agent._run_table import RunRow, RunTable, runs_on_disk
from node_agent._serve import serve_agent, serve_metrics
from node_agent.agent import Agent
from node_agent.devices import DeviceBook, Holding
from node_agent.errors import AgentError, CannotListen, CannotReattach, Refused

__all__ = [
    "Agent",
    "AgentError",
    "CannotListen",
    "CannotReattach",
    "DeviceBook",
    "Holding",
    "Refused",
    "RunFacts",
    "RunRow",
    "RunTable",
    "runs_on_disk",
    "serve_agent",
    "serve_metrics",
    "usage_record",
]
