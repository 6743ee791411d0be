"""`icx broker serve` refuses a peering set-up it cannot run with one line and an exit
code, before it writes anything: --insecure peering, a peer address libp2p cannot dial,
an --advertise its certificate does not name, a taken peer port."""

from __future__ import annotations

import socket
from pathlib import Path

from cli.federation import LocalFederation
from identity import Role
from tests.conftest import run_icx


def _serve(tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    db = tmp_path / "b.db"
    run = run_icx("broker", "serve", "--listen", "127.0.0.1:0", "--db", str(db), *args)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("icx: error")]
    return run.returncode, "\n".join(lines), sorted(p.name for p in tmp_path.glob("b.*"))


def _identity(tmp_path: Path) -> str:
    fed = LocalFederation(root=tmp_path / "fed")
    return str(fed.member("broker-x", Role.BROKER, region="TF"))


def test_insecure_peering_is_refused(tmp_path: Path) -> None:
    rc, error, files = _serve(tmp_path, "--insecure", "--peer-listen", "127.0.0.1:0")
    assert rc == 2
    assert "--peer-listen needs the broker's membership (--identity)" in error
    assert files == []


def test_a_peer_address_libp2p_cannot_dial_is_refused(tmp_path: Path) -> None:
    rc, error, files = _serve(
        tmp_path, "--identity", _identity(tmp_path), "--peer-listen", "127.0.0.1:0",
        "--peer", "/ip4/127.0.0.1/tcp/4102/p2p/notapeerid",
    )  # fmt: skip
    assert rc == 2
    assert "not a peer address: '/ip4/127.0.0.1/tcp/4102/p2p/notapeerid'" in error
    assert files == []  # not even the peer key


def test_an_advertised_address_the_certificate_does_not_name_is_refused(tmp_path: Path) -> None:
    rc, error, _ = _serve(
        tmp_path, "--identity", _identity(tmp_path), "--peer-listen", "127.0.0.1:0",
        "--advertise", "west.example:7704",
    )  # fmt: skip
    assert rc == 1
    assert "--advertise west.example:7704: peers check the broker's certificate" in error
    assert "names only localhost, 127.0.0.1" in error


def test_a_taken_peer_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, error, _ = _serve(
            tmp_path, "--identity", _identity(tmp_path), "--peer-listen", f"127.0.0.1:{port}"
        )
    assert rc == 1
    assert error == (
        f"icx: error: cannot listen for peers on 127.0.0.1:{port}: Address already in use (the"
        " port is taken, or the address is not this host's)"
    )
