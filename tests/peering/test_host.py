"""Hosts on their own threads in this process, on loopback: the asyncio bridge, loss
repaired by pulls, and what a member or an outsider must not be able to do."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import pytest

from identity import Authority, Credentials, Role, init_member
from peering import SUMMARIES_TOPIC, DropReason, Envelope, HostStopped, PeerHost, PeeringError
from peering.summaries import Summary
from tests.conftest import wait_for_async

from .conftest import Brokers, converged, fast, start, view


def test_the_bridge_publishes_delivers_in_the_callers_loop_and_stops(broker: Brokers) -> None:
    async def body() -> None:
        loop_thread = threading.get_ident()
        seen: list[tuple[str, Summary, int]] = []
        host = PeerHost(
            fast(),
            broker("east"),
            on_update=lambda t, s: seen.append((t, s, threading.get_ident())),
        )
        with pytest.raises(HostStopped, match="not running"):
            await host.publish(SUMMARIES_TOPIC, b"too early")
        async with host:
            assert host.address.startswith("/ip4/127.0.0.1/tcp/")
            assert host.address.endswith(f"/p2p/{host.peer_id}")
            assert int(host.address.split("/")[4]) > 0  # port 0 became a real port
            first = await host.publish(SUMMARIES_TOPIC, b"one")
            second = await host.publish(SUMMARIES_TOPIC, b"two")
            assert second > first
            with pytest.raises(Exception, match="'nope' is not one of"):
                await host.publish("nope", b"x")
            await wait_for_async(lambda: view(host) == {"east": b"two"}, 5, "own summary")
        assert seen and all(t == SUMMARIES_TOPIC and tid == loop_thread for t, _, tid in seen)
        assert seen[-1][1].version == second
        with pytest.raises(HostStopped):
            await host.publish(SUMMARIES_TOPIC, b"after")
        await host.stop()  # twice is fine

    asyncio.run(body())


def test_a_taken_port_is_a_clear_error(broker: Brokers) -> None:
    async def body() -> None:
        async with AsyncExitStack() as stack:
            first = await start(stack, broker("east"))
            port = int(first.address.split("/")[4])
            second = PeerHost(fast(listen_port=port), broker("west"))
            with pytest.raises(PeeringError) as err:
                await second.start()
            assert str(err.value) == (
                f"cannot listen for peers on 127.0.0.1:{port}: Address already in use (the port"
                " is taken, or the address is not this host's)"
            )
            await second.stop()

    asyncio.run(body())


def test_views_converge_through_pulls_when_gossip_loses_messages(broker: Brokers) -> None:
    """A third of gossiped envelopes are discarded on receipt (the test hook) and nobody
    republishes within the test: only pulls (gaps seen in heads, silent origins) can
    bring every view to every origin's last payload."""

    async def body() -> None:
        lossy = {"test_drop_fraction": 0.34, "republish_s": 60.0, "silence_s": 1.0}
        async with AsyncExitStack() as stack:
            first = await start(stack, broker("b0"), **lossy)
            hosts = [first]
            for i in range(1, 4):
                peers = (first.address, hosts[-1].address) if i > 1 else (first.address,)
                hosts.append(await start(stack, broker(f"b{i}"), bootstrap=peers, **lossy))
            await wait_for_async(
                lambda: all(h.counts().peers >= 1 for h in hosts), 30, "every host peered"
            )
            for round_ in range(4):
                sent = {h.name: h.counts().published for h in hosts}
                for h in hosts:
                    await h.publish(SUMMARIES_TOPIC, f"{h.name} round {round_}".encode())
                # Each round goes out on its own (no newer payload replaces it unsent),
                # as a broker's changes do.
                await wait_for_async(partial(all_published, hosts, sent), 30, f"round {round_}")
            expected = {h.name: f"{h.name} round 3".encode() for h in hosts}
            # 8 s alone; the deadline is for a machine busy with other tests.
            await wait_for_async(lambda: converged(hosts, expected), 60, "views to converge")
            counts = [h.counts() for h in hosts]
            assert sum(c.dropped[DropReason.TEST_LOSS] for c in counts) > 0
            assert sum(c.pulls for c in counts) > 0
            assert all(c.dropped[DropReason.BAD_SIGNATURE] == 0 for c in counts)

    asyncio.run(body())


