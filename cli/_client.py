"""Where a command finds its broker and who it acts as: the one place the CLI reads
ICX_BROKER and ICX_TENANT, and the one place it opens a client."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from core.errors import InvalidArgument

if TYPE_CHECKING:  # the client pulls in gRPC: only the commands that call a broker load it
    from client import BrokerClient

DEFAULT_BROKER = "127.0.0.1:7700"
DEFAULT_TENANT = "default"
BROKER_HELP = f"broker address HOST:PORT (default: $ICX_BROKER or {DEFAULT_BROKER})"


def broker_address(flag: str | None) -> str:
    """--broker, else $ICX_BROKER, else the default: HOST:PORT (a bare HOST gets the
    default port). InvalidArgument naming where it came from if the port is not one."""
    source = "--broker" if flag else "$ICX_BROKER" if os.environ.get("ICX_BROKER") else ""
    address = flag or os.environ.get("ICX_BROKER") or DEFAULT_BROKER
    host, colon, port = address.rpartition(":")
    if not colon or "]" in port:  # no port (an IPv6 literal in brackets keeps its colons)
        return f"{address}:{DEFAULT_BROKER.rpartition(':')[2]}"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(
            f"{source or 'the broker address'} must be HOST:PORT, got {address!r}"
        )
    return address


def tenant(flag: str | None) -> str:
    """--tenant, else $ICX_TENANT, else 'default'."""
    return flag or os.environ.get("ICX_TENANT") or DEFAULT_TENANT


def add_broker_flag(p: argparse.ArgumentParser, *, help: str = BROKER_HELP) -> None:
    p.add_argument("--broker", metavar="HOST:PORT", help=help)


def connect(args: argparse.Namespace, *, timeout_s: float = 10.0) -> BrokerClient:
    """A client for the broker and tenant the command names (or the environment does)."""
    from client import BrokerClient

    return BrokerClient(
        broker_address(getattr(args, "broker", None)),
        tenant(getattr(args, "tenant", None)),
        timeout_s=timeout_s,
    )
