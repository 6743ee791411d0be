"""The operators' commands: `icx broker serve`, `icx agent init|run|discover`,
`icx health`.

The broker and the agent (and through them gRPC and OR-Tools) are imported inside the
commands that run them, so that every other command starts without them."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli import member_cmd
from cli._client import add_broker_flag, broker_address, reachable_broker
from cli._output import EXIT_OK, command, print_json
from core.errors import FailedPrecondition, InvalidArgument, InvalidConfig, NotFound

if TYPE_CHECKING:
    from peering import PeeringConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def metrics_address(text: str | None) -> tuple[str, int] | None:
    """`PORT` (on loopback) or `HOST:PORT`."""
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"--metrics must be PORT or HOST:PORT, got {text!r}")
    return (host or "127.0.0.1", int(port))


def _whole_seconds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected whole seconds >= 1, got {text!r}")
    return int(text)


@command
def broker_serve(args: argparse.Namespace) -> int:
    import asyncio

    from broker.core import BrokerConfig
    from broker.policy import load_policy
    from broker.server import ServeOptions, serve

    setup_logging(args.log_level)
    config = BrokerConfig(
        heartbeat_interval_ms=args.heartbeat_ms,
        center_expiry_ms=args.center_expiry_ms,
        lease_ms=args.lease_ms,
        max_attempts=args.max_attempts,
        max_log_bytes_per_job=args.max_log_bytes,
    )
    if args.min_metering_interval_s is not None:
        config = dataclasses.replace(config, min_metering_interval_s=args.min_metering_interval_s)
    if args.policy:
        config = dataclasses.replace(config, round_template=load_policy(Path(args.policy)))
    metrics = metrics_address(args.metrics)
    options = ServeOptions(
        listen=args.listen,
        db=broker_files(args),
        store=store_url(args.store),
        metrics_port=None if metrics is None else metrics[1],
        metrics_host="127.0.0.1" if metrics is None else metrics[0],
        config=config,
        ready_file=Path(args.ready_file) if args.ready_file else None,
        solver=args.solver,
        name=args.name,
        witnesses=tuple(args.witness or ()),
        time_limit_s=args.time_limit,
        identity=Path(args.identity) if args.identity else None,
        insecure=args.insecure,
        peering=_peering(args),
        advertise=args.advertise or "",
        summary_expiry_s=args.summary_expiry_s,
        failover_s=args.failover_s,
    )
    if not 0 < options.failover_s <= 3600:  # NaN too
        raise InvalidArgument(
            f"--failover-s must be more than 0 and at most 3600, got {args.failover_s}"
        )
    asyncio.run(serve(options))
    return EXIT_OK


def store_url(url: str | None) -> str:
    """A PostgreSQL URL as given to --store ('' for none), checked for its form."""
    if url is None:
        return ""
    if not url.startswith(("postgresql://", "postgres://")):
        raise InvalidConfig(
            f"--store must be a PostgreSQL URL postgresql://USER@HOST:PORT/DB, got"
            f" {url.split('://')[0][:20]!r}... (the SQLite store is --db FILE)"
        )
    return url


def broker_files(args: argparse.Namespace) -> Path:
    """Where the broker's own files live: beside --db (its name the stem), or, with
    --store, as `broker.*` in --state-dir."""
    if args.store:
        folder = Path(args.state_dir or ".")
        if not folder.is_dir():
            raise InvalidConfig(f"--state-dir {folder} is not a folder")
        return folder / "broker"
    if args.state_dir:
        raise InvalidConfig("--state-dir goes with --store; with --db the files are beside it")
    return Path(args.db)


def _peering(args: argparse.Namespace) -> PeeringConfig | None:
    """The libp2p host's settings, when the broker peers (--peer-listen)."""
    if not args.peer_listen:
        if args.peer:
            raise InvalidConfig("--peer needs --peer-listen (the broker's own libp2p address)")
        return None
    if args.insecure:
        raise InvalidConfig(
            "--peer-listen needs the broker's membership (--identity): peers accept only "
            "admitted brokers, never an --insecure one"
        )
    from peering import CHECKPOINTS_TOPIC, SUMMARIES_TOPIC, PeeringConfig, peer_key_seed

    host, _, port = args.peer_listen.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidConfig(f"--peer-listen must be HOST:PORT, got {args.peer_listen!r}")
    key = Path(args.peer_key) if args.peer_key else broker_files(args).with_suffix(".peer-key")
    config = PeeringConfig(
        listen_host=host.strip("[]"),
        listen_port=int(port),
        bootstrap=tuple(args.peer),
        topics=(SUMMARIES_TOPIC, CHECKPOINTS_TOPIC),
        # A federation has tens of brokers, not thousands: a mesh that holds most of them
        # pushes every envelope directly, instead of relying on GossipSub's lazy gossip
        # to the peers outside the mesh (pulls remain the repair).
        mesh_degree=6,
        mesh_degree_low=4,
        mesh_degree_high=12,
        republish_s=args.republish_s,
        silence_s=3 * args.republish_s,
        test_drop_fraction=args.test_gossip_drop,
    )
    # Checked before the key file is made: a refused start leaves nothing behind.
    return dataclasses.replace(config, peer_key_seed=peer_key_seed(key))


