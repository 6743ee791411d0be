"""A connection to a broker for the user commands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from icx.v1 import broker_pb2_grpc

DEFAULT_BROKER = "127.0.0.1:7700"


def broker_address(flag: str | None) -> str:
    return flag or os.environ.get("ICX_BROKER") or DEFAULT_BROKER


def metadata(tenant: str | None) -> tuple[tuple[str, str], ...]:
    tenant = tenant or os.environ.get("ICX_TENANT") or "default"
    return (("x-icx-tenant", tenant),)


@contextmanager
def broker_stub(address: str) -> Iterator[broker_pb2_grpc.BrokerServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield broker_pb2_grpc.BrokerServiceStub(channel)
