"""Run a broker: the gRPC server (BrokerService, AgentService, health, reflection), the
matching and expiry loops, and the metrics endpoint, under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker.acceptance import Acceptance
from broker.agent_link import AgentServicer
from broker.authz import Gate
from broker.core import Broker, BrokerConfig
from broker.federation_service import FederationServicer
from broker.ledger import BrokerLedger
from broker.national_service import NationalServicer
from broker.peers import Peers, places_of, summary_payload
from broker.service import AdminServicer, BrokerServicer, LedgerServicer
from broker.sqlite_store import SqliteStore
from broker.store import Store
from broker.witnessing import Witnessing, announcement, log_origin, witness_key
from core.errors import FailedPrecondition, InvalidArgument
from core.ports import check_bindable
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    national_pb2,
    national_pb2_grpc,
)
from identity import Credentials, Revocations, Role
from identity.certs import served_hosts
from identity.files import REVOCATIONS
from identity.revocation import EMPTY, verify_revocations
from identity.tls import Trust, server_credentials
from ledger.store import LogStore
from matcher import make_matcher

if TYPE_CHECKING:  # peering loads libp2p and trio: only a federated broker imports it
    from broker.lease import Lease, LeaseLost
    from peering import PeerHost, PeeringConfig, Summary

log = logging.getLogger("icx.broker")

SERVICES = (
    broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name,
    national_pb2.DESCRIPTOR.services_by_name["NationalService"].full_name,
)

DEFAULT_ORIGIN = "icx.local/broker"

# How often the broker looks whether its offer summary changed (published at most every
# peering publish interval).
SUMMARY_CHECK_S = 0.25

# The agent stream is long-lived: keep it alive through idle periods and notice a dead
# peer within seconds.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_concurrent_streams", 10_000),
    # gRPC sets SO_REUSEPORT by default: a second broker on the same port would start and
    # share it, and clients would land on either. A taken port must be an error.
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    listen: str
    # The SQLite store's file; with `store` (a PostgreSQL URL) the store and the ledger
    # live in that database instead, and `db` names only the broker's own files beside
    # it (the ledger key `<db>.ledger.key`, the peer and witness keys).
    db: Path
    store: str = ""
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Written once serving: {"port", "metrics_port", "pid"}, for scripts and tests.
    ready_file: Path | None = None
    # The matcher: "auto" (CP-SAT where the round is small enough), "greedy", "flow",
    # "cpsat"; and its time limit per round.
    solver: str = "auto"
    time_limit_s: float = 2.0
    # The broker's name: the origin of its ledger's checkpoints (a peering broker's
    # default is icx/<its member name>).
    name: str = DEFAULT_ORIGIN
    # Witnesses (cosignature/v1 verifier keys) whose cosignatures the ledger keeps.
    witnesses: tuple[str, ...] = ()
    checkpoint_interval_s: float = 2.0
    config: BrokerConfig = field(default_factory=BrokerConfig)
    # The broker's member folder (icx broker init + its admitted certificate): mutual
    # TLS, every caller a member. Or `insecure`: plaintext on loopback, callers declare
    # who they are.
    identity: Path | None = None
    insecure: bool = False
    # Federation: the libp2p host (None: this broker stands alone); the gRPC address
    # peers forward to (default: the listen address with the bound port); how long a
    # peer's summary is believed after its broker signed it.
    peering: PeeringConfig | None = None
    advertise: str = ""
    summary_expiry_s: float = 15.0
    # With PostgreSQL: how long the active broker's lease lasts (broker/lease.py). A
    # standby on the same database takes over this long after the active one stopped.
    failover_s: float = 10.0


def open_store(options: ServeOptions, lease: Lease | None = None) -> Store:
    """The broker's store: PostgreSQL at `options.store` (every write fenced by the
    lease), else SQLite at `options.db`."""
    if options.store:
        from broker.pg_store import PostgresStore  # psycopg: only a broker that uses it

        if lease is None:
            return PostgresStore(options.store)
        return PostgresStore(options.store, fence=lease.check, exclusive=False)
    return SqliteStore(options.db)


def open_ledger_store(
    options: ServeOptions, lease: Lease | None = None
) -> Callable[[], LogStore] | None:
    """How to open the ledger where the store is PostgreSQL (None: `<db>.ledger`)."""
    if not options.store:
        return None
    from broker.pg_ledger_store import PostgresLedgerStore

    url = options.store
    fence = None if lease is None else lease.check
    return lambda: PostgresLedgerStore(url, fence=fence)


class BrokerServer:
    """A started broker; `port` and `metrics_port` are the bound ones."""

    def __init__(self, options: ServeOptions, lease: Lease | None = None) -> None:
        self.options = options
        self.lease = lease
        self.lease_lost: LeaseLost | None = None
        self.credentials, self.trust = _membership(options)
        self.store = open_store(options, lease)
        origin = options.name
        if options.peering is not None and self.credentials is not None:
            # A federated broker's log is named after it, so that its peers can tell whose
            # log a checkpoint belongs to (broker.witnessing).
            origin = log_origin(self.credentials.member.name)
            if options.name not in (DEFAULT_ORIGIN, origin):
                raise FailedPrecondition(
                    f"a peering broker's log is named after it ({origin}), not {options.name!r}:"
                    " leave out --name"
                )
        self.ledger = BrokerLedger(
            options.db,
            origin=origin,
            witnesses=options.witnesses,
            open_store=open_ledger_store(options, lease),
        )
        self.broker = Broker(
            self.store,
            config=options.config,
            matcher=make_matcher(options.solver, time_limit_s=options.time_limit_s),
            ledger=self.ledger,
            trust=self.trust,
            on_revocations=self._keep_revocations,
        )
        if self.credentials is not None:  # the hub of the jobs submitted here
            self.broker.region = self.credentials.member.region
        gate = Gate(self.trust, self.broker.metrics.call_refused)
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[gate])
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port: int | None = None
        self.host: PeerHost | None = None
        self.witnessing: Witnessing | None = None
        self.acceptance: Acceptance | None = None
        self._topic = ""  # the summaries' gossip topic, once peering
        self._checkpoint_topic = ""
        self.peers: Peers | None = None
        self.federation = FederationServicer(self.broker, self.ledger)
        if options.peering is not None and self.credentials is None:
            raise FailedPrecondition(
                "peering needs the broker's membership (--identity): peers accept only "
                "admitted brokers"
            )
        if options.peering is not None and options.advertise and self.credentials is not None:
            host = options.advertise.rpartition(":")[0].strip("[]")
            served = served_hosts(self.credentials.chain_pem)
            if host not in served:
                raise FailedPrecondition(
                    f"--advertise {options.advertise}: peers check the broker's certificate "
                    f"against {host!r}, and it names only {', '.join(served) or 'no host'}"
                    " (admit the broker with that host name)"
                )
        wildcard = options.listen.rpartition(":")[0].strip("[]") in ("", "0.0.0.0", "::")
        if options.peering is not None and wildcard and not options.advertise:
            raise FailedPrecondition(
                f"--listen {options.listen} is every address: give --advertise HOST:PORT, "
                "the address (in the broker's certificate) that peers forward jobs to"
            )

    async def start(self) -> None:
        self.ledger.open()
        self.broker.load()
        self.broker.national.note_usage(await self.ledger.usage_records())
        # What was loaded lives as long as the process: out of the collector's full
        # passes, which would otherwise walk every job (a pause of a second at scale).
        gc.freeze()
        broker_pb2_grpc.add_BrokerServiceServicer_to_server(
            BrokerServicer(self.broker), self.server
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(self.broker), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.broker), self.server)
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
            LedgerServicer(self.ledger, self.broker), self.server
        )
        federation_pb2_grpc.add_FederationServiceServicer_to_server(self.federation, self.server)
        national_pb2_grpc.add_NationalServiceServicer_to_server(
            NationalServicer(self.broker), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        try:
            if self.credentials is None:
                self.port = self.server.add_insecure_port(self.options.listen)
            else:
                self.port = self.server.add_secure_port(
                    self.options.listen, server_credentials(self.credentials)
                )
        except RuntimeError as exc:  # grpc reports a port it cannot bind this way
            raise FailedPrecondition(
                f"cannot listen on {self.options.listen}: the port is in use or the address"
                " is not this host's"
            ) from exc
        if self.port == 0:
            raise FailedPrecondition(f"cannot listen on {self.options.listen}")
        if self.options.metrics_port is not None:
            self.metrics_port = self.broker.metrics.serve(
                self.options.metrics_port, self.options.metrics_host
            )
        await self.server.start()
        await self._start_peering()
        self.broker.centers.grant_grace()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.options.ready_file is not None:
            ready = {
                "port": self.port,
                "metrics_port": self.metrics_port,
                "pid": os.getpid(),
                "peer_address": self.host.address if self.host else None,
            }
            tmp = self.options.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready))
            tmp.replace(self.options.ready_file)
        log.info(
            "broker serving on port %d (store %s%s), %s",
            self.port,
            self.store.location,
            f", metrics on port {self.metrics_port}" if self.metrics_port else "",
            "PLAINTEXT, callers unauthenticated (--insecure)"
            if self.credentials is None
            else f"mutual TLS as {self.credentials.member.describe()}",
        )

    @property
    def advertised(self) -> str:
        """The gRPC address peers forward to."""
        if self.options.advertise:
            return self.options.advertise
        return f"{self.options.listen.rpartition(':')[0]}:{self.port}"

    async def _start_peering(self) -> None:
        config = self.options.peering
        if config is None:
            return
        from peering import CHECKPOINTS_TOPIC, SUMMARIES_TOPIC, PeerHost

        self._topic = SUMMARIES_TOPIC
        self._checkpoint_topic = CHECKPOINTS_TOPIC
        assert self.credentials is not None
        member = self.credentials.member
        self.ledger.region = member.name
        self.broker.region = member.region
        self.peers = self.broker.federate(
            member.name, self.credentials, int(self.options.summary_expiry_s * 1000)
        )
        db = self.options.db
        self.witnessing = Witnessing(
            key=witness_key(db.with_suffix(".witness-key"), member.name),
            ledger=self.ledger,
            peers=self.peers,
            metrics=self.broker.metrics,
            state_path=db.with_suffix(".witness.json"),
            evidence_dir=db.parent / f"{db.stem}.evidence",
        )
        self.acceptance = Acceptance(
            ledger=self.ledger,
            peers=self.peers,
            witnessing=self.witnessing,
            jobs=self.broker.jobs,
            clock=self.broker.clock,
        )
        self.peers.on_ended = self.acceptance.ended
        self.acceptance.resume()
        self.host = PeerHost(config, self.credentials, trust=self.trust, on_update=self._heard)
        await self.host.start()
        self.broker.metrics.include(self.host.metrics.registry)
        self.federation.host = self.host
        self.federation.witnessing = self.witnessing
        self.federation.region = member.region
        log.info(
            "peering as %s (%s) on %s, forwards to %s; %d configured peers",
            member.name,
            member.region,
            self.host.address,
            self.advertised,
            len(config.bootstrap),
        )

    def _heard(self, topic: str, summary: Summary) -> None:
        if topic == self._checkpoint_topic and self.witnessing is not None:
            if summary.origin != self.witnessing.peers.name:
                self.witnessing.heard(summary.origin, summary.payload)
            return
        if topic != self._topic or self.peers is None:
            return
        if self.peers.update(
            summary.origin, summary.version, summary.issued_at_ms, summary.payload
        ):
            self.broker.peers_changed()

    async def _announce_checkpoint(self) -> None:
        """Gossip the latest checkpoint with this broker's log and witness keys."""
        if self.host is None or self.witnessing is None:
            return
        payload = announcement(
            self.ledger.origin,
            await self.ledger.key_text(),
            self.witnessing.key.verifier.text(),
            await self.ledger.latest_note(),
        )
        await self.host.publish(self._checkpoint_topic, payload)

    async def _publish_summaries(self) -> None:
        """Publish this broker's offer summary whenever it changes (the host republishes
        it periodically)."""
        if self.host is None or self.credentials is None:
            return
        region = self.credentials.member.region
        last = b""
        failing = ""
        while True:
            at = self.broker.clock.now_ms()
            payload = summary_payload(
                region,
                self.advertised,
                self.broker.local.capacity(at, include_full=True),
                places_of(self.broker.centers),
            )
            if payload != last:
                try:
                    await self.host.publish(self._topic, payload)
                    last = payload
                    failing = ""
                except Exception as exc:
                    if repr(exc) != failing:  # once per kind of failure, not every tick
                        failing = repr(exc)
                        log.exception("publishing the offer summary failed")
            await asyncio.sleep(SUMMARY_CHECK_S)

    async def close_peering(self) -> None:
        """The host first (nothing more is heard), then what works on what it heard."""
        if self.host is not None:
            await self.host.stop()
        if self.witnessing is not None:
            await self.witnessing.close()
        if self.acceptance is not None:
            await self.acceptance.close()
        if self.peers is not None:
            await self.peers.close()

    def _keep_revocations(self, taken: Revocations) -> None:
        """Keep the newest revocation list beside the broker's identity, so that a
        restart does not forget it."""
        assert self.options.identity is not None
        path = self.options.identity / REVOCATIONS
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(taken.pem)
        tmp.replace(path)

    async def _checkpoints(self) -> None:
        """Sign a checkpoint whenever the ledger has grown, at most every interval; a
        peering broker gossips each one (and its first at start)."""
        announce = self.host is not None
        while True:
            try:
                note = await self.ledger.checkpoint()
                if note is not None:
                    log.info("ledger checkpoint: %s", note.splitlines()[1:3])
                    announce = self.host is not None
                if announce:
                    await self._announce_checkpoint()
                    announce = False
            except Exception:
                log.exception("checkpoint failed")
            await asyncio.sleep(self.options.checkpoint_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            matching = tg.create_task(self.broker.run_matching())
            expiry = tg.create_task(self.broker.run_expiry())
            checkpoints = tg.create_task(self._checkpoints())
            summaries = tg.create_task(self._publish_summaries())
            keeping = tg.create_task(self._keep_lease(stop))
            await stop.wait()
            log.info("broker stopping")
            for name in ("", *SERVICES):
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.stop(grace=2.0)
            matching.cancel()
            expiry.cancel()
            checkpoints.cancel()
            summaries.cancel()
            keeping.cancel()
        await self.close_peering()
        if self.lease_lost is None:  # else another broker writes now: nothing more here
            await self.ledger.checkpoint()
        self.ledger.close()
        self.store.close()
        if self.lease is not None and self.lease_lost is None:
            await self.lease.release()  # a standby takes over now, not at expiry
        log.info("broker stopped")
        if self.lease_lost is not None:
            raise self.lease_lost

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        """Renew the active broker's lease; once it is lost, stop serving at once."""
        if self.lease is None:
            return
        from broker.lease import LeaseLost

        watching = asyncio.create_task(self._watch_database(self.lease, stop))
        try:
            await self.lease.kept()
        except LeaseLost as exc:
            log.error("%s: this broker stops; the one that holds the lease serves", exc)
            self.lease_lost = exc
            stop.set()
        finally:
            watching.cancel()

    async def _watch_database(self, lease: Lease, stop: asyncio.Event) -> None:
        """Health says NOT_SERVING while the database does not answer (its writes would
        fail: a balancer or supervisor should look elsewhere), SERVING once it does
        again; a lease that runs out stops the broker (`_keep_lease`)."""
        serving = True
        while True:
            await asyncio.sleep(min(lease.duration_s / 6, 1.0))
            answering = lease.answering()
            if answering == serving or stop.is_set():  # stopping says NOT_SERVING itself
                continue
            serving = answering
            if answering:
                log.info("the database answers again: serving")
            else:
                log.warning(
                    "the database does not answer: NOT_SERVING until it does (the broker"
                    " stops if it has not within the lease, %g s)",
                    lease.duration_s,
                )
            status = health_pb2.HealthCheckResponse.SERVING
            if not answering:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICES):
                await self.health.set(name, status)


