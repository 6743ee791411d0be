"""How a center runs a job: the `Backend` protocol and its implementations. The process
backend runs each job as a local process group; Slurm and container backends implement
the same protocol. `make_backend` builds the one a center's `[backend]` names."""

from pathlib import Path

from core.errors import InvalidConfig
from core.types import CenterDescriptor
from node_agent.backends._process import ProcessBackend, ProcessRun, resolve_program
from node_agent.backends._protocol import (
    Backend,
    CapacitySource,
    LaunchRequest,
    OutputSink,
    Run,
    engine_end_ms,
    job_environment,
)
from node_agent.config import BackendConfig

__all__ = [
    "Backend",
    "CapacitySource",
    "LaunchRequest",
    "OutputSink",
    "ProcessBackend",
    "ProcessRun",
    "Run",
    "engine_end_ms",
    "job_environment",
    "make_backend",
    "resolve_program",
]


def make_backend(
    config: BackendConfig, workdir: Path, center: CenterDescriptor | None = None
) -> Backend:
    """The backend `config` names, its options checked; raises InvalidConfig naming what
    is wrong. `workdir` is the agent's (a backend may keep its own files there);
    `center` the center's config (required by the Slurm backend: its pools)."""
    if config.kind == "process":
        if config.options:
            extra = ", ".join(sorted(config.options))
            raise InvalidConfig(f"backend.kind = 'process' takes no options, got {extra}")
        return ProcessBackend()
    if config.kind == "slurm":
        from node_agent.backends._slurm import SlurmBackend, SlurmOptions

        if center is None:
            raise InvalidConfig("backend.kind = 'slurm' needs the center's pools")
        slurm = SlurmBackend(SlurmOptions.parse(config.options, center), center, workdir)
        slurm.check()  # the partition and the pools' GRES, asked of Slurm now
        return slurm
    if config.kind == "docker":
        from node_agent.backends._docker import DockerBackend

        return DockerBackend.from_config(config, workdir)
    raise InvalidConfig(f"backend.kind {config.kind!r} is not built into this agent")