@command
def broker_migrate(args: argparse.Namespace) -> int:
    if args.store:
        from broker.lease import active_holder
        from broker.pg_store import describe_url
        from broker.pg_store import migrate as migrate_postgres

        url = store_url(args.store)
        where = describe_url(url)
        holder = active_holder(url)
        if holder is not None:
            raise FailedPrecondition(
                f"broker database {where} is in use by the broker {holder.partition('#')[0]}:"
                " stop it (and its standbys) first"
            )
        before, after = migrate_postgres(url)
    else:
        from broker.sqlite_store import migrate

        path = Path(args.db)
        if not path.exists():
            raise NotFound(f"no database at {path}")
        where = str(path)
        before, after = migrate(path)
    if args.json:
        print_json({"store" if args.store else "db": where, "from": before, "to": after})
    elif before == after:
        print(f"{where}: schema version {after}, already current")
    else:
        print(f"{where}: schema version {before} -> {after}")
    return EXIT_OK


@command
def agent_run(args: argparse.Namespace) -> int:
    import asyncio

    from identity import Credentials, Role
    from node_agent import Agent, serve_agent, serve_metrics
    from node_agent._metering import DEFAULT_INTERVAL_S, check_interval_s
    from node_agent.backends import make_backend
    from node_agent.config import (
        identity_dir,
        load_backend,
        load_center,
        load_usage_key,
        metering_interval_s,
    )
    from node_agent.discovery import OwnRuns, center_devices

    center = load_center(Path(args.config))
    if args.metering_interval_s is not None:
        try:
            interval_s = check_interval_s(args.metering_interval_s, "--metering-interval-s")
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
    else:
        interval_s = metering_interval_s(Path(args.config)) or DEFAULT_INTERVAL_S
    backend_config = load_backend(Path(args.config))
    usage_key = load_usage_key(Path(args.config))
    creds = None
    if not args.insecure:
        folder = Path(args.identity) if args.identity else identity_dir(Path(args.config), center)
        creds = Credentials.load(folder)
        if creds.member.role is not Role.CENTER or creds.member.name != center.center_id:
            raise InvalidArgument(
                f"{folder} holds the certificate of {creds.member.describe()}, not of center "
                f"{center.center_id}"
            )
    metrics = metrics_address(args.metrics)
    setup_logging(args.log_level)
    # Beside the config by default, so that undelivered usage survives a restart.
    config = Path(args.config)
    workdir = Path(args.workdir) if args.workdir else config.parent / f"{center.center_id}.work"
    workdir.mkdir(parents=True, exist_ok=True)
    # With center.discover = "nvml", the machine's GPUs instead of the [[pools]] counts.
    center, devices = center_devices(config, center, OwnRuns(pids=frozenset({os.getpid()})))
    agent = Agent(
        center,
        broker_address(args.broker),
        workdir=workdir,
        backend=make_backend(backend_config, workdir, center),
        usage_key=usage_key,
        credentials=creds,
        metering_interval_s=interval_s,
        devices=devices,
    )
    if usage_key is None:
        logging.getLogger("icx.agent").warning(
            "no center.key_file in %s: usage will not be signed or logged", args.config
        )
    if metrics is not None:
        serve_metrics(agent, metrics[0], metrics[1])
    asyncio.run(serve_agent(agent, health=args.health))
    return EXIT_OK