def _membership(options: ServeOptions) -> tuple[Credentials | None, Trust | None]:
    """The broker's credentials and the members it trusts; (None, None) under
    --insecure, which binds loopback only."""
    if options.insecure:
        host = options.listen.rpartition(":")[0].strip("[]")
        if host not in ("localhost", "::1") and not host.startswith("127."):
            raise FailedPrecondition(
                f"--insecure serves loopback only (127.0.0.1, ::1, localhost), not {host!r}"
            )
        log.warning(
            "INSECURE: plaintext, no membership checks: any local process can act as any "
            "tenant or center. For development only."
        )
        return None, None
    if options.identity is None:
        raise FailedPrecondition(
            "a broker needs its membership: --identity DIR (icx broker init, then the "
            "coordinator's certificate), or --insecure for a loopback-only development broker"
        )
    creds = Credentials.load(options.identity)
    if creds.member.role is not Role.BROKER:
        raise FailedPrecondition(
            f"{options.identity} holds the certificate of a {creds.member.role}, not a broker"
        )
    revocations = EMPTY
    kept = options.identity / REVOCATIONS
    if kept.exists():
        revocations = verify_revocations(kept.read_bytes(), creds.root)
    return creds, Trust(creds.root, revocations)


async def serve(options: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM; with PostgreSQL, first stand by until this broker
    holds the database's lease."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    _check_port_free(options.listen)  # before any file or database is touched
    lease = None
    if options.store:
        lease = await _take_lease(options, stop)
        if lease is None:
            return
    server = BrokerServer(options, lease)
    try:
        await server.start()
    except BaseException:
        with contextlib.suppress(Exception):  # a server that never started cannot stop
            await server.server.stop(None)
        with contextlib.suppress(Exception):
            await server.close_peering()
        server.ledger.close()
        server.store.close()
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.release()
        raise
    await server.run(stop)


async def _take_lease(options: ServeOptions, stop: asyncio.Event) -> Lease | None:
    """Wait until this broker is the database's active one (None: stopped first). A
    standby does not listen on its port, so agents and clients reach the active broker;
    it refuses to start on a port another process holds, as an active broker does."""
    from broker.lease import Lease

    name = options.name
    if options.identity is not None and not options.insecure:
        name = Credentials.load(options.identity).member.name
    lease = Lease(options.store, f"{name}@{options.listen}", duration_s=options.failover_s)

    def waiting(holder: str) -> None:
        log.info(
            "standing by: %s is the active broker; taking over once its lease lapses",
            holder.partition("#")[0],
        )

    acquiring = asyncio.create_task(lease.acquire(waiting=waiting))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not acquiring.done():
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
        log.info("standby stopped")
        return None
    acquiring.result()  # raises what stopped it (the database unreachable)
    lease.start_keeping()  # from now: opening the stores can take longer than the lease
    return lease


def _check_port_free(listen: str) -> None:
    port = listen.rpartition(":")[2]
    if not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"--listen must be HOST:PORT, got {listen!r}")
    if int(port) == 0:
        return
    try:
        check_bindable(listen)
    except (OSError, UnicodeError) as exc:
        raise FailedPrecondition(
            f"cannot listen on {listen}: the port is in use or the address is not this host's"
        ) from exc
