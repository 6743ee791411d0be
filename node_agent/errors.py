"""The node agent's error tree. Each error also derives from the core category that says
how an edge should answer it, so the CLI maps them without knowing the agent.

* AgentError (core.IcxError)
  + Refused          (also core.FailedPrecondition) a claim this center cannot honour now;
                     the message says why ("only 2 of 4 devices free in pool p")
  + CannotReattach   (also core.FailedPrecondition) a backend cannot follow a run it
                     started before the agent restarted (the process backend's runs die
                     with the agent); the run is lost and its job requeued
  + CannotListen     (also core.FailedPrecondition) a local endpoint of the agent
                     (`--metrics`, `--health`) cannot bind its address
  + DiscoveryUnavailable (also core.Unavailable) NVIDIA's management library cannot
                     tell this machine's devices (not installed, no driver); the agent
                     takes its devices from the config
"""

from __future__ import annotations

from core.errors import FailedPrecondition, IcxError, Unavailable


class AgentError(IcxError):
    """Base of every error the node agent raises on purpose."""


class Refused(AgentError, FailedPrecondition):
    """The claim cannot be honoured; the message says why."""


class CannotReattach(AgentError, FailedPrecondition):
    """The backend cannot re-attach to the run named in the message."""


class CannotListen(AgentError, FailedPrecondition):
    """An address the agent was told to serve on cannot be bound."""


class DiscoveryUnavailable(AgentError, Unavailable):
    """Device discovery cannot run on this machine; the message says why."""
