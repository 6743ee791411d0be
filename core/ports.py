"""Whether a service can listen where it is told to, asked before it starts anything: a
plain socket bound once and closed, so that a taken port is refused with the system's
reason (gRPC binds with SO_REUSEPORT unless told otherwise, and says only that it failed).
"""

from __future__ import annotations

import socket


def check_bindable(listen: str) -> None:
    """Bind HOST:PORT once (SO_REUSEADDR: a port in TIME_WAIT is free). OSError (in use,
    not this host's address) or ValueError (no port) if a server could not listen there."""
    host, _, port = listen.rpartition(":")
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing holds now (bound and released: another process
    could take it before the caller does, which makes the caller's start fail clearly).
    Nothing listens there either, so a connection to it is refused."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
