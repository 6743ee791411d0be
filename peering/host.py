"""PeerHost: a broker's libp2p host, run on its own thread with its own trio loop and
driven from asyncio.

The bridge is small. Calls from asyncio become trio tasks through the trio token
(`TrioToken.run_sync_soon` is thread-safe and never blocks the asyncio loop) and come
back as asyncio futures, settled with `loop.call_soon_threadsafe`. Accepted envelopes
come back the same way: the asyncio side keeps its own copy of each view (`summaries`),
updated in its own loop, and calls `on_update` there. Counters are prometheus-client
metrics (thread-safe) in a registry the host owns.

A thread rather than trio as a guest of the asyncio loop: libp2p's CPU work (Noise,
signatures, GossipSub heartbeats) then stays off the loop that serves gRPC, and trio
does not take over the process's signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from core.clock import SYSTEM, Clock
from identity.certs import Member
from identity.files import Credentials
from identity.tls import Trust
from peering._node import Node
from peering.config import PeeringConfig
from peering.errors import HostStopped, PeeringError
from peering.metrics import Counts, Metrics
from peering.summaries import Summaries, Summary

__all__ = ["PeerHost"]

log = logging.getLogger("peering")

T = TypeVar("T")

# How long `stop` waits for the host's thread to finish.
STOP_TIMEOUT_S = 10.0
OnUpdate = Callable[[str, Summary], None]


def _first_cause(exc: BaseException) -> BaseException:
    """The first exception that is not a group (trio wraps failures in nurseries')."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _settle(fut: asyncio.Future[Any], result: object, exc: BaseException | None) -> None:
    if fut.done():
        return  # the caller gave up waiting
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class PeerHost:
    """One broker's peering host. `await start()`, then publish, pull and read the
    views from asyncio; `await stop()` (or `async with`)."""

    def __init__(
        self,
        config: PeeringConfig,
        credentials: Credentials,
        *,
        trust: Trust | None = None,
        clock: Clock = SYSTEM,
        on_update: OnUpdate | None = None,
    ) -> None:
        """`trust` holds the root and revocation list peers are checked against
        (default: the credentials' root, nothing revoked); `on_update(topic, summary)`
        runs in the caller's loop for every newer summary, this broker's own included."""
        self.config = config
        self.credentials = credentials
        self.trust = trust or Trust(credentials.root)
        self.clock = clock
        self.metrics = Metrics()
        self.address = ""  # the bound multiaddr, /p2p/<peer id> included, once started
        self._on_update = on_update
        self._views = {topic: Summaries(topic) for topic in config.topics}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future[None] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._node: Node | None = None
        self._failed_start = False

    @property
    def name(self) -> str:
        return self.credentials.member.name

    @property
    def peer_id(self) -> str:
        return self.address.rsplit("/p2p/", 1)[-1] if self.address else ""

    async def __aenter__(self) -> PeerHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Start the host's thread; return once it listens, with its address."""
        if self._thread is not None:
            raise PeeringError("the peering host is started already")
        # py-libp2p's own lines reach stderr bare (it stops them propagating) and repeat
        # on every retry; this host logs connects, outages and refusals itself.
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        self._loop = loop = asyncio.get_running_loop()
        ready: asyncio.Future[str] = loop.create_future()
        self._done = loop.create_future()
        self._thread = threading.Thread(
            target=self._run_thread, args=(ready,), name=f"peering-{self.name}", daemon=True
        )
        self._thread.start()
        try:
            self.address = await ready
        except BaseException:
            self._failed_start = True  # said by the caller: not again by stop()
            await self.stop()
            raise
        return self.address

    async def stop(self) -> None:
        """Stop the host and wait for its thread. Safe to call twice."""
        thread, done = self._thread, self._done
        if thread is None or done is None:
            return
        if self._token is not None and self._node is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._node.stop)
        stopped = True
        try:
            await asyncio.wait_for(asyncio.shield(done), STOP_TIMEOUT_S)
        except TimeoutError:
            # A connection py-libp2p cannot close (a peer gone silent mid-close) must not
            # keep the broker from stopping: the thread is a daemon, left to the exit.
            stopped = False
            log.warning(
                "peering: host %s did not stop within %.0f s; leaving its thread",
                self.name,
                STOP_TIMEOUT_S,
            )
        except Exception as exc:
            if not self._failed_start:
                log.warning("peering: host %s ended with an error: %s", self.name, exc)
        finally:
            if stopped:
                await asyncio.to_thread(thread.join)
            self._thread = self._done = None
            self._token = None
            self._node = None

    def _post(
        self, fut: asyncio.Future[Any], result: object = None, exc: BaseException | None = None
    ) -> None:
        """Settle `fut` in its loop (from any thread); nothing if that loop has closed."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # that loop has closed
            self._loop.call_soon_threadsafe(_settle, fut, result, exc)

    def _run_thread(self, ready: asyncio.Future[str]) -> None:
        assert self._done is not None
        try:
            trio.run(self._trio_main, ready)
        except BaseException as exc:
            where = f"{self.config.listen_host}:{self.config.listen_port}"
            cause = _first_cause(exc)
            if isinstance(cause, OSError):
                error = PeeringError(
                    f"cannot listen for peers on {where}: {cause.strerror or cause} (the port "
                    "is taken, or the address is not this host's)"
                )
            else:
                error = PeeringError(f"peering host {self.name} on {where} failed: {cause!r}")
            self._post(ready, exc=error)
            self._post(self._done, exc=error)
        else:
            self._post(ready, exc=HostStopped("the peering host stopped before it listened"))
            self._post(self._done)

    async def _trio_main(self, ready: asyncio.Future[str]) -> None:
        node = Node(
            self.config,
            self.credentials,
            self.trust,
            self.metrics,
            self.clock.now_ms,
            self._deliver,
        )
        async with trio.open_nursery() as nursery:
            address = await nursery.start(node.run)
            self._node = node
            self._token = trio.lowlevel.current_trio_token()
            self._post(ready, address)

    # ------------------------------------------------------------------ the bridge

    def _submit(self, fn: Callable[[Node], Awaitable[T]]) -> asyncio.Future[T]:
        """Run `fn(node)` as a trio task on the host's thread; its outcome as a future of
        the calling loop (HostStopped if the host is not running or stops meanwhile)."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        token, node = self._token, self._node
        if token is None or node is None:
            fut.set_exception(HostStopped("the peering host is not running"))
            return fut

        async def task() -> None:
            try:
                result = await fn(node)
            except trio.Cancelled:
                self._post(fut, exc=HostStopped("the peering host stopped"))
                raise
            except Exception as exc:
                self._post(fut, exc=exc)
            else:
                self._post(fut, result)

        def spawn() -> None:
            try:
                node.spawn(task)
            except RuntimeError:  # the nursery is closing
                self._post(fut, exc=HostStopped("the peering host is stopping"))

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            fut.set_exception(HostStopped("the peering host stopped"))
        return fut

    def _deliver(self, topic: str, summary: Summary) -> None:
        """From the host's thread: a newer summary, for the asyncio side."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed
            self._loop.call_soon_threadsafe(self._delivered, topic, summary)

    def _delivered(self, topic: str, summary: Summary) -> None:
        if self._views[topic].put(summary) and self._on_update is not None:
            self._on_update(topic, summary)

    # ------------------------------------------------------------------ the API

    def summaries(self, topic: str) -> Summaries:
        """This loop's copy of `topic`'s view (read it, don't change it)."""
        return self._views[topic]

    def counts(self) -> Counts:
        return self.metrics.counts()

    async def publish(self, topic: str, payload: bytes) -> int:
        """Make `payload` this broker's latest on `topic`; its version. Published at the
        next slot (at most one per publish_interval_s; a newer payload replaces one not
        yet sent) and again every republish_s."""

        async def stage(node: Node) -> int:
            return node.stage(topic, payload)

        return await self._submit(stage)

    async def publish_envelope(self, topic: str, encoded: bytes) -> None:
        """Put already signed envelope bytes on gossip as they are (a relay; tests use it
        to replay and to forge)."""
        await self._submit(lambda node: node.publish_encoded(topic, encoded))

    async def connect(self, address: str) -> Member:
        """Dial a peer now (a multiaddr ending in /p2p/<peer id>) and exchange bindings:
        the broker it proved to be. Raises Refused if it is not a member."""
        return await self._submit(lambda node: node.connect(address))

    async def pull(self, topic: str, origin: str) -> bool:
        """Pull `origin`'s latest envelope on `topic` from connected peers (the origin
        first): whether the view got newer."""
        return await self._submit(lambda node: node.pull(topic, origin))
