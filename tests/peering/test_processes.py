"""Hosts in separate OS processes (`python -m peering`) on loopback: three converge on
each other's summaries; one killed for longer than three dials of its peers comes back
on its address, is re-dialled by them and converges."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cli.federation import LocalFederation
from identity import Role
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
FAST_ARGS = ("--republish-s", "1", "--silence-s", "2", "--redial-max-s", "0.5")


class Child:
    """One `python -m peering` process, spoken to in JSON lines."""

    def __init__(self, folder: Path, key: Path, log: Path, *args: str) -> None:
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "peering", "--identity", str(folder), "--peer-key", str(key),
             *FAST_ARGS, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )  # fmt: skip
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.address: str = self.next_line(30)["address"]
        self.port = self.address.split("/")[4]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        except (ValueError, OSError):
            pass  # the pipe was closed under us: the child is gone

    def next_line(self, timeout_s: float = 10) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no answer from the peering child in {timeout_s} s") from None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, **command: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.next_line()

    def views(self) -> dict[str, str]:
        return {o: text for o, (_, text) in self.ask(status=True)["views"].items()}

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.ask(stop=True) == {"stopped": True}
                assert self.proc.wait(10) == 0
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(10)
        self._close()


def test_processes_converge_and_a_restarted_host_is_redialled(tmp_path: Path) -> None:
    fed = LocalFederation(root=tmp_path / "fed")
    folders = {n: fed.member(n, Role.BROKER, region=n) for n in ("east", "central", "west")}
    keys = {n: tmp_path / f"{n}.peer-key" for n in folders}

    def spawn(name: str, *args: str) -> Child:
        return Child(folders[name], keys[name], tmp_path / f"{name}.log", *args)

    children: list[Child] = []
    try:
        east = spawn("east")
        central = spawn("central", "--peer", east.address)
        west = spawn("west", "--peer", east.address, "--peer", central.address)
        children += [east, central, west]
        for child, name in zip(children, folders, strict=True):
            assert child.ask(publish=f"{name} v1")["version"] > 0
        first = {n: f"{n} v1" for n in folders}
        wait_for(lambda: all(c.views() == first for c in children), 60, "three views to agree")

        # East goes away for more than three dials of each of its peers.
        east.kill()
        children.remove(east)

        def dials_failed() -> bool:
            return all(c.ask(status=True)["counts"]["dial_failures"] >= 4 for c in children)

        wait_for(dials_failed, 20, "central and west to fail dialling east 4 times")
        assert central.ask(publish="central v2")["version"] > 0

        # Back on its address with its key (so its peer id): only the others dial.
        east = spawn("east", "--port", east.port)
        children.append(east)
        assert east.ask(publish="east v2")["version"] > 0
        second = {"east": "east v2", "central": "central v2", "west": "west v1"}
        wait_for(lambda: all(c.views() == second for c in children), 60, "convergence after")

        def all_peered() -> bool:
            return all(c.ask(status=True)["counts"]["peers"] == 2 for c in children)

        wait_for(all_peered, 60, "each host to hold the other two as proven peers")
    finally:
        for child in children:
            child.stop()


def test_a_peer_that_stops_answering_is_cut_off_and_found_again(tmp_path: Path) -> None:
    """A peer frozen in place (SIGSTOP: its TCP connection stays open, nothing answers)
    misses its pings: its connection is closed, instead of lingering for the minutes TCP
    takes to give up; resumed, it reconnects."""
    fed = LocalFederation(root=tmp_path / "fed")
    folders = {n: fed.member(n, Role.BROKER, region=n) for n in ("east", "west")}
    fast = ("--liveness-s", "0.3", "--liveness-timeout-s", "0.3")
    east = Child(folders["east"], tmp_path / "east.key", tmp_path / "east.log", *fast)
    west = Child(folders["west"], tmp_path / "west.key", tmp_path / "west.log", "--peer",
                 east.address, *fast)  # fmt: skip
    try:

        def peers(child: Child) -> int:
            return int(child.ask(status=True)["counts"]["peers"])

        wait_for(lambda: peers(east) == 1 and peers(west) == 1, 60, "the two to peer")
        west.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: peers(east) == 0, 10, "east to cut the silent peer off")
        finally:
            west.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: peers(east) == 1 and peers(west) == 1, 60, "the two to peer again")
        assert "did not answer 2 pings" in (tmp_path / "east.log").read_text()
    finally:
        west.stop()
        east.stop()