def test_outsiders_forgers_and_replays_are_dropped_and_counted(
    broker: Brokers, tmp_path: Path
) -> None:
    async def body() -> None:
        async with AsyncExitStack() as stack:
            # Nobody republishes during the test: a republication changes a view too.
            calm = {"republish_s": 60.0, "silence_s": 60.0}
            east = await start(stack, broker("east"), **calm)
            west = await start(stack, broker("west"), bootstrap=(east.address,), **calm)
            mallory = await start(stack, broker("mallory"), bootstrap=(east.address,), **calm)
            await wait_for_async(lambda: east.counts().peers == 2, 30, "east to admit both")

            async def published(sender: PeerHost, data: bytes) -> None:
                """Publish `data` from `sender` (again each second: a gossip mesh may
                still be forming, and nobody republishes) until east holds the sender's
                latest envelope of it (an earlier one, landing late, changes nothing)."""

                async def check() -> bool:
                    held = east.summaries(SUMMARIES_TOPIC).get(sender.name)
                    if held is not None and held.payload == data:
                        return held.envelope == view_envelope(sender)
                    await sender.publish(SUMMARIES_TOPIC, data)
                    return False

                await wait_for_async(check, 30, f"{sender.name}'s {data!r}", every_s=1.0)

            await published(mallory, b"mallory's own")
            await published(west, b"west v1")
            old = east.summaries(SUMMARIES_TOPIC).get("west")
            assert old is not None
            await published(west, b"west v2")
            before_view = {s.origin: s for s in east.summaries(SUMMARIES_TOPIC)}

            async def dropped(sender: PeerHost, data: bytes, reason: DropReason) -> None:
                """Publish `data` from `sender` until east counts one more drop for
                `reason` (a gossip mesh may still be forming); east's view unchanged."""
                start_count = east.counts().dropped[reason]

                async def check() -> bool:
                    if east.counts().dropped[reason] > start_count:
                        return True
                    await sender.publish_envelope(SUMMARIES_TOPIC, data)
                    return False

                await wait_for_async(check, 10, f"a drop for {reason}", every_s=0.2)
                assert {s.origin: s for s in east.summaries(SUMMARIES_TOPIC)} == before_view

            # A replay of west's own older envelope, from west's own peer.
            await dropped(west, old.envelope, DropReason.STALE)
            # West's current envelope with a changed payload: the signature fails.
            current = Envelope.decode(before_view["west"].envelope)
            forged = dataclasses.replace(current, payload=b"west v9", version=current.version + 1)
            await dropped(west, forged.encode(), DropReason.BAD_SIGNATURE)
            # A member relaying west's genuine envelope as its own publication ...
            await dropped(mallory, before_view["west"].envelope, DropReason.ORIGIN_MISMATCH)
            # ... and signing, with its own key, a newer summary in west's name.
            from identity.certs import load_key
            from peering import sign_envelope
            from peering.binding import Binding

            mine = Binding.decode(Envelope.decode(view_envelope(mallory)).binding)
            in_wests_name = sign_envelope(
                load_key(mallory.credentials.key_pem),
                topic=SUMMARIES_TOPIC,
                origin="west",
                version=current.version + 5,
                issued_at_ms=current.issued_at_ms + 5,
                payload=b"west is empty",
                heads=(),
                binding=mine,
            )
            await dropped(mallory, in_wests_name.encode(), DropReason.ORIGIN_MISMATCH)

            # A broker admitted by another federation's root: refused at the hello.
            other = Authority.create(tmp_path / "other", "other")
            init_member(tmp_path / "intruder", "intruder")
            other.admit_into(tmp_path / "intruder", role=Role.BROKER, region="east")
            intruder = await start(
                stack, Credentials.load(tmp_path / "intruder"), bootstrap=(east.address,)
            )
            await intruder.publish(SUMMARIES_TOPIC, b"intruder has 1000 GPUs")
            await wait_for_async(
                lambda: east.counts().dropped[DropReason.NON_MEMBER] >= 1, 10, "the refusal"
            )
            assert intruder.counts().peers == 0
            assert {s.origin: s for s in east.summaries(SUMMARIES_TOPIC)} == before_view
            assert "intruder" not in view(west)

    asyncio.run(body())


def view_envelope(host: PeerHost) -> bytes:
    """The host's own latest envelope."""
    own = host.summaries(SUMMARIES_TOPIC).get(host.name)
    if own is None:
        raise AssertionError(f"{host.name} has published nothing")
    return own.envelope


def all_published(hosts: list[PeerHost], before: dict[str, int]) -> bool:
    """Whether every host has published since its count was `before`."""
    return all(h.counts().published > before[h.name] for h in hosts)
