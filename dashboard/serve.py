"""`icx dashboard`'s process: bind the listen address first (a taken port fails in one
line before anything starts), make the token and its file, open the client as the
coordinator, serve the app on uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dashboard.assets import require_echarts
from dashboard.auth import Sessions, default_token_file, write_token_file
from dashboard.errors import CannotListen

if TYPE_CHECKING:
    from identity import Credentials

log = logging.getLogger("icx.dashboard")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    broker: str
    listen_host: str
    listen_port: int
    credentials: Credentials | None
    tenant: str = "default"
    token_file: Path | None = None
    ready_file: Path | None = None
    poll_s: float = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port); CannotListen in one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise CannotListen(f"cannot listen on {host}:{port}: {why}") from exc
    sock.setblocking(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(options: Options) -> int:
    """Run the dashboard until it is stopped; its exit code."""
    echarts = require_echarts()
    sock = bind(options.listen_host, options.listen_port)
    port = int(sock.getsockname()[1])
    sessions = Sessions()
    token_file = options.token_file or default_token_file(port)
    write_token_file(token_file, sessions.token)
    url = url_of(options.listen_host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"icx dashboard at {url} (broker {options.broker})", flush=True)
    print(f"to change policy from the page, open {url}?token={sessions.token}", flush=True)
    print(f"(the token is also in {token_file})", flush=True)
    if options.ready_file is not None:
        ready = {"url": url, "port": port, "token_file": str(token_file)}
        partial = options.ready_file.with_suffix(".partial")
        partial.write_text(json.dumps(ready))
        partial.replace(options.ready_file)
    try:
        asyncio.run(_serve(options, sock, sessions, echarts))
    finally:
        sock.close()
        token_file.unlink(missing_ok=True)
    return 0


async def _serve(options: Options, sock: socket.socket, sessions: Sessions, echarts: Path) -> None:
    import uvicorn

    from client import AsyncBrokerClient
    from dashboard.app import build_app
    from dashboard.figures import BrokerFigures

    client = AsyncBrokerClient(options.broker, options.credentials, tenant=options.tenant)
    figures = BrokerFigures(client)
    app = build_app(figures, sessions, echarts, poll_s=options.poll_s)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    await server.serve(sockets=[sock])
    if not server.started:  # uvicorn said why on stderr
        print("icx: error: the dashboard did not start", file=sys.stderr)
