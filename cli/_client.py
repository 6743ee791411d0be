"""Where a command finds its broker and who it acts as: the one place the CLI reads
ICX_BROKER, ICX_CONFIG and ICX_TENANT, and the one place it opens a client.

Who a command acts as is the member folder's certificate (--identity DIR, else
$ICX_CONFIG, else ~/.config/icx): the broker reads the caller from the certificate, so
there is nothing to declare. Only against a development broker (--insecure) does a
command declare a tenant (--tenant, $ICX_TENANT)."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InvalidArgument

if TYPE_CHECKING:  # the client pulls in gRPC: only the commands that call a broker load it
    from client import BrokerClient
    from identity import Credentials

DEFAULT_BROKER = "127.0.0.1:7700"
DEFAULT_TENANT = "default"
BROKER_HELP = f"broker address HOST:PORT (default: $ICX_BROKER or {DEFAULT_BROKER})"


def config_folder(flag: str | None = None) -> Path:
    """The member folder: --identity, else $ICX_CONFIG, else $XDG_CONFIG_HOME/icx
    (~/.config/icx)."""
    if flag:
        return Path(flag)
    if os.environ.get("ICX_CONFIG"):
        return Path(os.environ["ICX_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "icx"


def configured_broker(folder: Path) -> str | None:
    """The broker address a member folder's config.toml names, if any."""
    path = folder / "config.toml"
    if not path.exists():
        return None
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("broker")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from exc
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"{path}: broker must be a string HOST:PORT")
    return value


def broker_address(flag: str | None, folder: Path | None = None) -> str:
    """--broker, else $ICX_BROKER, else the member folder's config, else the default:
    HOST:PORT (a bare HOST gets the default port), or several, comma-separated (a
    region's active broker and its standbys: `reachable_broker` picks the one that
    listens). InvalidArgument naming where it came from if a port is not one."""
    configured = configured_broker(folder) if folder is not None else None
    source = (
        "--broker"
        if flag
        else "$ICX_BROKER"
        if os.environ.get("ICX_BROKER")
        else f"{folder}/config.toml"
        if configured
        else ""
    )
    given = flag or os.environ.get("ICX_BROKER") or configured or DEFAULT_BROKER
    addresses = [_one_address(a.strip(), source) for a in given.split(",") if a.strip()]
    if not addresses:
        raise InvalidArgument(f"{source or 'the broker address'} names no HOST:PORT")
    return ",".join(addresses)


def _one_address(address: str, source: str) -> str:
    host, colon, port = address.rpartition(":")
    if not colon or "]" in port:  # no port (an IPv6 literal in brackets keeps its colons)
        return f"{address}:{DEFAULT_BROKER.rpartition(':')[2]}"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(
            f"{source or 'the broker address'} must be HOST:PORT, got {address!r}"
        )
    return address


def reachable_broker(addresses: str, timeout_s: float = 1.0) -> str:
    """The first of comma-separated broker addresses whose port takes a connection: a
    standby broker does not listen until it takes over. The first one if none does (the
    call then fails with the broker's own error)."""
    choices = addresses.split(",")
    if len(choices) == 1:
        return choices[0]
    for address in choices:
        host, _, port = address.rpartition(":")
        with contextlib.suppress(OSError):
            socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
            return address
    return choices[0]


def tenant(flag: str | None) -> str:
    """--tenant, else $ICX_TENANT, else 'default'."""
    return flag or os.environ.get("ICX_TENANT") or DEFAULT_TENANT


def add_broker_flag(p: argparse.ArgumentParser, *, help: str = BROKER_HELP) -> None:
    p.add_argument("--broker", metavar="HOST:PORT", help=help)
    add_identity_flags(p)


def add_identity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--identity",
        metavar="DIR",
        help="member folder with key, certificate and root (default: $ICX_CONFIG or ~/.config/icx)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, declared identity: only for a development broker started --insecure",
    )


def credentials(args: argparse.Namespace) -> Credentials | None:
    """The member's credentials, or None with --insecure."""
    from identity import Credentials

    if getattr(args, "insecure", False):
        return None
    if getattr(args, "tenant", None):
        raise InvalidArgument(
            "--tenant applies only with --insecure: the broker reads your tenant from your "
            "certificate"
        )
    folder = config_folder(getattr(args, "identity", None))
    if not folder.exists():
        raise InvalidArgument(
            f"no identity at {folder}: run `icx user init` (then install the certificate the "
            "coordinator gives you), name one with --identity DIR or $ICX_CONFIG, or use "
            "--insecure against a development broker"
        )
    return Credentials.load(folder)


def connect(args: argparse.Namespace, *, timeout_s: float = 10.0) -> BrokerClient:
    """A client for the broker the command names, as the member its identity holds."""
    from client import BrokerClient

    creds = credentials(args)
    folder = None if creds is None else config_folder(getattr(args, "identity", None))
    return BrokerClient(
        reachable_broker(broker_address(getattr(args, "broker", None), folder)),
        creds,
        tenant=tenant(getattr(args, "tenant", None)),
        timeout_s=timeout_s,
    )
