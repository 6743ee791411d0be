"""`icx dashboard`: the coordinator's live web dashboard (dashboard/), served on
HOST:PORT against one broker (or a region's active broker and its standbys, the one that
listens picked again after a failover), acting with the coordinator's identity."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cli._client import (
    add_broker_flag,
    broker_address,
    config_folder,
    credentials,
    reachable_broker,
    tenant,
)
from cli._output import command
from core.errors import InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    from cli.federation import Child, LocalFederation


@dataclass(frozen=True, slots=True)
class DashboardChild:
    child: Child
    url: str
    token: str
    token_file: Path


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT (PORT 0: any free one); InvalidArgument naming --listen."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidArgument(f"--listen must be HOST:PORT (PORT 0..65535), got {text!r}")
    return host, int(port)


@command
def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.serve import Options, serve
    from identity import Role

    host, port = listen_address(args.listen)
    if args.poll <= 0:
        raise InvalidArgument(f"--poll must be more than 0 seconds, got {args.poll}")
    creds = credentials(args)
    folder = None if creds is None else config_folder(args.identity)
    if creds is not None and creds.member.role is not Role.COORDINATOR:
        raise PermissionDenied(
            f"the dashboard reads and changes what only the coordinator may: {folder} holds"
            f" the certificate of {creds.member.describe()}; give --identity the"
            " coordinator's folder"
        )
    brokers = broker_address(args.broker, folder)
    for name in args.allow_host:
        if not _host_name(name):
            raise InvalidArgument(f"--allow-host must be a host name or address, got {name!r}")
    options = Options(
        broker=brokers,
        pick_broker=lambda: reachable_broker(brokers),
        listen_host=host,
        listen_port=port,
        credentials=creds,
        tenant=tenant(None),
        token_file=Path(args.token_file) if args.token_file else None,
        ready_file=Path(args.ready_file) if args.ready_file else None,
        allow_hosts=tuple(args.allow_host),
        poll_s=args.poll,
    )
    return serve(options)


def _host_name(name: str) -> bool:
    """A DNS name or an IP address (no port, no wildcard)."""
    import ipaddress
    import re

    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name) is not None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the coordinator's live web dashboard (map, hubs, money, matcher, policy)",
        description=(
            "Serve the national dashboard of a broker on HOST:PORT: the centers on a map, "
            "per hub and per center figures, time series, money from the signed "
            "statement, the matcher's rounds and the policy. Works offline. It acts as "
            "the member --identity names (the coordinator), so it answers only a browser "
            "that opened the printed URL with its token (or a script sending "
            "`Authorization: token TOKEN`), and only requests naming the listen host, "
            "localhost or an --allow-host in their Host header. SIGINT or SIGTERM stop it: "
            "it removes its token file and exits 0."
        ),
    )
    add_broker_flag(p)
    p.add_argument(
        "--listen",
        default="127.0.0.1:8700",
        metavar="HOST:PORT",
        help="where to serve the page (default 127.0.0.1:8700; port 0: any free one)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="where to write the token, mode 0600 (default: "
        "$XDG_RUNTIME_DIR/icx/dashboard-PORT.token, else ~/.local/state/icx/)",
    )
    p.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write {url, port, token_file} as JSON here once listening (for scripts)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the page may be reached by (a Host header to accept besides the "
        "listen host, localhost, 127.0.0.1 and ::1); repeatable",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        metavar="S",
        help="how often to ask the broker whether its figures changed (default 1 s)",
    )
    p.set_defaults(func=cmd_dashboard)


def start_beside(
    fed: LocalFederation,
    coordinator: Path,
    *extra: str,
    broker: str | None = None,
    timeout_s: float = 20.0,
) -> DashboardChild:
    """`icx dashboard` as a child of `fed` on a free loopback port, as the coordinator
    (`icx demo --keep`, the dashboard tests), against `broker` (default `fed`'s), with
    `extra` flags; its address and token once it listens."""
    import json
    import time

    from core.errors import Unavailable

    ready = fed.root / "dashboard.ready"
    ready.unlink(missing_ok=True)
    token_file = fed.root / "dashboard.token"
    child = fed.start_child(
        "dashboard",
        [
            "dashboard", "--broker", broker or fed.address, "--identity", str(coordinator),
            "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            "--token-file", str(token_file), *extra,
        ],
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if not child.alive() or time.monotonic() > deadline:
            child.stop()
            raise Unavailable(f"the dashboard did not start; see {child.log_path}")
        time.sleep(0.05)
    url = json.loads(ready.read_text())["url"]
    return DashboardChild(
        child=child, url=url, token=token_file.read_text().strip(), token_file=token_file
    )
