"""The typed client of a broker: every user, admin and ledger call takes and returns
domain values (core.types, core.views) and raises the error tree (core.errors).

`BrokerClient` blocks (the CLI, the tests, the benchmarks); `AsyncBrokerClient` is the
same on grpc.aio (the dashboard, peer brokers). Both take the broker's address and the
caller's tenant; the caller's credentials will live here too.
"""

from typing import TYPE_CHECKING, Any

from client._sync import BrokerClient

if TYPE_CHECKING:
    from client._aio import AsyncBrokerClient

__all__ = ["AsyncBrokerClient", "BrokerClient"]


def __getattr__(name: str) -> Any:
    # grpc.aio is loaded only by code that asks for the async client: the CLI never does.
    if name == "AsyncBrokerClient":
        from client._aio import AsyncBrokerClient

        return AsyncBrokerClient
    raise AttributeError(f"module 'client' has no attribute {name!r}")
