"""The agent's own gRPC health endpoint, for the center's monitoring: SERVING while the
stream to the broker is up, NOT_SERVING otherwise. It listens on the center's side
(loopback by default); the broker never uses it."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from core.ports import check_bindable
from identity.tls import server_credentials
from node_agent.agent import Agent
from node_agent.errors import CannotListen

POLL_S = 0.5


class HealthServer:
    def __init__(self, server: grpc.aio.Server, watch: asyncio.Task[None]) -> None:
        self._server = server
        self._watch = watch

    async def stop(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        await self._server.stop(grace=1.0)


async def start_health(agent: Agent, listen: str) -> HealthServer:
    """Serve health on `listen` (HOST:PORT) until `stop()`. Raises CannotListen when the
    address cannot be bound, or is already served (no port sharing)."""
    _check_bindable(listen)
    # gRPC sets SO_REUSEPORT by default, so a second server on a port in use would
    # start and share it; refuse instead.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        # With a membership, only members of the federation may ask (TLS requires a
        # certificate from its root); the agent holds no revocation list.
        port = (
            server.add_insecure_port(listen)
            if agent.credentials is None
            else server.add_secure_port(listen, server_credentials(agent.credentials))
        )
    except RuntimeError as exc:  # gRPC says only that it failed to bind
        raise CannotListen(f"--health {listen}: address in use or not available") from exc
    if port == 0:
        raise CannotListen(f"--health {listen}: address in use or not available")
    await server.start()
    return HealthServer(server, asyncio.create_task(_watch(agent, servicer)))


def _check_bindable(listen: str) -> None:
    try:
        check_bindable(listen)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CannotListen(f"--health {listen}: {reason}") from exc


async def _watch(agent: Agent, servicer: health.aio.HealthServicer) -> None:
    up: bool | None = None
    while True:
        now = agent.connected.is_set()
        if now != up:
            up = now
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if up
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await servicer.set("", status)
        await asyncio.sleep(POLL_S)
