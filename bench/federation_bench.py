"""The federation's cross-broker figures (issue 12), side by side in one run:

1. forwarding: how much later a job forwarded to a peer broker runs than a local one.
   Each region's broker has one center with one pool of its own accelerator model
   (east: ascend-910b, west: cambricon-mlu370, ...). A *local* job is submitted at the
   broker whose center has its model; a *forwarded* job at the other broker, whose round
   matches it to the peer's gossiped summary and forwards it there. One job at a time,
   the four kinds in turn (east's model at east, then at west; west's model at west,
   then at east), so that both brokers serve both roles and a slower minute of the
   shared machine falls on every kind. Each job is `python -c pass`. *To running* is
   from the job's `submitted_at_ms` to its RUNNING event's `at_ms` (WatchJob at the home
   broker: both stamped by the home broker's clock, no polling error); *seen* is from
   the submit call's return to that event reaching the watching client.
2. gossip: messages per second per broker at steady state, with every center
   connected and no job running: envelopes published + received on every topic
   (offer summaries, ledger checkpoints), from each broker's own counters
   (FederationService.ListPeers) at the start and end of a quiet period, with 2
   brokers, then with more joined.

Every broker and agent is its own OS process (cli.federation.LocalFederation, each
broker a member of one throw-away federation, mutual TLS, libp2p on loopback, each
dialling those started before it), with the settings `icx broker serve` runs without
flags unless --republish-s is given.

    .venv/bin/python -m bench.federation_bench [--quick] [--samples N] [--quiet-s S]
        [--brokers 2 4] [--republish-s S] [--json FILE] [--keep]
"""

from __future__ import annotations

import os

# As in `icx`: the broker and agents are started from this process, which never forks
# with gRPC state in use.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import contextlib
import datetime as dt
import functools
import json
import math
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.peering_bench import wait_until
from cli.federation import LocalFederation
from client import BrokerClient
from core.errors import IcxError
from core.states import JobState
from core.types import CenterDescriptor, CenterId, JobEvent, JobSpec, Pool, PoolId
from icx.v1 import federation_pb2, federation_pb2_grpc
from identity import Role

# The regions in the order they join; each has one center whose pool holds its model.
REGIONS = ("east", "west", "north", "south")
MODELS = {
    "east": "ascend-910b",
    "west": "cambricon-mlu370",
    "north": "nvidia-a800",
    "south": "enflame-s60",
}
DEVICES = 8
# The forwarding samples: (home region, region whose center has the job's model).
KINDS = (("east", "east"), ("east", "west"), ("west", "west"), ("west", "east"))
GOAL_EXTRA_MS = 100.0
GOAL_MSGS_PER_S = 10.0
JOB_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0


def center(region: str) -> CenterDescriptor:
    """Region's one center: DEVICES devices of its own model, so that where a job can run
    is decided by its model alone."""
    return CenterDescriptor(
        center_id=CenterId(f"{region}-1"),
        name=f"Benchmark center {region}",
        region=region,
        pue_milli=1250,
        grid_g_co2_per_kwh=500,
        pools=(
            Pool(
                pool_id=PoolId("main"),
                accelerator=MODELS[region],
                devices_total=DEVICES,
                devices_free=DEVICES,
                memory_gb=64,
                fp16_tflops=320,
                power_w=400,
                price_minor_per_device_hour=500,
            ),
        ),
    )


def spec(model: str) -> JobSpec:
    return JobSpec(
        name="bench",
        accelerator=model,
        devices=1,
        estimated_s=60,
        command=(sys.executable, "-c", "pass"),
    )


# ---------------------------------------------------------------- the federation


