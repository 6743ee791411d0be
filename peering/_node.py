"""The libp2p side of a PeerHost: everything here runs on the host's own thread, inside
its `trio.run`. Only this module and `host` touch trio.

Protocols, besides GossipSub (one topic per view):
- hello (/icx/peering/hello/1.0.0): the dialler sends its binding, the listener checks it
  and answers with its own; each side admits the other only if the binding names the
  peer id that the Noise handshake proved. A refused peer is blacklisted.
- pull (/icx/peering/pull/1.0.0): {"topic", "origin"} -> that origin's latest envelope
  as the responder holds it (empty if none): the repair of lost gossip.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import multiaddr  # type: ignore[import-untyped]
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee, ISubscriptionAPI
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_noise_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.request_response import (
    BytesCodec,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
    RequestResponseError,
)
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from core.errors import InvalidArgument
from identity.certs import Member, load_key
from identity.files import Credentials
from identity.tls import Trust
from ledger.canonical import encode
from peering._codec import MAX_MESSAGE_BYTES, read_object, take_str
from peering.binding import sign_binding
from peering.config import PeeringConfig
from peering.envelope import Envelope, Verifier, sign_envelope
from peering.errors import DropReason, PullFailed, Refused
from peering.metrics import Metrics
from peering.summaries import Summaries, Summary

if TYPE_CHECKING:
    # trio-typing's stubs (a libp2p dependency) shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = ["Node"]

log = logging.getLogger("peering")

HELLO = TProtocol("/icx/peering/hello/1.0.0")
PULL = TProtocol("/icx/peering/pull/1.0.0")
PING = TProtocol("/icx/peering/ping/1.0.0")

Deliver = Callable[[str, Summary], None]


class Node:
    """One broker's libp2p host: GossipSub views, hello, pull, and the re-dialling of
    its configured peers. Construct and run inside trio."""

    def __init__(
        self,
        config: PeeringConfig,
        credentials: Credentials,
        trust: Trust,
        metrics: Metrics,
        now_ms: Callable[[], int],
        deliver: Deliver,
    ) -> None:
        self.config = config
        self.name = credentials.member.name
        self.metrics = metrics
        self.now_ms = now_ms
        self._credentials = credentials
        self._deliver = deliver
        self._key = load_key(credentials.key_pem)
        key_pair = create_new_key_pair(config.peer_key_seed)
        self._listen = multiaddr.Multiaddr(f"/ip4/{config.listen_host}/tcp/{config.listen_port}")
        self.host = new_host(
            key_pair=key_pair,
            # Noise only: py-libp2p offers TLS, SECIO and plaintext too unless told.
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    key_pair, noise_privkey=create_noise_key_pair().private_key
                )
            },
            muxer_opt=create_yamux_muxer_option(),
            listen_addrs=[self._listen],
        )
        self.peer_id = self.host.get_id()
        self.gossip = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=config.mesh_degree,
            degree_low=config.mesh_degree_low,
            degree_high=config.mesh_degree_high,
            heartbeat_interval=config.heartbeat_s,
            heartbeat_initial_delay=0.1,
            # Its mesh IP-diversity rule assumes peers on many addresses; brokers are few.
            eclipse_protection_enabled=False,
        )
        self.pubsub = Pubsub(self.host, self.gossip)
        self.rr = RequestResponse(self.host)
        self._rr_config = RequestResponseConfig(
            timeout=config.pull_timeout_s,
            max_request_size=MAX_MESSAGE_BYTES,
            max_response_size=MAX_MESSAGE_BYTES,
        )
        self.views = {topic: Summaries(topic) for topic in config.topics}
        self.verifier = Verifier(trust, now_ms)
        self.binding = sign_binding(credentials, self.peer_id.to_base58(), self._binding_expiry())
        self.address = ""
        self._members: dict[ID, Member] = {}  # connected peers proven to be brokers
        self._refused: set[ID] = set()
        self._gone: dict[ID, trio.Event] = {}
        self._versions: dict[str, int] = {}
        self._staged: dict[str, tuple[int, bytes]] = {}
        self._own: dict[str, Envelope] = {}
        self._wake = {topic: trio.Event() for topic in config.topics}
        self._retry: dict[tuple[str, str], tuple[float, float]] = {}
        self._random = random.Random()
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join the topics, keep dialling the configured peers; report the bound
        address through `task_status`; run until cancelled."""
        _check_port_free(self.config.listen_host, self.config.listen_port)
        async with (
            self.host.run(listen_addrs=[self._listen]),
            background_trio_service(self.pubsub),
            background_trio_service(self.gossip),
        ):
            await self.pubsub.wait_until_ready()
            self.host.get_network().register_notifee(_Notifee(self))
            self.rr.set_handler(HELLO, self._on_hello, BytesCodec(), self._rr_config)
            self.rr.set_handler(PULL, self._on_pull, BytesCodec(), self._rr_config)
            self.rr.set_handler(PING, self._on_ping, BytesCodec(), self._rr_config)
            subscriptions = []
            for topic in self.config.topics:
                validator = functools.partial(self._on_gossip, topic)
                self.pubsub.set_topic_validator(topic, validator, False)
                subscriptions.append(await self.pubsub.subscribe(topic))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for subscription in subscriptions:
                    nursery.start_soon(self._drain, subscription)
                for topic in self.config.topics:
                    nursery.start_soon(self._publisher, topic)
                for address in self.config.bootstrap:
                    nursery.start_soon(self._keep_dialling, address)
                nursery.start_soon(self._puller)
                nursery.start_soon(self._watch_liveness)
                self.address = next(
                    (str(a) for a in self.host.get_addrs() if str(a).startswith("/ip4/")), ""
                )
                if not self.address:  # py-libp2p logs a failed bind and carries on
                    raise OSError(f"cannot listen on {self._listen}")
                log.info("peering: %s is peer %s on %s", self.name, self.peer_id, self.address)
                task_status.started(self.address)
                await self._stopping.wait()
                # Close every connection before the services go: py-libp2p leaves the
                # sockets of connections still open at its shutdown unclosed.
                with trio.move_on_after(self.config.dial_timeout_s):
                    for peer in list(self.host.get_network().connections):
                        await self.host.disconnect(peer)
                nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Ask `run` to close its connections and return."""
        self._stopping.set()

    def spawn(self, fn: Callable[[], object]) -> None:
        """Start `fn` (an async function of no arguments) in the node's nursery."""
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(fn)  # type: ignore[arg-type]

    async def _drain(self, subscription: ISubscriptionAPI) -> None:
        # Envelopes are applied in the validator (so that refused ones are not relayed);
        # the subscription's queue only has to be kept empty.
        while True:
            await subscription.get()

    # ------------------------------------------------------------------ receiving

    def _on_gossip(self, topic: str, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """GossipSub's validator for `topic`: apply the envelope if it checks out and is
        newer; whether GossipSub may deliver and relay it."""
        if forwarder == self.peer_id:
            return True  # our own publication
        sender = ID(msg.from_id)
        try:
            envelope = self.verifier.envelope(msg.data, topic=topic, sender=sender.to_base58())
        except Refused as exc:
            self._drop(exc.reason, f"gossip relayed by {forwarder}: {exc}")
            return False
        if forwarder not in self._members:
            if forwarder != sender:
                self._drop(DropReason.UNPROVEN_PEER, f"gossip relayed by {forwarder}")
                return False
            # Noise proved the peer id; the origin's own binding names it.
            self._admit_member(forwarder, self.verifier.binding(envelope.binding)[1])
        if self.config.test_drop_fraction and (
            self._random.random() < self.config.test_drop_fraction
        ):
            self._drop(DropReason.TEST_LOSS, f"{envelope.origin} v{envelope.version}")
            return True
        if not self._accept(topic, envelope, msg.data):
            self._drop(DropReason.STALE, f"{envelope.origin} v{envelope.version}")
            return False
        self.views[topic].note_heads(envelope.heads, sender.to_base58(), self.name)
        return True

    def _accept(self, topic: str, envelope: Envelope, encoded: bytes, own: bool = False) -> bool:
        summary = self.views[topic].offer(envelope, encoded)
        if summary is None:
            return False
        if not own:
            self.metrics.received.inc()
        self._deliver(topic, summary)
        return True

    def _drop(self, reason: DropReason, what: str) -> None:
        self.metrics.drop(reason)
        log.debug("peering: dropped (%s): %s", reason, what)

    # ------------------------------------------------------------------ membership

    async def _hello(self, peer: ID) -> Member:
        reply = await self.rr.send_request(
            peer, [HELLO], self.binding.encode(), BytesCodec(), self._rr_config
        )
        return self._admit(peer, reply)

    async def _on_hello(self, request: bytes, context: RequestContext) -> bytes:
        try:
            self._admit(context.peer_id, request)
        except Refused:
            return b""
        return self.binding.encode()

    def _admit(self, peer: ID, data: bytes) -> Member:
        """The broker behind `peer` if `data` is its valid binding; else refuse the peer
        (counted, blacklisted) and raise Refused."""
        try:
            if not data:
                raise Refused(DropReason.NON_MEMBER, f"peer {peer} presents no binding")
            binding, member, _ = self.verifier.binding(data)
            if binding.peer_id != peer.to_base58():
                raise Refused(
                    DropReason.ORIGIN_MISMATCH,
                    f"peer {peer} presents the binding of peer {binding.peer_id}",
                )
        except Refused as exc:
            self.metrics.drop(exc.reason)
            if peer not in self._refused:
                log.warning("peering: refusing peer %s: %s", peer, exc)
                self._refused.add(peer)
            self._members.pop(peer, None)
            self.pubsub.add_to_blacklist(peer)
            raise
        self._admit_member(peer, member)
        return member

    def _admit_member(self, peer: ID, member: Member) -> None:
        if peer in self._members:
            return
        self._members[peer] = member
        self.metrics.peers.set(len(self._members))
        log.info("peering: peer %s is %s", peer, member.describe())
        # What it holds of itself, at once: its first gossip may be lost.
        for topic in self.config.topics:
            self.spawn(functools.partial(self.pull, topic, member.name))

    def _binding_expiry(self) -> int:
        return self.now_ms() + self.config.binding_ttl_s * 1000

    def _renew_binding(self) -> None:
        if self.binding.expires_at_ms - self.now_ms() < self.config.binding_ttl_s * 500:
            self.binding = sign_binding(
                self._credentials, self.peer_id.to_base58(), self._binding_expiry()
            )

    # ------------------------------------------------------------------ connections

    def _connected(self, peer: ID) -> None:
        if len(self.host.get_network().connections.get(peer, ())) > 1:
            return
        if peer in self._refused:
            self.spawn(functools.partial(self.host.disconnect, peer))
            return
        log.info("peering: connected to peer %s", peer)
        # Whoever dialled (this host, the peer, or libp2p's own connection manager),
        # nothing is accepted from the peer until its binding is checked.
        if peer not in self._members:
            self.spawn(functools.partial(self._hello_quietly, peer))

    async def _hello_quietly(self, peer: ID) -> None:
        try:
            await self._hello(peer)
        except Refused:
            pass  # counted and logged by _admit
        except Exception as exc:  # the connection went away meanwhile: the dialler retries
            log.debug("peering: hello to %s failed: %r", peer, exc)

    def _disconnected(self, peer: ID) -> None:
        if self.host.get_network().connections.get(peer):
            return
        self._forget(peer)

    def _forget(self, peer: ID) -> None:
        """The peer is gone: unproven again, and its dialler (if any) dials anew."""
        member = self._members.pop(peer, None)
        self.metrics.peers.set(len(self._members))
        if member is not None:  # once per proven peer (the close is reported again)
            log.info("peering: disconnected from peer %s (%s)", peer, member.describe())
        gone = self._gone.pop(peer, None)
        if gone is not None:
            gone.set()

    async def _on_ping(self, request: bytes, context: RequestContext) -> bytes:
        return b"pong"

    async def _watch_liveness(self) -> None:
        """Ping every proven peer; close the connection of one that misses
        `liveness_misses` pings in a row. A cut link leaves a TCP connection open for
        minutes (its retransmissions back off to 2 min): closed, the dialler notices the
        outage, logs it and reconnects soon after the link heals."""
        missed: dict[ID, int] = {}
        while True:
            await trio.sleep(self.config.liveness_s)
            for peer in list(self._members):
                if await self._ping(peer):
                    missed.pop(peer, None)
                    continue
                missed[peer] = missed.get(peer, 0) + 1
                if missed[peer] >= self.config.liveness_misses:
                    member = self._members.get(peer)
                    log.warning(
                        "peering: peer %s (%s) did not answer %d pings: closing its connection",
                        peer,
                        member.name if member else "?",
                        missed.pop(peer),
                    )
                    with trio.move_on_after(self.config.dial_timeout_s):
                        await self.host.disconnect(peer)
                    if peer in self._members:  # the close did not go through: forget it
                        self._forget(peer)

    async def _ping(self, peer: ID) -> bool:
        with trio.move_on_after(self.config.liveness_timeout_s):
            try:
                await self.rr.send_request(peer, [PING], b"ping", BytesCodec(), self._rr_config)
                return True
            except Exception:  # any failure of the exchange is a miss
                return False
        return False

    async def connect(self, address: str) -> Member:
        """Dial `address` (a multiaddr ending in /p2p/<peer id>) and exchange bindings."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as exc:  # the multiaddr parser raises several unrelated types
            raise InvalidArgument(f"not a peer multiaddr: {address!r}: {exc}") from exc
        network = self.host.get_network()
        if isinstance(network, Swarm):
            # The swarm refuses for 60 s a peer whose addresses all failed once; the
            # re-dial loop keeps its own backoff instead.
            network.unblock_peer(info.peer_id)
        with trio.fail_after(self.config.dial_timeout_s):
            await self.host.connect(info)
            return await self._hello(info.peer_id)

    async def _keep_dialling(self, address: str) -> None:
        """Keep the peer at `address` connected for ever: re-dial with backoff (doubling,
        jittered, capped) whenever it is not; log the outage once, not every attempt."""
        peer = info_from_p2p_addr(multiaddr.Multiaddr(address)).peer_id
        backoff = self.config.redial_min_s
        failures = 0
        while True:
            gone = trio.Event()
            self._gone[peer] = gone
            if self.host.get_network().connections.get(peer) and peer in self._members:
                await gone.wait()
                backoff = self.config.redial_min_s
                continue
            try:
                await self.connect(address)
            except Refused:
                log.warning("peering: stop dialling %s: not a member", address)
                return
            except Exception as exc:  # dial errors come in many types; each is a retry
                self.metrics.dial_failures.inc()
                failures += 1
                if failures == 1:
                    log.info("peering: cannot reach %s (%s); re-dialling", address, exc)
                await trio.sleep(backoff * self._random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.config.redial_max_s)
                continue
            if failures:
                log.info("peering: reached %s after %d failed dials", address, failures)
            failures = 0
            backoff = self.config.redial_min_s

    # ------------------------------------------------------------------ publishing

    def stage(self, topic: str, payload: bytes) -> int:
        """Queue `payload` as this broker's latest on `topic`: its version, published at
        the next slot (an earlier staged payload not yet sent is replaced)."""
        if topic not in self.views:
            raise InvalidArgument(f"topic {topic!r} is not one of {list(self.views)}")
        # Wall time keeps versions increasing across restarts; +1 within one ms.
        version = max(self._versions.get(topic, 0) + 1, self.now_ms())
        self._versions[topic] = version
        self._staged[topic] = (version, payload)
        self._wake[topic].set()
        return version

    async def _publisher(self, topic: str) -> None:
        """Publish what is staged, at most once per publish_interval_s, and the current
        envelope again (re-signed, with fresh heads) every republish_s, jittered."""
        next_republish = trio.current_time() + self._republish_delay()
        while True:
            with trio.move_on_at(next_republish):
                await self._wake[topic].wait()
            self._wake[topic] = trio.Event()
            staged = self._staged.pop(topic, None)
            own = self._own.get(topic)
            if staged is None and (own is None or trio.current_time() < next_republish):
                if own is None:
                    next_republish = trio.current_time() + self._republish_delay()
                continue
            version, payload = staged if staged is not None else (own.version, own.payload)  # type: ignore[union-attr]
            await self._publish(topic, version, payload)
            next_republish = trio.current_time() + self._republish_delay()
            await trio.sleep(self.config.publish_interval_s)

    def _republish_delay(self) -> float:
        return self.config.republish_s * self._random.uniform(0.8, 1.2)

    async def _publish(self, topic: str, version: int, payload: bytes) -> None:
        self._renew_binding()
        heads = tuple((o, v) for o, v in self.views[topic].versions().items() if o != self.name)
        envelope = sign_envelope(
            self._key,
            topic=topic,
            origin=self.name,
            version=version,
            issued_at_ms=self.now_ms(),
            payload=payload,
            heads=heads,
            binding=self.binding,
        )
        encoded = envelope.encode()
        self._own[topic] = envelope
        self._accept(topic, envelope, encoded, own=True)
        await self.publish_encoded(topic, encoded)

    async def publish_encoded(self, topic: str, encoded: bytes) -> None:
        """Put envelope bytes on gossip as they are."""
        try:
            await self.pubsub.publish(topic, encoded)
        except Exception as exc:  # young connections raise KeyError & co.: pulls repair
            log.debug("peering: publish on %s failed: %r", topic, exc)
            return
        self.metrics.published.inc()

    # ------------------------------------------------------------------ pulling

    async def _on_pull(self, request: bytes, context: RequestContext) -> bytes:
        if context.peer_id not in self._members:
            self._drop(DropReason.UNPROVEN_PEER, f"pull from {context.peer_id}")
            return b""
        try:
            obj = read_object(request, "pull request", frozenset({"origin", "topic"}))
            topic, origin = take_str(obj, "topic", "pull"), take_str(obj, "origin", "pull")
        except Refused as exc:
            self._drop(exc.reason, f"pull from {context.peer_id}: {exc}")
            return b""
        view = self.views.get(topic)
        summary = view.get(origin) if view is not None else None
        return summary.envelope if summary is not None else b""

    async def pull(
        self, topic: str, origin: str, want: int = 0, holders: frozenset[str] = frozenset()
    ) -> bool:
        """Ask connected brokers for `origin`'s latest envelope on `topic`: the origin's
        own peer first, then peers said to hold version `want`, then the others, until
        the view holds `want` or better. Whether the view got newer."""
        view = self.views[topic]
        request = encode({"topic": topic, "origin": origin})
        got = False
        for peer in self._pull_order(origin, holders):
            self.metrics.pulls.inc()
            try:
                reply = await self.rr.send_request(
                    peer, [PULL], request, BytesCodec(), self._rr_config
                )
                if not reply:
                    raise PullFailed(f"peer {peer} holds nothing of {origin}")
                envelope = self.verifier.envelope(reply, topic=topic, sender=None)
                if envelope.origin != origin:
                    raise Refused(
                        DropReason.ORIGIN_MISMATCH,
                        f"asked for {origin}, peer {peer} answered {envelope.origin}",
                    )
            except Refused as exc:
                self.metrics.pull_failures.inc()
                self._drop(exc.reason, f"pull answer of {peer}: {exc}")
                continue
            except (RequestResponseError, PullFailed) as exc:
                self.metrics.pull_failures.inc()
                log.debug("peering: pull of %s from %s failed: %s", origin, peer, exc)
                continue
            if self._accept(topic, envelope, reply):
                got = True
            else:
                self.metrics.pull_failures.inc()
            held = view.get(origin)
            if held is not None and held.version >= want and got:
                break
        return got

    def _pull_order(self, origin: str, holders: frozenset[str]) -> list[ID]:
        members = dict(self._members)
        first = [p for p, m in members.items() if m.name == origin]
        said = [p for p in members if p.to_base58() in holders and p not in first]
        rest = [p for p in members if p not in first and p not in said]
        return first + said + rest

    async def _puller(self) -> None:
        """Pull what heads say is missing and what has been silent too long; an origin
        that brings nothing new is retried with a doubling delay, up to silence_s."""
        silence_ms = int(self.config.silence_s * 1000)
        while True:
            await trio.sleep(self.config.pull_check_s)
            for topic, view in self.views.items():
                due = view.wanted()
                for origin in view.silent(self.now_ms(), silence_ms, self.name):
                    due.setdefault(origin, (0, frozenset()))
                for origin, (want, holders) in due.items():
                    key = (topic, origin)
                    not_before, backoff = self._retry.get(key, (0.0, 0.0))
                    if trio.current_time() < not_before:
                        continue
                    if await self.pull(topic, origin, want, holders):
                        self._retry.pop(key, None)
                        continue
                    backoff = min(
                        max(2 * backoff, 2 * self.config.pull_check_s), self.config.silence_s
                    )
                    self._retry[key] = (trio.current_time() + backoff, backoff)


def _check_port_free(host: str, port: int) -> None:
    """Raise OSError if something listens on host:port already. py-libp2p binds with
    SO_REUSEPORT, so a second host on a taken port would share it, not fail."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind((host, port))


class _Notifee(INotifee):
    """Connection events, for the log and the re-dial loops."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None