@command
def agent_discover(args: argparse.Namespace) -> int:
    """What NVIDIA's management library finds on this machine and, given a center's
    config, the pools the agent would advertise with `center.discover = "nvml"`."""
    from cli._output import print_table
    from node_agent.config import load_center
    from node_agent.discovery import OwnRuns, center_pools, discover, load_source, report

    config = Path(args.config) if args.config else None
    center = load_center(config) if config else None
    source = load_source(config) if config else None
    found = discover()
    devices = center_pools(found, center, OwnRuns()) if center else None
    if args.json:
        out = report(found, devices)
        if config:
            out["config"] = {"path": str(config), "discover": source}
        print_json(out)
        return EXIT_OK
    print(f"NVML driver {found.driver_version}: {len(found.gpus)} GPUs read")
    print_table(
        ["gpu", "name", "model", "memory_gb", "power_w", "pids", "uuid"],
        [
            (
                g.index,
                g.name,
                g.model_id or "-",
                g.memory_gb,
                "-" if g.power_w is None else g.power_w,
                ",".join(map(str, g.pids)) or "-",
                g.uuid,
            )
            for g in found.gpus
        ],
    )
    for fault in found.faults:
        print(f"GPU {fault.index}: cannot be read: {fault.reason}")
    if devices is not None:
        print(f'\n{config}: center.discover = {source!r}; with "nvml" the agent offers:')
        print_table(
            ["pool", "model", "devices", "gpus", "memory_gb", "power_w", "in_use"],
            [
                (
                    p.pool_id,
                    p.accelerator,
                    p.devices_total,
                    ",".join(str(g.index) for g in devices.gpus[p.pool_id]) or "-",
                    p.memory_gb,
                    p.power_w,
                    ",".join(map(str, sorted(devices.outside[p.pool_id]))) or "-",
                )
                for p in devices.center.pools
            ],
        )
        for note in devices.notes:
            print(note)
    return EXIT_OK


@command
def health(args: argparse.Namespace) -> int:
    """Exit 0 when the broker's gRPC health check says SERVING (for probes and scripts)."""
    from cli._client import config_folder, credentials
    from cli.federation import wait_serving

    creds = credentials(args)
    folder = None if creds is None else config_folder(args.identity)
    address = reachable_broker(broker_address(args.broker, folder))
    wait_serving(address, timeout_s=args.timeout, credentials=creds)
    if args.json:
        print_json({"address": address, "status": "SERVING"})
    else:
        print("SERVING")
    return EXIT_OK


