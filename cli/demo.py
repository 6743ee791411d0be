"""`icx demo`: the 17 reference centers under the brokers of their 8 hubs on this machine,
the brokers peering over libp2p; a Philly-shaped workload submitted at the hubs' brokers,
live progress, where each job was submitted and where it ran, and the allocation by hub
and center as the ledgers recorded it."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli._demo_report import counts, print_report, summarise
from cli._output import EXIT_FAILED, EXIT_OK, command, print_json
from core.errors import InvalidArgument, Unavailable
from core.types import CenterDescriptor, Job, JobSpec

if TYPE_CHECKING:
    from cli.federation import LocalFederation
    from cli.slurm_local import LocalSlurm
    from client import BrokerClient
    from ledger import UsageRecord
    from scenario import DemoJob

STALL_S = 3.0
# The demo's tenants: each submits its share of the workload as one of its users, and
# the coordinator (who sees every tenant's jobs) watches the whole queue.
TENANTS = ("lab-a", "lab-b", "lab-c")
# Where the workload is submitted: at every hub's broker, most at the eastern hubs, which
# have the users and the data (the western ones have cheap, green power). Weights, in
# the order the brokers start.
SUBMIT_WEIGHTS = {"JJJ": 4, "YRD": 5, "GBA": 4, "CY": 2, "IM": 1, "GZ": 1, "GS": 1, "NX": 1}
# The brokers start in waves, those of a wave side by side, each dialling every broker
# of the waves before it: two, then the six others, each connected to both of the first.
WAVES = (2, 6)
# How long a broker may take to serve, or the centers to connect, or the brokers to see
# each other's: generous, since the 25 processes share this machine's cores.
START_S = 60.0
# Centers lost after 5 s; summaries re-signed every 2 s, so a lost one is pulled after 6.
BROKER_ARGS = ("--center-expiry-ms", "5000", "--republish-s", "2")
# A one-device job of any model: a broker quotes it at every pool it knows of.
_PROBE = JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",))


def center_hub(center: CenterDescriptor) -> str:
    """The hub whose broker a center joins: its own, or for a center in no hub (Wuhan,
    Xi'an) the hub of its latency node (Wuhan's is Wuhu, YRD; Xi'an's Qingyang, GS)."""
    from scenario import CENTER_NODE, HUB_NODES

    if center.region in HUB_NODES:
        return center.region
    node = CENTER_NODE[center.center_id]
    return next(hub for hub, nodes in HUB_NODES.items() if node in nodes)


def submission_hubs(n: int, weights: Mapping[str, int] = SUBMIT_WEIGHTS) -> list[str]:
    """The hub each of n jobs is submitted at: a smooth weighted round-robin (each hub
    gets its share of every stretch of jobs, interleaved, the same every run)."""
    total = sum(weights.values())
    credit = dict.fromkeys(weights, 0)
    out = []
    for _ in range(n):
        for hub, weight in weights.items():
            credit[hub] += weight
        hub = max(credit, key=lambda h: credit[h])
        credit[hub] -= total
        out.append(hub)
    return out


@dataclass(slots=True)
class Progress:
    """Progress on stderr: one rewritten line on a terminal, a line every few s otherwise."""

    quiet: bool
    tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _shown: str = ""  # off a terminal: the last state printed

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def update(self, text: str, final: bool = False) -> None:
        """Show the state now (`text`); `final`: the last one, which stays. Off a terminal,
        a line at most every 3 s, and the final state unless it is the line just printed."""
        if self.quiet:
            return
        stamped = f"[{time.monotonic() - self.started:5.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + stamped + ("\n" if final else ""))
            sys.stderr.flush()
        elif final and text == self._shown:
            return
        elif final or time.monotonic() - self._last >= 3.0:
            self._last, self._shown = time.monotonic(), text
            print(stamped, file=sys.stderr, flush=True)


def _progress_line(submitted: int, total: int, jobs: Sequence[Job]) -> str:
    order = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
    by_state = counts(jobs)
    parts = " ".join(f"{s} {by_state[s]}" for s in order if by_state.get(s))
    forwarded = sum(1 for j in jobs if j.broker)
    return (
        f"submitted {submitted}/{total}  {parts}{f'  (forwarded {forwarded})' if forwarded else ''}"
    )


@dataclass(slots=True)
class Hubs:
    """The demo's federation: a broker per hub (in `SUBMIT_WEIGHTS`' order), each in
    its own folder `ROOT/HUB` with its hub's centers, all admitted by one throw-away
    root of trust in `ROOT/federation`."""

    root: Path
    brokers: dict[str, LocalFederation]
    hub_of: dict[str, str]  # center id -> its hub

    @classmethod
    def plan(
        cls, root: Path, centers: Sequence[CenterDescriptor], broker_args: tuple[str, ...]
    ) -> Hubs:
        from cli.federation import LocalFederation

        brokers = {
            hub: LocalFederation(
                root=root / hub,
                authority_root=root,
                broker_name=f"broker-{hub}",
                broker_region=hub,
                broker_args=broker_args,
                peering=True,
            )
            for hub in SUBMIT_WEIGHTS
        }
        return cls(root=root, brokers=brokers, hub_of={c.center_id: center_hub(c) for c in centers})

    @property
    def first(self) -> LocalFederation:
        return next(iter(self.brokers.values()))

    def centers_of(self, hub: str) -> list[str]:
        return sorted(c for c, h in self.hub_of.items() if h == hub)

    def start(self, port: int, start_agents: Callable[[str, LocalFederation], None]) -> None:
        """Start the brokers in `WAVES`, those of a wave side by side, and each hub's
        agents (`start_agents(hub, broker)`) as soon as its broker serves, while the next
        wave starts. `port` (0: any) is the first broker's gRPC port, the others take the
        next ones."""
        from identity import Role

        # Certificates first, one at a time (they share the root's folder).
        for fed in self.brokers.values():
            fed.member(fed.broker_name, Role.BROKER, region=fed.broker_region)
        order = list(self.brokers.values())
        ports = {fed.broker_name: port + i if port else 0 for i, fed in enumerate(order)}
        started: list[LocalFederation] = []
        for size in WAVES:
            wave, order = order[:size], order[size:]
            for fed in wave:
                fed.peers = tuple(f.peer_address for f in started)
            with ThreadPoolExecutor(len(wave)) as pool:
                running = [
                    pool.submit(fed.start_broker, ports[fed.broker_name], START_S) for fed in wave
                ]
                for done in running:
                    done.result()
            for fed in wave:
                start_agents(fed.broker_region, fed)
            started += wave

    def stop(self) -> None:
        """Every agent, then every broker: each signalled at once, then waited for."""
        feds = self.brokers.values()
        children = [c for fed in feds for c in fed.agents.values()]
        children += [fed.broker for fed in feds if fed.broker is not None]
        for child in children:
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
        for fed in feds:
            fed.stop()


@command
def demo(args: argparse.Namespace) -> int:
    from identity import Role
    from scenario import demo_workload, load_centers, region_latency_ms

    _check(args)
    centers = load_centers(scale=args.scale, min_devices=4)
    slurm_center = _slurm_center(centers, args.slurm_center) if args.backend == "slurm" else None
    progress = Progress(quiet=args.json and not args.keep)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="icx-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = demo_workload(args.jobs, span_s=args.span)
    policy = root / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "weights": {"cost": 1, "carbon": args.carbon_weight, "latency": 0},
                "carbon_price_yuan_per_tonne": 100,
                "latency_ms": region_latency_ms({c.center_id: c.region for c in centers}),
            },
            indent=1,
        )
    )
    hubs = Hubs.plan(root, centers, (*BROKER_ARGS, "--policy", str(policy)))
    slurm: LocalSlurm | None = None
    started = progress.started
    keep = False
    try:
        if slurm_center is not None:
            from cli.slurm_local import LocalSlurm

            gpus = slurm_center.pools[0].devices_total
            slurm = LocalSlurm(root=root / "slurm", gpus=gpus, cpus=max(16, gpus))
            progress.say(f"starting a one-node Slurm with {gpus} fake GPUs in {slurm.root}")
            slurm.start()
        progress.say(
            f"starting {len(hubs.brokers)} hub brokers, peering over libp2p, and "
            f"{len(centers)} centers in {root}"
        )

        def start_agents(hub: str, fed: LocalFederation) -> None:
            for center in centers:
                if hubs.hub_of[center.center_id] != hub:
                    continue
                if slurm is not None and center is slurm_center:
                    progress.say(f"center {center.center_id} ({hub}) runs its jobs through Slurm")
                    pools = [center.pools[0].pool_id]
                    fed.start_agent(center, backend_toml=slurm.backend_toml(pools))
                else:
                    fed.start_agent(center)

        hubs.start(args.port, start_agents)
        with contextlib.ExitStack() as clients:
            # Over mutual TLS: the coordinator reads each broker's queue, allocation and
            # ledger; each tenant's user submits that tenant's jobs at the hubs' brokers.
            coordinators = {
                hub: clients.enter_context(fed.client(role=Role.COORDINATOR))
                for hub, fed in hubs.brokers.items()
            }
            users = _users(hubs, clients)
            submitting = clients.enter_context(ThreadPoolExecutor(len(hubs.brokers)))
            for hub, client in coordinators.items():
                _wait_connected(client, len(hubs.centers_of(hub)), timeout_s=START_S)
            _wait_meshed(coordinators, set(hubs.hub_of), timeout_s=START_S)
            up_s = time.monotonic() - started
            progress.say(
                f"federation up in {up_s:.1f} s: {len(hubs.brokers)} brokers, each seeing "
                f"the {len(centers)} centers (its own, and its peers' through their summaries)"
            )
            if args.keep and args.jobs == 0:
                keep = True
                return _print_keep(hubs, args.json)
            progress.say(
                f"submitting {len(workload)} jobs shaped like the Philly trace "
                f"over {args.span:.0f} s at the {len(hubs.brokers)} hubs' brokers"
            )
            submitted = _run(workload, users, coordinators, submitting, progress, args.timeout)
            jobs = [j for hub_jobs in submitted.values() for j in hub_jobs]
            ran = sum(1 for j in jobs if j.state.terminal and j.center_id is not None)
            forwarded = {j.job_id for j in jobs if j.broker}
            ledger, records = _ledgers(hubs, coordinators, ran, forwarded)
            statuses = [c for client in coordinators.values() for c in client.centers()]
            summary = summarise(submitted, statuses, hubs.hub_of, records)
            summary["brokers"] = [
                {"hub": hub, "broker": fed.broker_name, "address": fed.address,
                 "centers": hubs.centers_of(hub), "jobs_submitted": len(submitted.get(hub, ()))}
                for hub, fed in hubs.brokers.items()
            ]  # fmt: skip
            summary["ledger"] = ledger
            owed = sum(1 for r in records if r.job_id in forwarded)
            summary["settlement"] = _settlement(hubs, owed, _period())
            if slurm is not None and slurm_center is not None:
                summary["slurm"] = _slurm_summary(slurm, slurm_center.center_id)
        total_s = time.monotonic() - started
        summary["seconds_up"] = round(up_s, 2)
        summary["seconds_total"] = round(total_s, 2)
        seconds = {"up": up_s, "total": total_s}
        if args.keep:
            keep = True
            if not args.json:
                print_report(summary, seconds, kept_folder=True, still_running=True)
            return _print_keep(hubs, args.json)
        if args.json:
            print_json(summary)
        else:
            # Without --dir, the folder (and with it the ledgers) goes when the demo ends.
            print_report(summary, seconds, kept_folder=bool(args.dir))
        ok = summary["jobs_unfinished"] == 0 and summary["jobs_failed"] == 0
        return EXIT_OK if ok else EXIT_FAILED
    finally:
        if not keep:
            # Even when no one reads any more (`icx demo | head`), stop every process.
            with contextlib.suppress(BrokenPipeError):
                progress.say("stopping the federation")
            hubs.stop()
            if slurm is not None:
                slurm.stop()
            if not args.dir:  # a folder of our own, with the throw-away root key: gone
                shutil.rmtree(root, ignore_errors=True)
        elif slurm is not None:
            print(
                f"Slurm keeps running too (SLURM_CONF={slurm.conf}); stop it with:\n"
                f"  kill {' '.join(map(str, slurm.pids))}",
                file=sys.stderr,
            )


def _check(args: argparse.Namespace) -> None:
    """Refuse numbers out of range before anything starts."""
    if args.jobs < 0:
        raise InvalidArgument(f"--jobs must be 0 or more, got {args.jobs}")
    if args.scale < 1:
        raise InvalidArgument(f"--scale must be 1 or more, got {args.scale}")
    if args.span < 0:
        raise InvalidArgument(f"--span must be 0 or more seconds, got {args.span}")
    if args.timeout <= 0:
        raise InvalidArgument(f"--timeout must be more than 0 seconds, got {args.timeout}")
    highest = 65535 - (len(SUBMIT_WEIGHTS) - 1)  # the brokers take port .. port + 7
    if args.port != 0 and not 1 <= args.port <= highest:
        raise InvalidArgument(
            f"--port must be 0 (any free ones) or 1..{highest} (the {len(SUBMIT_WEIGHTS)} "
            f"brokers take it and the next ones), got {args.port}"
        )


def _users(hubs: Hubs, clients: contextlib.ExitStack) -> dict[tuple[str, str], BrokerClient]:
    """A client of every hub's broker for a user of every tenant: one member of each
    tenant, admitted once, reaches any broker of the federation."""
    from client import BrokerClient
    from identity import Credentials, Role

    out: dict[tuple[str, str], BrokerClient] = {}
    for tenant in TENANTS:
        member = hubs.first.member(f"{tenant}.user", Role.USER, tenant=tenant)
        creds = Credentials.load(member)
        for hub, fed in hubs.brokers.items():
            out[hub, tenant] = clients.enter_context(BrokerClient(fed.address, creds))
    return out


def _run(
    workload: Sequence[DemoJob],
    users: Mapping[tuple[str, str], BrokerClient],
    coordinators: Mapping[str, BrokerClient],
    submitting: ThreadPoolExecutor,
    progress: Progress,
    timeout_s: float,
) -> dict[str, tuple[Job, ...]]:
    """Submit the workload as it arrives, each job at its hub's broker as one of the
    tenants' users, and follow it until every job has ended, or what is left waits for
    capacity that will not come, or `timeout_s`; each hub's jobs then."""
    at_hub = submission_hubs(len(workload))
    t0 = time.monotonic()
    ids: list[str] = []
    pending = list(workload)
    submitted: dict[str, tuple[Job, ...]] = {}
    jobs: list[Job] = []
    last_change, last_counts = time.monotonic(), dict[str, int]()
    while time.monotonic() < t0 + timeout_s:
        now = time.monotonic() - t0
        due: list[tuple[BrokerClient, JobSpec]] = []
        while pending and pending[0].at_s <= now:
            n = len(ids) + len(due)
            user = users[at_hub[n], TENANTS[n % len(TENANTS)]]
            due.append((user, pending.pop(0).spec))
        ids += _submit(submitting, due)
        submitted = _submitted(coordinators)
        jobs = [j for hub_jobs in submitted.values() for j in hub_jobs]
        by_state = counts(jobs)
        done = sum(1 for j in jobs if j.state.terminal)
        progress.update(_progress_line(len(ids), len(workload), jobs))
        if not pending and done == len(ids):
            break
        # What is left can wait for capacity that will not come: nothing runs, and the
        # queue has not moved for a while.
        active = sum(by_state.get(s, 0) for s in ("claimed", "running"))
        if pending or active or by_state != last_counts:
            last_change, last_counts = time.monotonic(), by_state
        elif time.monotonic() - last_change > STALL_S:
            break
        time.sleep(0.25)
    progress.update(_progress_line(len(ids), len(workload), jobs), final=True)
    return submitted


