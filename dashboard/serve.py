"""`icx dashboard`'s process: bind the listen address first (a taken port fails in one
line before anything starts), make the token and its file, open the client as the
coordinator, serve the app on uvicorn until SIGINT or SIGTERM, then remove the token file
and exit 0 (as the broker and the agent do)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from dashboard.assets import require_echarts
from dashboard.auth import Sessions, default_token_file, write_token_file
from dashboard.errors import CannotListen, DashboardError

if TYPE_CHECKING:
    from client import AsyncBrokerClient
    from identity import Credentials

log = logging.getLogger("icx.dashboard")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """`broker` as given (one address, or an active broker and its standbys, comma-
    separated); `pick_broker` (blocking) names the one to call now, and is asked again
    whenever the broker is unavailable."""

    broker: str
    pick_broker: Callable[[], str]
    listen_host: str
    listen_port: int
    credentials: Credentials | None
    tenant: str = "default"
    token_file: Path | None = None
    ready_file: Path | None = None
    allow_hosts: tuple[str, ...] = ()
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
    try:
        write_token_file(token_file, sessions.token)
        url = url_of(options.listen_host, port)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        print(f"icx dashboard at {url} (broker {options.broker})", flush=True)
        print(f"to see the page, open {url}?token={sessions.token}", flush=True)
        print(f"(the token is also in {token_file})", flush=True)
        ready = None
        if options.ready_file is not None:
            ready = functools.partial(_write_ready, options.ready_file, url, port, token_file)
        started = asyncio.run(_serve(options, sock, sessions, echarts, ready))
    finally:
        sock.close()
        token_file.unlink(missing_ok=True)
    return 0 if started else 1


def _write_ready(path: Path, url: str, port: int, token_file: Path) -> None:
    ready = {"url": url, "port": port, "token_file": str(token_file)}
    partial = path.with_suffix(".partial")
    try:
        partial.write_text(json.dumps(ready))
        partial.replace(path)
    except OSError as exc:
        raise DashboardError(f"cannot write --ready-file {path}: {exc.strerror}") from exc


async def _serve(
    options: Options,
    sock: socket.socket,
    sessions: Sessions,
    echarts: Path,
    write_ready: Callable[[], None] | None,
) -> bool:
    """Serve until stopped; False if uvicorn could not start. The ready file is written
    once the app starts, when SIGINT and SIGTERM are already handled: a script that
    stops the dashboard as soon as it is ready still gets a clean stop."""
    from client import AsyncBrokerClient
    from dashboard.app import build_app, host_names
    from dashboard.figures import BrokerFigures

    async def connect() -> AsyncBrokerClient:
        address = await asyncio.to_thread(options.pick_broker)
        return AsyncBrokerClient(address, options.credentials, tenant=options.tenant)

    failed: list[DashboardError] = []

    async def started() -> None:
        if write_ready is None:
            return
        try:
            write_ready()
        except DashboardError as exc:
            failed.append(exc)
            server.should_exit = True

    figures = BrokerFigures(await connect(), reconnect=connect)
    hosts = host_names(options.listen_host, options.allow_hosts)
    app = build_app(
        figures, sessions, echarts, hosts=hosts, poll_s=options.poll_s, on_startup=started
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = _Server(config)
    await server.serve(sockets=[sock])
    if failed:
        raise failed[0]
    if not server.started:  # uvicorn said why on stderr
        print("icx: error: the dashboard did not start", file=sys.stderr)
    return bool(server.started)


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGINT or SIGTERM without raising the signal again
    afterwards (uvicorn does, which would end the process before `serve` removes the
    token file): the dashboard then exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
