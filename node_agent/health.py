"""The agent's own gRPC health endpoint, for the center's monitoring: SERVING while the
stream to the broker is up, NOT_SERVING otherwise. It listens on the center's side
(loopback by default); the broker never uses it."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node_agent.agent import Agent

POLL_S = 0.5


async def serve_health(agent: Agent, listen: str) -> None:
    """Serve until cancelled."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    try:
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
    finally:
        await server.stop(grace=1.0)