def _submit(pool: ThreadPoolExecutor, due: Sequence[tuple[BrokerClient, JobSpec]]) -> list[str]:
    """Submit the jobs due now, each broker's in turn and the brokers side by side (a
    burst of the trace reaches every hub at once); their ids, in `due`'s order."""
    by_broker: dict[str, list[int]] = {}
    for i, (client, _) in enumerate(due):
        by_broker.setdefault(client.address, []).append(i)
    ids = [""] * len(due)

    def submit(indexes: list[int]) -> None:
        for i in indexes:
            client, spec = due[i]
            ids[i] = client.submit(spec).job_id

    for done in [pool.submit(submit, indexes) for indexes in by_broker.values()]:
        done.result()
    return ids


def _submitted(coordinators: Mapping[str, BrokerClient]) -> dict[str, tuple[Job, ...]]:
    """Each hub's jobs that its broker took from users; a job forwarded there from
    another hub is its home broker's."""
    return {
        hub: tuple(j for j in client.list_jobs().jobs if not j.home)
        for hub, client in coordinators.items()
    }


def _slurm_center(centers: Sequence[CenterDescriptor], center_id: str) -> CenterDescriptor:
    """The center whose jobs go through Slurm: `center_id`, else the largest center
    with one pool."""
    if center_id:
        for center in centers:
            if center.center_id == center_id and len(center.pools) == 1:
                return center
        raise InvalidArgument(f"--slurm-center {center_id!r}: no such center with one pool")
    single = [c for c in centers if len(c.pools) == 1]
    if not single:
        raise InvalidArgument("--backend slurm needs a center with one pool; the demo has none")
    return max(single, key=lambda c: c.pools[0].devices_total)