@dataclass(slots=True)
class Federation:
    """Region brokers on loopback, each with its center; `stop()` ends them all."""

    root: Path
    broker_args: tuple[str, ...]
    regions: dict[str, LocalFederation] = field(default_factory=dict)

    def join(self, name: str) -> LocalFederation:
        """Start region `name`'s broker (dialling every broker started before it) and its
        center's agent."""
        fed = LocalFederation(
            root=self.root / name,
            authority_root=self.root,
            broker_name=f"broker-{name}",
            broker_region=name,
            broker_args=self.broker_args,
            peering=True,
            peers=tuple(f.peer_address for f in self.regions.values()),
        )
        self.regions[name] = fed  # stopped by stop(), also if it fails to start
        fed.root.mkdir(parents=True, exist_ok=True)
        # More patience than the tests' 15 s: the machine is often shared.
        fed.start_broker(port=0, timeout_s=START_TIMEOUT_S)
        fed.start_agent(center(name))
        return fed

    def peers(self, name: str) -> federation_pb2.ListPeersResponse:
        with self.regions[name].channel(Role.COORDINATOR) as chan:
            stub = federation_pb2_grpc.FederationServiceStub(chan)
            try:
                reply: federation_pb2.ListPeersResponse = stub.ListPeers(
                    federation_pb2.ListPeersRequest(), timeout=10
                )
            except grpc.RpcError as err:
                raise RuntimeError(f"ListPeers at broker-{name}: {err.code().name}") from err
            return reply

    def converged(self) -> bool:
        """Every center connected with an offer at its broker, and every broker holding a
        live summary of every other with its center in it."""
        for name, fed in self.regions.items():
            with fed.client() as c:
                if not any(s.connected and s.offer is not None for s in c.centers()):
                    return False
            live = {p.broker for p in self.peers(name).peers if p.live and p.centers >= 1}
            if live != {f"broker-{o}" for o in self.regions if o != name}:
                return False
        return True

    def stop(self) -> None:
        for fed in reversed(list(self.regions.values())):
            fed.stop()


# ---------------------------------------------------------------- forwarding


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    home: str
    owner: str
    running_ms: int  # submitted_at_ms to the RUNNING event's at_ms, home broker's clock
    seen_ms: float  # submit call's return to the RUNNING event at the client

    @property
    def forwarded(self) -> bool:
        return self.home != self.owner


def one_job(client: BrokerClient, home: str, owner: str) -> Sample:
    """Submit a job of `owner`'s model at `home`, follow it to its end; check that it ran
    where it had to."""
    job = client.submit(spec(MODELS[owner]))
    returned = time.time()
    running: tuple[int, float] | None = None
    for item in client.watch(job.job_id, timeout_s=JOB_TIMEOUT_S):
        if isinstance(item, JobEvent) and item.state == JobState.RUNNING and running is None:
            running = (item.at_ms - job.submitted_at_ms, (time.time() - returned) * 1000)
    done = client.get_job(job.job_id)
    expected_broker = "" if home == owner else f"broker-{owner}"
    if done.state != JobState.SUCCEEDED or done.broker != expected_broker or running is None:
        raise RuntimeError(
            f"job {job.job_id} at {home}: {done.state} at broker {done.broker!r} "
            f"(expected succeeded at {expected_broker!r}), running event seen: "
            f"{running is not None}; {done.reason}"
        )
    return Sample(home=home, owner=owner, running_ms=running[0], seen_ms=running[1])


def quotes(client: BrokerClient, owner: str) -> bool:
    """Whether the client's broker can place a job of `owner`'s model at `owner` now."""
    return any(q.region == owner and q.placeable_now for q in client.quote(spec(MODELS[owner])))


def forwarding(fed: Federation, samples: int) -> list[Sample]:
    """`samples` jobs of each kind (local, forwarded), the kinds in turn."""
    out: list[Sample] = []
    with contextlib.ExitStack() as stack:
        clients = {n: stack.enter_context(fed.regions[n].client()) for n in ("east", "west")}
        # Each broker's round must see the other's model before a forwarded job is sent.
        for home, owner in KINDS:
            wait_until(
                functools.partial(quotes, clients[home], owner),
                30,
                f"{home} to quote {owner}'s pool",
            )
        for home, owner in KINDS:  # warm-up: channels, each broker's first forward
            one_job(clients[home], home, owner)
        for i in range(samples * 2):
            home, owner = KINDS[i % len(KINDS)]
            out.append(one_job(clients[home], home, owner))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 0.9),
        "max": max(values),
    }


# ---------------------------------------------------------------- gossip


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    brokers: int
    seconds: float
    msgs_per_s: dict[str, float]  # published + received, per broker
    published_per_s: dict[str, float]
    received_per_s: dict[str, float]
    dropped: dict[str, int]
    pulls: dict[str, int]


