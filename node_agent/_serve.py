"""`icx agent run`'s process: bind the agent's local endpoints first (so that an address
in use fails at once, in one line), then run the agent until SIGINT or SIGTERM and stop
its jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from node_agent.agent import Agent
from node_agent.errors import CannotListen
from node_agent.health import start_health

log = logging.getLogger("icx.agent")


def serve_metrics(agent: Agent, host: str, port: int) -> int:
    """Serve the agent's Prometheus metrics; the port bound. Raises CannotListen."""
    try:
        bound = agent.metrics.serve(port, host)
    except OSError as exc:
        raise CannotListen(f"--metrics {host}:{port}: {exc.strerror or exc}") from exc
    log.info("metrics on %s:%d", host, bound)
    return bound


async def serve_agent(agent: Agent, *, health: str | None = None) -> None:
    """Run `agent` (and its gRPC health on `health`, HOST:PORT) until SIGINT or SIGTERM,
    then stop its jobs. Raises CannotListen before anything runs when `health` cannot
    be bound."""
    health_server = await start_health(agent, health) if health else None
    loop = asyncio.get_running_loop()
    main = asyncio.ensure_future(agent.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await main
    except asyncio.CancelledError:
        log.info("agent stopping: stopping its jobs")
        await agent.stop()
    finally:
        if health_server is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await health_server.stop()