def _slurm_summary(slurm: LocalSlurm, center_id: str) -> dict[str, Any]:
    """What Slurm itself says it ran for the center."""
    from node_agent.backends._slurm import JOB_PREFIX, job_states

    mine = [j for j in slurm.jobs() if str(j.get("name", "")).startswith(JOB_PREFIX)]
    states: dict[str, int] = {}
    for j in mine:
        state = "/".join(sorted(job_states(j)))
        states[state] = states.get(state, 0) + 1
    return {"center": center_id, "slurm_jobs": len(mine), "states": states, "root": str(slurm.root)}


def _ledgers(
    hubs: Hubs, coordinators: Mapping[str, BrokerClient], ran: int, forwarded: Container[str]
) -> tuple[dict[str, Any], list[UsageRecord]]:
    """Each hub broker's signed usage log after the run: its latest checkpoint, and the
    entries it covers: the usage records (runs at the hub's centers, returned too) and the
    accepted records (the hub's own jobs' runs at other hubs, from their logs). A center
    reports a run's usage to its own hub's broker just after the run ends, and the job's
    home broker then asks for that record, so wait (up to 20 s) until the checkpoints hold
    a usage record for each of the `ran` jobs that ended on a center, and an accepted
    record for each of those usage records whose job is among the `forwarded`."""
    from broker.ledger import ledger_paths

    deadline = time.monotonic() + 20
    while True:
        brokers: list[dict[str, Any]] = []
        records: list[UsageRecord] = []
        accepted = 0
        for hub, client in coordinators.items():
            lines = client.checkpoint().splitlines()
            size = int(lines[1])
            path = ledger_paths(hubs.brokers[hub].db)[0]
            mine, taken = _ledger_entries(path, size)
            records += mine
            accepted += taken
            brokers.append(
                {"hub": hub, "origin": lines[0], "entries": size, "usage_records": len(mine),
                 "accepted_records": taken, "root": lines[2], "db": str(path)}
            )  # fmt: skip
        owed = sum(1 for r in records if r.job_id in forwarded)
        if (len(records) >= ran and accepted >= owed) or time.monotonic() > deadline:
            counted = {"usage_records": len(records), "accepted_records": accepted}
            return {**counted, "brokers": brokers}, records
        time.sleep(0.1)