def traffic(fed: Federation, quiet_s: float) -> Traffic:
    """Each broker's gossip counters over `quiet_s` of steady state."""
    names = list(fed.regions)
    before = {n: fed.peers(n) for n in names}
    start = time.monotonic()
    time.sleep(quiet_s)  # the measurement window itself
    after = {n: fed.peers(n) for n in names}
    elapsed = time.monotonic() - start

    def rate(n: str, attr: str) -> float:
        return float(getattr(after[n], attr) - getattr(before[n], attr)) / elapsed

    return Traffic(
        brokers=len(names),
        seconds=elapsed,
        msgs_per_s={n: rate(n, "published") + rate(n, "received") for n in names},
        published_per_s={n: rate(n, "published") for n in names},
        received_per_s={n: rate(n, "received") for n in names},
        dropped={
            n: sum(after[n].dropped.values()) - sum(before[n].dropped.values()) for n in names
        },
        pulls={n: after[n].pulls - before[n].pulls for n in names},
    )


# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class Results:
    samples: list[Sample] = field(default_factory=list)
    traffic: list[Traffic] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    load: str = ""


@contextlib.contextmanager
def federation(root: Path, broker_args: tuple[str, ...]) -> Iterator[Federation]:
    fed = Federation(root=root, broker_args=broker_args)
    try:
        yield fed
    finally:
        fed.stop()


def run(root: Path, args: argparse.Namespace, broker_args: tuple[str, ...]) -> Results:
    results = Results()
    with federation(root, broker_args) as fed:
        began = time.monotonic()
        for name in REGIONS[:2]:
            fed.join(name)
        wait_until(fed.converged, 60, "2 brokers to hold each other's summaries")
        results.timings_s["start_2"] = time.monotonic() - began
        print(f"2 brokers up and peered in {results.timings_s['start_2']:.1f} s", flush=True)

        began = time.monotonic()
        results.samples = forwarding(fed, args.samples)
        results.timings_s["forwarding"] = time.monotonic() - began
        for home, owner in KINDS:
            got = [s.running_ms for s in results.samples if (s.home, s.owner) == (home, owner)]
            figures = ", ".join(f"{k} {v:.0f}" for k, v in spread(got).items())
            what = "local" if home == owner else f"forwarded to {owner}"
            print(f"submitted at {home}, {what}: to running ms ({len(got)}) {figures}", flush=True)

        for n in sorted(set(args.brokers)):
            began = time.monotonic()
            for name in REGIONS[len(fed.regions) : n]:
                fed.join(name)
            wait_until(fed.converged, 60, f"{n} brokers to hold each other's summaries")
            t = traffic(fed, args.quiet_s)
            results.traffic.append(t)
            results.timings_s[f"gossip_{n}"] = time.monotonic() - began
            rates = ", ".join(f"{k} {v:.2f}" for k, v in t.msgs_per_s.items())
            print(f"{n} brokers, msgs/s per broker over {t.seconds:.1f} s: {rates}", flush=True)
    return results


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {python}"


def revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    here = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=here, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit {head}" + (" with local changes" if dirty else "")


