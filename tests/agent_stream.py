"""A hand-driven agent stream for tests that play a center: send messages, read the
broker's answers until the test has what it waits for (or the broker ends the stream),
then close. No fixed sleep: the stream stays open exactly as long as it is needed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from icx.v1 import agent_pb2, agent_pb2_grpc

Replies = list[agent_pb2.ConnectResponse]


def converse(
    address: str,
    *messages: agent_pb2.ConnectRequest,
    until: Callable[[Replies], bool] = lambda _: False,
    timeout_s: float = 10,
) -> Replies:
    """Send `messages` on one stream and return the replies, once `until(replies)` holds
    (then our side closes and the broker ends the stream) or the broker ends it (an
    abort raises grpc.RpcError, as the stub does). Times out after `timeout_s`."""
    done = threading.Event()

    def requests() -> Iterator[agent_pb2.ConnectRequest]:
        yield from messages
        done.wait(timeout_s)

    replies: Replies = []
    with grpc.insecure_channel(address) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(requests(), timeout=timeout_s)
        try:
            for reply in call:
                replies.append(reply)
                if until(replies):
                    done.set()
        finally:
            done.set()
    return replies