def _period() -> str:
    return time.strftime("%Y-%m", time.gmtime())


def _settlement(hubs: Hubs, owed: int, period: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The period across the hubs, from every hub broker's ledger: what each hub owes the
    hubs that ran its forwarded jobs and the net positions, once the home brokers have
    accepted the `owed` records of those runs (each asks the owner after the job ends),
    or after `timeout_s`. Every accepted record is checked against its owner's log."""
    from broker.ledger import ledger_paths
    from ledger import LedgerStore, Log
    from ledger.settlement import federation_view

    deadline = time.monotonic() + timeout_s
    while True:
        stores = [LedgerStore(ledger_paths(fed.db)[0]) for fed in hubs.brokers.values()]
        try:
            view = federation_view(
                [
                    Log(store).region(fed.broker_name)
                    for store, fed in zip(stores, hubs.brokers.values(), strict=True)
                ],
                period=period,
            )
        finally:
            for store in stores:
                store.close()
        if view.accepted >= owed or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    hub = {fed.broker_name: name for name, fed in hubs.brokers.items()}
    return {
        "period": period,
        "currency": view.currency,
        "accepted_records": view.accepted,
        "forwarded_records": owed,
        "flows": [
            {
                "payer": hub[payer],
                "payee": hub[payee],
                "amount_minor": amount,
                "records": len(view.statements[payer].region_entries[(payer, payee)]),
            }
            for (payer, payee), amount in sorted(view.regions.items())
        ],
        "hub_positions": {  # in the plan's order, as every table
            name: view.region_positions[fed.broker_name]
            for name, fed in hubs.brokers.items()
            if fed.broker_name in view.region_positions
        },
        "positions_sum_minor": sum(view.positions.values()),
        "hub_positions_sum_minor": sum(view.region_positions.values()),
    }


def _ledger_entries(path: Path, size: int) -> tuple[list[UsageRecord], int]:
    """The usage records among the first `size` entries of a broker's ledger file, and
    how many of those entries are accepted records, read with the ledger library (the
    broker keeps writing it; SQLite's WAL lets this read alongside)."""
    from ledger import LedgerStore, Log

    with LedgerStore(path) as store:
        log = Log(store)
        records = [record for _, record in log.records(0, size)]
        return records, sum(1 for _ in log.accepted(0, size))


def _wait_connected(client: BrokerClient, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for c in client.centers() if c.connected and c.offer is not None) >= n:
            return
        time.sleep(0.1)
    raise Unavailable(f"not all {n} centers connected to {client.address} within {timeout_s} s")


def _wait_meshed(
    coordinators: Mapping[str, BrokerClient], centers: set[str], timeout_s: float
) -> None:
    """Until every hub's broker quotes pools of all `centers`: its own, and every other
    hub's through that hub's gossiped summary."""
    deadline = time.monotonic() + timeout_s
    missing = {hub: centers for hub in coordinators}
    while True:
        for hub in list(missing):
            missing[hub] = centers - {q.center_id for q in coordinators[hub].quote(_PROBE)}
            if not missing[hub]:
                del missing[hub]
        if not missing:
            return
        if time.monotonic() > deadline:
            unseen = "; ".join(f"{hub} not {' '.join(sorted(m))}" for hub, m in missing.items())
            raise Unavailable(
                f"the hubs' brokers did not all see each other's centers within {timeout_s} s "
                f"({unseen}); see the brokers' logs"
            )
        time.sleep(0.1)


def _print_keep(hubs: Hubs, as_json: bool) -> int:
    from identity import Role

    first = hubs.first
    feds = hubs.brokers.values()
    pids: dict[str, int | None] = {
        **{fed.broker_name: fed.broker.pid if fed.broker else None for fed in feds},
        **{f"agent-{cid}": child.pid for fed in feds for cid, child in fed.agents.items()},
    }
    # Member folders to reach a broker with (--identity DIR or $ICX_CONFIG): the
    # coordinator's, and a user of the first tenant's; both reach every hub's broker.
    coordinator = first.authority.folder / "coordinator"
    user = first.member(f"{TENANTS[0]}.user", Role.USER, tenant=TENANTS[0])
    brokers = {
        hub: {
            "address": fed.address,
            "db": str(fed.db),
            "peer_address": fed.peer_address,
            "metrics_port": fed.metrics_port,
            "centers": hubs.centers_of(hub),
        }
        for hub, fed in hubs.brokers.items()
    }
    # The coordinator's dashboard on the first hub's broker (its region's view).
    from cli.dashboard_cmd import start_beside

    dashboard = start_beside(first, coordinator)
    pids["dashboard"] = dashboard.child.pid
    info = {
        "dashboard": {
            "url": dashboard.url,
            "token_url": f"{dashboard.url}?token={dashboard.token}",
        },
        "broker": first.address,
        "brokers": brokers,
        "root": str(hubs.root),
        "federation": str(first.authority.folder),
        "coordinator": str(coordinator),
        "user": {"tenant": TENANTS[0], "identity": str(user)},
        "pids": pids,
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    pid_list = " ".join(str(p) for p in pids.values() if p)
    # The command as this shell can run it (make demo runs the one in .venv/bin).
    icx = "icx" if shutil.which("icx") else str(Path(sys.executable).parent / "icx")
    listing = "\n".join(
        f"  {hub:<4} {fed.address:<16} {' '.join(hubs.centers_of(hub))}"
        for hub, fed in hubs.brokers.items()
    )
    hub = first.broker_region
    print(
        f"""
The federation keeps running over mutual TLS: a broker per hub, peering over libp2p,
each with its hub's centers (logs in {hubs.root}/HUB/logs):
{listing}
As the coordinator (sees every tenant's jobs, reads rounds and the whole ledger), at {hub}:
  export ICX_BROKER={first.address}
  {icx} whoami --identity {coordinator}
  {icx} centers --identity {coordinator}    # {hub}'s own centers and their free devices
  {icx} jobs --all --identity {coordinator} # every tenant's jobs submitted or run at {hub}
  {icx} admin dump-round --identity {coordinator} --out round.json
  {icx} federation peers --identity {coordinator} # the other hubs' brokers, as {hub} hears them
As a user of tenant {TENANTS[0]} (submits, sees and cancels only {TENANTS[0]}'s jobs), at any hub:
  export ICX_CONFIG={user}
  {icx} quote --devices 2 --accelerator ascend-910 --hours 1   # every hub's pools
  {icx} submit --devices 2 --accelerator ascend-910 --hours 1 -- sh -c 'echo hi; sleep 5'
  {icx} jobs        # newest first; a job run at another hub names its broker
  {icx} logs -f JOB # follow a job's output, wherever it runs
  {icx} ledger checkpoint
  curl -s 127.0.0.1:{first.metrics_port}/metrics | grep icx_
The coordinator's dashboard (the {hub} broker's view): {dashboard.url}
  open it with its token (nothing shows without it): {dashboard.url}?token={dashboard.token}
The federation's root and its coordinator are in {first.authority.folder}.
Stop it with:
  kill {pid_list}"""
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the 17 reference centers under their 8 hubs' brokers and a Philly-shaped "
        "workload on this machine",
        description=(
            "Start a broker for each of the 8 hubs, peering over libp2p, and the 17 "
            "reference centers under their hubs' brokers as local processes (SQLite in a "
            "temporary folder), submit a workload shaped like the Philly GPU trace at the "
            "hubs' brokers, show progress, print where each hub's jobs ran and the "
            "allocation by hub and center as the brokers' ledgers recorded it, and stop."
        ),
    )
    p.add_argument(
        "--jobs", type=int, default=240, help="jobs to submit (default 240; 0 with --keep: none)"
    )
    p.add_argument(
        "--span", type=float, default=20.0, help="seconds over which the jobs arrive (default 20)"
    )
    p.add_argument(
        "--scale", type=int, default=256, help="divide each center's devices by this (default 256)"
    )
    p.add_argument(
        "--timeout", type=float, default=110.0, help="give up after this many seconds (default 110)"
    )
    p.add_argument(
        "--carbon-weight",
        type=int,
        default=0,
        help="the policy's carbon weight (default 0: cost only; try 20 to see work move to "
        "clean grids)",
    )
    p.add_argument(
        "--backend",
        choices=("process", "slurm"),
        default="process",
        help="slurm: one center runs its jobs through a one-node Slurm started for the "
        "demo (needs root and Debian's slurmctld slurmd slurm-client munge)",
    )
    p.add_argument(
        "--slurm-center",
        default="",
        metavar="ID",
        help="with --backend slurm: the center that uses Slurm (default: the largest "
        "center with one pool)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="the first hub's broker port, the others' the next ones (default: any free ones)",
    )
    p.add_argument(
        "--dir",
        help="keep the databases and logs here (default: a temporary folder, removed at the end "
        "unless --keep)",
    )
    p.add_argument(
        "--keep", action="store_true", help="leave the federation running and print how to use it"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON summary (with --keep: addresses and pids)",
    )
    p.set_defaults(func=demo)
