"""How a center runs a job: the `Backend` protocol and its implementations. The process
backend runs each job as a local process group; Slurm and container backends implement
the same protocol. `make_backend` builds the one a center's `[backend]` names."""

from pathlib import Path

from core.errors import InvalidConfig
from node_agent.backends._process import ProcessBackend, ProcessRun, resolve_program
from node_agent.backends._protocol import (
    Backend,
    LaunchRequest,
    OutputSink,
    Run,
    job_environment,
)
from node_agent.config import BackendConfig

__all__ = [
    "Backend",
    "LaunchRequest",
    "OutputSink",
    "ProcessBackend",
    "ProcessRun",
    "Run",
    "job_environment",
    "make_backend",
    "resolve_program",
]


def make_backend(config: BackendConfig, workdir: Path) -> Backend:
    """The backend `config` names, its options checked; raises InvalidConfig naming what
    is wrong. `workdir` is the agent's (a backend may keep its own files there)."""
    if config.kind == "process":
        if config.options:
            extra = ", ".join(sorted(config.options))
            raise InvalidConfig(f"backend.kind = 'process' takes no options, got {extra}")
        return ProcessBackend()
    raise InvalidConfig(f"backend.kind {config.kind!r} is not built into this agent")
