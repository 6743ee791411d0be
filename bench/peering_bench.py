"""Peering gossip across N brokers, side by side in one run (issue 12's goals):

1. convergence: how long after one host publishes a changed summary every other host's
   view holds that version (or a newer one), with a fraction of received gossip
   discarded by the package's test hook (`test_drop_fraction`); median and p99 over
   the changes, each made by the next host in turn;
2. steady state: messages per second per host over a quiet period (no changes),
   published + received from the hosts' own counters, with the same loss.

Each host is its own OS process (this module run with --child: a `PeerHost` with the
package's default settings, which prints a line, stamped with the system-wide monotonic
clock, whenever its view gets newer), connected to every host started before it.

    .venv/bin/python -m bench.peering_bench [--hosts 4 8] [--changes N] [--quiet-s S]
        [--drop F] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the child


async def _child(args: argparse.Namespace) -> None:
    from identity.files import Credentials
    from peering import SUMMARIES_TOPIC, PeerHost, PeeringConfig, peer_key_seed
    from peering.summaries import Summary

    def say(obj: object) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def updated(_topic: str, summary: Summary) -> None:
        say({"update": summary.origin, "version": summary.version, "t": time.monotonic()})

    low, high = MESH_BOUNDS[args.mesh]
    config = PeeringConfig(
        bootstrap=tuple(args.peer),
        peer_key_seed=peer_key_seed(args.peer_key),
        test_drop_fraction=args.drop,
        mesh_degree=args.mesh,
        mesh_degree_low=low,
        mesh_degree_high=high,
    )
    host = PeerHost(config, Credentials.load(args.identity), on_update=updated)
    async with host:
        say({"address": host.address})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            if "publish" in command:
                t = time.monotonic()
                version = await host.publish(SUMMARIES_TOPIC, command["publish"].encode())
                say({"published": version, "t": t})
            elif "status" in command:
                counts = host.counts()
                say(
                    {
                        "counts": {
                            "published": counts.published,
                            "received": counts.received,
                            "dropped": sum(counts.dropped.values()),
                            "pulls": counts.pulls,
                            "peers": counts.peers,
                        }
                    }
                )
            elif "stop" in command:
                say({"stopped": True})
                return


# ---------------------------------------------------------------------- the parent

# GossipSub mesh degree -> (low, high): the peering package's default, and the broker's.
MESH_BOUNDS = {3: (2, 4), 6: (4, 12)}


class Child:
    """One host process; its update lines are recorded as they come."""

    def __init__(
        self,
        name: str,
        folder: Path,
        key: Path,
        log: Path,
        peers: list[str],
        drop: float,
        mesh: int,
    ):
        self.name = name
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peering_bench", "--child", "--identity", str(folder),
             "--peer-key", str(key), "--drop", str(drop), "--mesh", str(mesh),
             *(f"--peer={p}" for p in peers)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )  # fmt: skip
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        # origin -> [(version, monotonic time the view got it)]
        self.updates: dict[str, list[tuple[int, float]]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.address: str = self.next_answer(60)["address"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            obj = json.loads(line)
            if "update" in obj:
                with self._lock:
                    self.updates.setdefault(obj["update"], []).append((obj["version"], obj["t"]))
            else:
                self._answers.put(obj)

    def next_answer(self, timeout_s: float = 20) -> dict[str, Any]:
        try:
            return self._answers.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no answer in {timeout_s} s") from None

    def ask(self, **command: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.next_answer()

    def holds(self, origin: str, version: int) -> float | None:
        """When this host's view first held `origin` at `version` or newer."""
        with self._lock:
            return next((t for v, t in self.updates.get(origin, ()) if v >= version), None)

    def stop(self) -> None:
        try:
            self.ask(stop=True)
            self.proc.wait(timeout=10)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def reached(hosts: list[Child], origin: str, version: int) -> bool:
    return all(h.holds(origin, version) is not None for h in hosts)


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (the maximum below 100 samples)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def run_n(
    root: Path, n: int, changes: int, quiet_s: float, drop: float, mesh: int
) -> dict[str, float]:
    from cli.federation import LocalFederation
    from identity import Role

    fed = LocalFederation(root=root / "fed")
    hosts: list[Child] = []
    try:
        for i in range(n):
            name = f"hub{i}"
            folder = fed.member(name, Role.BROKER, region=name)
            hosts.append(
                Child(name, folder, root / f"{name}.key", root / f"{name}.log",
                      [h.address for h in hosts], drop, mesh)
            )  # fmt: skip
        for h in hosts:
            h.ask(publish="start")
        wait_until(
            lambda: all(h.holds(o.name, 1) is not None for h in hosts for o in hosts),
            60,
            f"{n} hosts to hold each other's first summaries",
        )

        before = [h.ask(status=True)["counts"] for h in hosts]
        start = time.monotonic()
        time.sleep(quiet_s)
        after = [h.ask(status=True)["counts"] for h in hosts]
        elapsed = time.monotonic() - start
        rates = [
            (a["published"] + a["received"] - b["published"] - b["received"]) / elapsed
            for a, b in zip(after, before, strict=True)
        ]
        seen = [
            (a["published"] + a["received"] + a["dropped"]
             - b["published"] - b["received"] - b["dropped"]) / elapsed
            for a, b in zip(after, before, strict=True)
        ]  # fmt: skip
        pulls = [(a["pulls"] - b["pulls"]) / elapsed for a, b in zip(after, before, strict=True)]

        times = []
        for c in range(changes):
            origin = hosts[c % n]
            answer = origin.ask(publish=f"change {c}")
            version, t0 = answer["published"], answer["t"]
            others = [h for h in hosts if h is not origin]
            wait_until(
                functools.partial(reached, others, origin.name, version),
                60,
                f"change {c} of {origin.name} to reach every host",
            )
            last = max(h.holds(origin.name, version) or 0.0 for h in others)
            times.append(last - t0)
            time.sleep(0.3)  # beyond the publish interval, so that each change goes alone
        return {
            "median_s": statistics.median(times),
            "p99_s": p99(times),
            "max_s": max(times),
            "msgs_per_s": statistics.mean(rates),
            "msgs_per_s_max": max(rates),
            "seen_per_s": statistics.mean(seen),
            "pulls_per_s": statistics.mean(pulls),
        }
    finally:
        for h in hosts:
            h.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--changes", type=int, default=24)
    parser.add_argument("--quiet-s", type=float, default=20.0)
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument(
        "--mesh",
        type=int,
        nargs="+",
        default=[3],
        choices=sorted(MESH_BOUNDS),
        help="GossipSub mesh degrees to compare (3: the peering default; 6: the broker's)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer changes, shorter quiet")
    # The child (one host), started by the parent.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--identity", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        args.mesh = args.mesh[0]
        asyncio.run(_child(args))
        return 0
    if args.quick:
        args.changes, args.quiet_s = 10, 8.0
    results: dict[tuple[int, int], dict[str, float]] = {}
    runs = [(n, mesh) for n in args.hosts for mesh in args.mesh]
    with tempfile.TemporaryDirectory(prefix="icx-peering-bench-") as tmp:
        for n, mesh in runs:
            began = time.monotonic()
            results[(n, mesh)] = run_n(
                Path(tmp) / f"n{n}-m{mesh}", n, args.changes, args.quiet_s, args.drop, mesh
            )
            print(
                f"{n} hosts, mesh {mesh} ({time.monotonic() - began:.0f} s): "
                + ", ".join(f"{k} {v:.3f}" for k, v in results[(n, mesh)].items()),
                flush=True,
            )
    print()
    heads = " | ".join(f"{n} hosts, mesh {m}" for n, m in runs)
    print(f"| figure | {heads} | goal (8 brokers) |")
    print(f"|---|{'---|' * len(runs)}---|")
    rows = (
        ("median_s", f"converge after a change, median s ({args.drop:.0%} dropped)", "< 2 s"),
        ("p99_s", "converge after a change, p99 s", "reported"),
        ("max_s", "converge after a change, max s", "-"),
        ("msgs_per_s", "steady state, published + received per host, msgs/s", "< 10 msgs/s"),
        ("msgs_per_s_max", "steady state, busiest host, msgs/s", "-"),
        ("seen_per_s", "steady state, envelopes checked per host (dropped too), /s", "-"),
        ("pulls_per_s", "steady state, pull requests per host, /s", "-"),
    )
    for key, label, goal in rows:
        print(f"| {label} | {' | '.join(f'{results[r][key]:.2f}' for r in runs)} | {goal} |")
    print(
        f"\n{args.changes} changes per N (each host in turn), {args.quiet_s:.0f} s quiet period;"
        f" package default settings but the mesh; Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