@command
def agent_init(args: argparse.Namespace) -> int:
    """Make the center's usage signing key and its membership key and request (never
    overwriting a key): the coordinator admits the request, which binds both."""
    from identity import init_member
    from ledger import SignerKey
    from node_agent.config import identity_dir, load_center, usage_key_path

    config = Path(args.config)
    center = load_center(config)
    key_path = usage_key_path(config)
    if key_path is None:
        raise InvalidArgument(
            f'{config} names no key file: add key_file = "{center.center_id}.key" to [center]'
        )
    if key_path.exists():
        key = SignerKey.parse(key_path.read_text(encoding="utf-8"))
        print(f"{key_path} exists; its verifier key:", file=sys.stderr)
    else:
        key = SignerKey.generate(center.center_id)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.text() + "\n")
        print(f"wrote {key_path} (keep it secret); its verifier key:", file=sys.stderr)
    folder = identity_dir(config, center)
    hosts = tuple(dict.fromkeys(["localhost", "127.0.0.1", *(args.host or ())]))
    request = init_member(folder, center.center_id, hosts=hosts, usage_key=key.verifier.text())
    if args.json:
        print_json(
            {
                "key_file": str(key_path),
                "verifier_key": key.verifier.text(),
                "identity": str(folder),
                "request": str(request),
            }
        )
    else:
        print(key.verifier.text())
        print(
            f"membership request: {request}: the coordinator admits it with `icx admin admit "
            f"{request} --role center --region {center.region}`; put the certificate at "
            f"{folder / 'cert.pem'} and the federation root at {folder / 'root.pem'}",
            file=sys.stderr,
        )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("broker", help="run a region broker")
    bsub = b.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    p = bsub.add_parser("serve", help="serve the broker's gRPC API until SIGTERM")
    p.add_argument(
        "--listen",
        default="127.0.0.1:7700",
        help="HOST:PORT (default 127.0.0.1:7700; port 0 picks one)",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite database file (created if missing)")
    where.add_argument(
        "--store",
        metavar="URL",
        help="PostgreSQL instead: postgresql://USER@HOST:PORT/DB (the store and the ledger;"
        " a password is best given by PGPASSWORD or ~/.pgpass, never logged)",
    )
    p.add_argument(
        "--failover-s",
        type=float,
        default=10.0,
        metavar="S",
        help="with --store: the active broker's lease; another broker started on the same "
        "database stands by and takes over this long after the active one stops (default 10)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with --store: the folder of the broker's own files (the ledger key, the peer"
        " and witness keys; default: the current folder)",
    )
    p.add_argument(
        "--metrics", help="serve Prometheus metrics on [HOST:]PORT (default host 127.0.0.1)"
    )
    p.add_argument(
        "--name",
        default="icx.local/broker",
        help="the broker's name, the origin of its ledger checkpoints (default icx.local/broker)",
    )
    p.add_argument(
        "--witness",
        action="append",
        help="a witness's cosignature/v1 verifier key whose cosignatures to keep (repeatable)",
    )
    p.add_argument(
        "--solver",
        choices=("auto", "greedy", "flow", "cpsat"),
        default="auto",
        help="the matcher (default auto: CP-SAT where the round is small enough)",
    )
    p.add_argument(
        "--time-limit", type=float, default=2.0, help="matcher seconds per round (default 2)"
    )
    p.add_argument(
        "--policy", help="the coordinator's policy and network (JSON; see broker/policy.py)"
    )
    p.add_argument("--heartbeat-ms", type=int, default=1_000, help="agents' heartbeat interval")
    p.add_argument(
        "--center-expiry-ms", type=int, default=10_000, help="silence that takes a center out"
    )
    p.add_argument(
        "--lease-ms", type=int, default=10_000, help="how long an unanswered claim holds"
    )
    p.add_argument(
        "--max-attempts", type=int, default=3, help="times a job may be lost before it fails"
    )
    p.add_argument(
        "--min-metering-interval-s",
        type=_whole_seconds,
        help="refuse a center's metering intervals shorter than this, but for a run's last "
        "(default 60)",
    )
    p.add_argument(
        "--max-log-bytes",
        type=int,
        default=1 << 20,
        help="output kept per job (default 1 MiB; the center keeps all of it)",
    )
    p.add_argument(
        "--ready-file", help='write {"port", "metrics_port", "pid"} here (JSON) once serving'
    )
    p.add_argument(
        "--identity",
        metavar="DIR",
        help="the broker's member folder (icx broker init + its admitted certificate)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no membership checks, loopback only: for development",
    )
    g = p.add_argument_group("federation (peer brokers over libp2p; needs --identity)")
    g.add_argument(
        "--peer-listen",
        metavar="HOST:PORT",
        help="peer with other brokers: the libp2p listen address (port 0 picks one)",
    )
    g.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer broker to keep connected, /ip4/H/tcp/P/p2p/ID (repeatable)",
    )
    g.add_argument("--peer-key", help="the libp2p key seed file (default: next to --db, .peer-key)")
    g.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the gRPC address peers forward jobs to (default: --listen with its port)",
    )
    g.add_argument(
        "--summary-expiry-s",
        type=float,
        default=15.0,
        help="believe a peer's offer summary this long after it was signed (default 15)",
    )
    g.add_argument(
        "--republish-s",
        type=float,
        default=5.0,
        help="re-sign and publish this broker's summary this often (default 5)",
    )
    # Tests only: discard this fraction of the gossip received, as a lossy mesh would.
    g.add_argument("--test-gossip-drop", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=broker_serve)
    member_cmd.register_broker(bsub)

    p = bsub.add_parser(
        "migrate",
        help="bring a broker database to this release's schema (back it up first)",
        description="Bring the broker's store to the schema this release uses, in one "
        "transaction: it completes or leaves the database as it was. A broker refuses to "
        "serve a database of another schema version.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite database file")
    where.add_argument("--store", metavar="URL", help="PostgreSQL: postgresql://USER@HOST:PORT/DB")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=broker_migrate)

    p = sub.add_parser(
        "health",
        help="check a broker (or an agent's --health endpoint): SERVING exits 0, else 3",
    )
    add_broker_flag(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=health)

    a = sub.add_parser("agent", help="run a center's node agent")
    asub = a.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    p = asub.add_parser(
        "init", help="make the center's usage signing key and print its verifier key"
    )
    p.add_argument("--config", required=True, help="center config (TOML) naming key_file")
    p.add_argument(
        "--host", action="append", help="a name its health endpoint is dialled by (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=agent_init)

    p = asub.add_parser("run", help="connect to the broker and serve the center until SIGTERM")
    p.add_argument("--config", required=True, help="center config (TOML)")
    add_broker_flag(p)
    p.add_argument(
        "--workdir",
        help="where jobs run and undelivered usage records wait "
        "(default: CENTER_ID.work beside the config)",
    )
    p.add_argument(
        "--metrics", help="serve Prometheus metrics on [HOST:]PORT (default host 127.0.0.1)"
    )
    p.add_argument(
        "--health",
        metavar="HOST:PORT",
        help="serve gRPC health here for the center's monitoring (SERVING while connected)",
    )
    p.add_argument(
        "--metering-interval-s",
        type=int,
        metavar="SECONDS",
        help="sign a running job's usage this often (default: [center] metering_interval_s "
        "of the config, else 900)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=agent_run)

    p = asub.add_parser(
        "discover",
        help="show the GPUs NVIDIA's management library finds here (and the pools they make)",
        description="Read this machine's NVIDIA GPUs through NVML: model, memory, power "
        "limit, the processes using each. With --config, also the pools the agent would "
        'advertise with center.discover = "nvml" (GPUs in use by any process are marked: '
        "this command owns none). Exits 3 when NVML is not there.",
    )
    p.add_argument("--config", help="center config (TOML) whose [[pools]] to fill")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=agent_discover)
