"""How a center runs a job: the `Backend` protocol and its implementations. The process
backend runs each job as a local process group; Slurm and container backends implement
the same protocol."""

from node_agent.backends._process import ProcessBackend, ProcessRun, resolve_program
from node_agent.backends._protocol import (
    Backend,
    LaunchRequest,
    OutputSink,
    Run,
    job_environment,
)

__all__ = [
    "Backend",
    "LaunchRequest",
    "OutputSink",
    "ProcessBackend",
    "ProcessRun",
    "Run",
    "job_environment",
    "resolve_program",
]
