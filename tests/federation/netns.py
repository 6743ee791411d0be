"""Two network namespaces joined by a veth pair: two hosts on one machine, so that a test
can cut the network between them (a partition) and heal it.

    with namespace_pair() as net:
        net.a.host, net.b.host  # each one's address on the link between them
        net.a.prefix            # ("ip", "netns", "exec", NAME): a command run inside
        net.partition()
        net.heal()

The layout (addresses from a slot picked by the pid, one free on this machine: a /30 of
10.201.0.0/16 for the link, a /29 of 10.202.0.0/16 for the veths to the root namespace):

    namespace A                                  namespace B
      wan0  10.201.x.1/30  <--- the link --->  wan0  10.201.x.2/30   (broker to broker)
      root0 10.202.y.2/30                      root0 10.202.y.6/30
            |                                        |
    root: icxPID-Na 10.202.y.1/30              root: icxPID-Nb 10.202.y.5/30
          route 10.201.x.1/32 via 10.202.y.2         route 10.201.x.2/32 via 10.202.y.6

Everything in a namespace (a broker, its agents) listens on and dials its link address.
The test process, in the root namespace, reaches that address through the namespace's
own veth (root0), so a partition of the link separates the two namespaces and nothing
else: the test still reaches both, and each agent stays connected to its broker.

A partition drops, at both ends (or at one: a one-way cut), whatever arrives over the
link (iptables INPUT DROP): packets vanish, as in a real cut, instead of failing fast as
a link set down would.

Namespaces are named `icxnet-PID-N-a` and `-b` (N counts the pairs of one process);
whatever an earlier run left behind (its pid gone) is removed, its leftover processes
killed, before a new pair is made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from cli.debian import ensure_debian

PREFIX = "icxnet-"
_NAME = re.compile(rf"{PREFIX}(\d+)-\d+-[ab]")
_PAIRS = itertools.count()  # pairs made by this process: N in the names
LINK = "wan0"  # the link's interface in each namespace
UP = "root0"  # each namespace's veth to the root namespace
# Each pair takes a /30 of LINK_NET and a /29 of UP_NET: 8192 slots.
LINK_NET = ipaddress.IPv4Network("10.201.0.0/16")
UP_NET = ipaddress.IPv4Network("10.202.0.0/16")
SLOTS = 8192


class NetnsError(RuntimeError):
    """An `ip` or `iptables` command failed (says which, and what it printed)."""


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    host: str  # its address on the link; the root namespace reaches it too

    @property
    def prefix(self) -> tuple[str, ...]:
        """What a command line starts with to run inside this namespace."""
        return ("ip", "netns", "exec", self.name)


@dataclass(slots=True)
class Pair:
    a: Namespace
    b: Namespace
    cut: tuple[Namespace, ...] = ()  # the ends where what arrives over the link is dropped

    @property
    def partitioned(self) -> bool:
        return bool(self.cut)

    def partition(self, only_into: Namespace | None = None) -> None:
        """Cut the link: from now on nothing sent over it arrives at either end; or, with
        `only_into`, at that end only (a one-way cut: what it sends still arrives)."""
        if self.cut:
            raise NetnsError("the link is cut already")
        ends = (self.a, self.b) if only_into is None else (only_into,)
        for ns in ends:
            _run(*ns.prefix, *_IPTABLES, "-A", *_ON_LINK)
            self.cut += (ns,)

    def heal(self) -> None:
        """Join the link again."""
        while self.cut:
            _run(*self.cut[-1].prefix, *_IPTABLES, "-D", *_ON_LINK)
            self.cut = self.cut[:-1]


_IPTABLES = ("iptables", "-w", "5")
_ON_LINK = ("INPUT", "-i", LINK, "-j", "DROP")


@contextlib.contextmanager
def namespace_pair() -> Iterator[Pair]:
    """Two fresh namespaces joined by a link, each reachable from here; removed on
    leaving (with any process still inside), whatever happened inside the block."""
    ensure_debian({"ip": "iproute2", "iptables": "iptables"})
    remove_stale()
    pid, n = os.getpid(), next(_PAIRS)
    slot = _free_slot(pid)
    link, up = (list(net) for net in _subnets(slot))
    pair = Pair(
        a=Namespace(name=f"{PREFIX}{pid}-{n}-a", host=str(link[1])),
        b=Namespace(name=f"{PREFIX}{pid}-{n}-b", host=str(link[2])),
    )
    roots = [f"icx{pid}-{n}a", f"icx{pid}-{n}b"]  # at most 15 characters
    try:
        for ns in (pair.a, pair.b):
            _remove(ns.name)  # a namespace of a dead run that had this pid
            _run("ip", "netns", "add", ns.name)
            _run("ip", "-n", ns.name, "link", "set", "lo", "up")
        _run(
            "ip", "link", "add", "name", LINK, "netns", pair.a.name, "type", "veth",
            "peer", "name", LINK, "netns", pair.b.name,
        )  # fmt: skip
        for ns, host in ((pair.a, link[1]), (pair.b, link[2])):
            _run("ip", "-n", ns.name, "addr", "add", f"{host}/30", "dev", LINK)
            _run("ip", "-n", ns.name, "link", "set", LINK, "up")
        for i, (ns, root) in enumerate(zip((pair.a, pair.b), roots, strict=True)):
            here, there = up[4 * i + 1], up[4 * i + 2]
            _quiet("ip", "link", "del", root)
            _run(
                "ip", "link", "add", "name", root, "type", "veth",
                "peer", "name", UP, "netns", ns.name,
            )  # fmt: skip
            _run("ip", "addr", "add", f"{here}/30", "dev", root)
            _run("ip", "link", "set", root, "up")
            _run("ip", "-n", ns.name, "addr", "add", f"{there}/30", "dev", UP)
            _run("ip", "-n", ns.name, "link", "set", UP, "up")
            _run("ip", "route", "add", f"{ns.host}/32", "via", str(there), "dev", root)
        yield pair
    finally:
        for root in roots:
            _quiet("ip", "link", "del", root)  # its peer inside goes with it, and the route
        for ns in (pair.a, pair.b):
            _remove(ns.name)


def remove_stale() -> list[str]:
    """Remove the namespaces of runs whose process is gone; their names."""
    removed = []
    for name in namespaces():
        match = _NAME.fullmatch(name)
        if match is not None and not _alive(int(match.group(1))):
            _remove(name)
            removed.append(name)
    return removed


def _remove(name: str) -> None:
    """Kill what still runs in namespace `name` (started inside it by a test), then
    delete it; nothing if there is no such namespace."""
    if name not in namespaces():
        return
    for pid in _pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run("ip", "netns", "del", name)


def namespaces() -> list[str]:
    """The names of the network namespaces on this machine."""
    out = _run("ip", "netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids(name: str) -> list[int]:
    return [int(p) for p in _run("ip", "netns", "pids", name).split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_slot(pid: int) -> int:
    """The slot of `pid`, or the next one whose addresses nothing here uses yet (a
    concurrent run, or a namespace the kernel has not finished freeing)."""
    used = _run("ip", "-4", "addr", "show") + _run("ip", "-4", "route", "show")
    for i in range(SLOTS):
        slot = (pid + i) % SLOTS
        link, up = _subnets(slot)
        if not any(f"{host} " in used or f"{host}/" in used for host in (*link, *up)):
            return slot
    raise NetnsError(f"no free slot in {LINK_NET} and {UP_NET}")


def _subnets(slot: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """The link's /30 and the /29 of the two veths to the root namespace."""
    link = ipaddress.IPv4Network((int(LINK_NET.network_address) + slot * 4, 30))
    up = ipaddress.IPv4Network((int(UP_NET.network_address) + slot * 8, 29))
    return link, up


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): {said}")
    return done.stdout


def _quiet(*argv: str) -> None:
    """Run; a failure (nothing to delete) is fine."""
    subprocess.run(argv, capture_output=True, timeout=30, check=False)