def table(results: Results, quiet_s: float) -> str:
    local = [float(s.running_ms) for s in results.samples if not s.forwarded]
    forwarded = [float(s.running_ms) for s in results.samples if s.forwarded]
    local_seen = [s.seen_ms for s in results.samples if not s.forwarded]
    forwarded_seen = [s.seen_ms for s in results.samples if s.forwarded]
    lines = [
        "| figure | median | p90 | max | goal |",
        "|---|---|---|---|---|",
    ]
    for label, values in (
        (f"local job, submitted to running at home, ms ({len(local)})", local),
        (f"forwarded job, submitted to running at home, ms ({len(forwarded)})", forwarded),
        ("local job, submit returned to RUNNING seen by the client, ms", local_seen),
        ("forwarded job, submit returned to RUNNING seen by the client, ms", forwarded_seen),
    ):
        s = spread(values)
        lines.append(f"| {label} | {s['median']:.0f} | {s['p90']:.0f} | {s['max']:.0f} | |")
    extra = statistics.median(forwarded) - statistics.median(local)
    met = "met" if extra < GOAL_EXTRA_MS else "**missed**"
    lines.append(
        f"| forwarded - local, difference of medians, ms | {extra:.0f} | | |"
        f" < {GOAL_EXTRA_MS:.0f} ms ({met}) |"
    )
    lines += ["", "| brokers | msgs/s per broker, mean | busiest | published/s | received/s |"
              " dropped | pulls | goal |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in results.traffic:
        busiest = max(t.msgs_per_s.values())
        met = "met" if busiest < GOAL_MSGS_PER_S else "**missed**"
        lines.append(
            f"| {t.brokers} | {statistics.mean(t.msgs_per_s.values()):.2f} | {busiest:.2f} |"
            f" {statistics.mean(t.published_per_s.values()):.2f} |"
            f" {statistics.mean(t.received_per_s.values()):.2f} |"
            f" {sum(t.dropped.values())} | {sum(t.pulls.values())} |"
            f" < {GOAL_MSGS_PER_S:.0f} ({met}) |"
        )
    lines.append(f"\n(gossip: published + received envelopes over {quiet_s:.0f} s of quiet)")
    return "\n".join(lines)


def as_json(results: Results, command: str, when: str, measured: str) -> dict[str, Any]:
    local = [float(s.running_ms) for s in results.samples if not s.forwarded]
    forwarded = [float(s.running_ms) for s in results.samples if s.forwarded]
    return {
        "when": when,
        "machine": machine(),
        "revision": measured,
        "command": command,
        "to_running_ms": {"local": spread(local), "forwarded": spread(forwarded)},
        "extra_ms_medians": statistics.median(forwarded) - statistics.median(local),
        "samples": [
            {"home": s.home, "owner": s.owner, "running_ms": s.running_ms, "seen_ms": s.seen_ms}
            for s in results.samples
        ],
        "gossip": [
            {
                "brokers": t.brokers,
                "seconds": t.seconds,
                "msgs_per_s": t.msgs_per_s,
                "published_per_s": t.published_per_s,
                "received_per_s": t.received_per_s,
                "dropped": t.dropped,
                "pulls": t.pulls,
            }
            for t in results.traffic
        ],
        "timings_s": results.timings_s,
        "load": results.load,
    }


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.federation_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="10 samples each, 8 s of quiet")
    parser.add_argument("--samples", type=int, default=40, help="jobs of each kind (default 40)")
    parser.add_argument("--quiet-s", type=float, default=20.0, help="gossip window (default 20)")
    parser.add_argument(
        "--brokers", type=int, nargs="+", default=[2, 4], help="federation sizes for gossip"
    )
    parser.add_argument(
        "--republish-s", type=float, help="the brokers' --republish-s (default: theirs, 5)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, dbs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.quiet_s = 10, 8.0
    if args.samples < 2 or args.samples % 2:
        parser.error(f"--samples must be an even number >= 2, got {args.samples}")
    if not all(2 <= n <= len(REGIONS) for n in args.brokers):
        parser.error(f"--brokers must each be 2..{len(REGIONS)}, got {args.brokers}")
    broker_args: tuple[str, ...] = ()
    if args.republish_s is not None:
        broker_args = ("--republish-s", str(args.republish_s))
    command = "python -m bench.federation_bench " + " ".join(argv or sys.argv[1:])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    measured = revision()  # before the run: the tree measured is the one it started on

    # A SIGTERM or SIGHUP ends the run through the `finally` blocks that stop every child.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    root = Path(tempfile.mkdtemp(prefix="icx-federation-bench-"))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        results = run(root, args, broker_args)
    except (RuntimeError, IcxError) as exc:
        # The brokers' and agents' logs say why; --keep keeps them.
        print(f"federation_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"working folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    results.load = load
    print(f"\n(ran {time.monotonic() - started:.0f} s; {load})\n")
    print(f"Measured {when} on {machine()}, {measured}, with `{command.strip()}`.\n")
    print(table(results, args.quiet_s))
    if args.json:
        args.json.write_text(
            json.dumps(as_json(results, command.strip(), when, measured), indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
