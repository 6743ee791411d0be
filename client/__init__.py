"""The typed client of a broker: every user, admin and ledger call takes and returns
domain values (core.types, core.views) and raises the error tree (core.errors).

`BrokerClient` blocks (the CLI, the tests, the benchmarks); `AsyncBrokerClient` is the
same on grpc.aio (the dashboard, peer brokers). Both take the broker's address and the
caller's tenant; the caller's credentials will live here too.
"""

from client._aio import AsyncBrokerClient
from client._sync import BrokerClient

__all__ = ["AsyncBrokerClient", "BrokerClient"]
