"""A hand-driven agent stream for tests that play a center: send messages, answer what
the broker says (its challenge, say), read its answers until the test has what it waits
for (or the broker ends the stream), then close. No fixed sleep: the stream stays open
exactly as long as it is needed."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence

from core.handshake import proof_message
from icx.v1 import agent_pb2, agent_pb2_grpc
from identity import Credentials
from identity.tls import channel
from ledger import SignerKey

Replies = list[agent_pb2.ConnectResponse]
Respond = Callable[[agent_pb2.ConnectResponse], Sequence[agent_pb2.ConnectRequest]]
_CLOSE = object()


def no_answer(_: agent_pb2.ConnectResponse) -> Sequence[agent_pb2.ConnectRequest]:
    return ()


def prove_with(center_id: str, key: SignerKey) -> Respond:
    """Answer the broker's challenge as the center holding `key` does."""

    def respond(reply: agent_pb2.ConnectResponse) -> Sequence[agent_pb2.ConnectRequest]:
        if reply.HasField("challenge"):
            signature = key.sign(proof_message(center_id, reply.challenge.nonce))
            return [agent_pb2.ConnectRequest(proof=agent_pb2.HelloProof(signature=signature))]
        return ()

    return respond


def converse(
    address: str,
    *messages: agent_pb2.ConnectRequest,
    respond: Respond = no_answer,
    then: Sequence[agent_pb2.ConnectRequest] = (),
    until: Callable[[Replies], bool] = lambda _: False,
    timeout_s: float = 10,
    credentials: Credentials | None = None,
) -> Replies:
    """Send `messages` on one stream, answer each reply with `respond(reply)`, send
    `then` once welcomed, and return the replies once `until(replies)` holds (then our
    side closes and the broker ends the stream) or the broker ends it (an abort raises
    grpc.RpcError, as the stub does). Times out after `timeout_s`. `credentials`: the
    center's membership (LocalFederation.credentials(Role.CENTER, id)); None for a
    broker that runs --insecure."""
    outgoing: queue.Queue[object] = queue.Queue()
    for m in messages:
        outgoing.put(m)

    def requests() -> Iterator[agent_pb2.ConnectRequest]:
        while True:
            item = outgoing.get(timeout=timeout_s)
            if item is _CLOSE:
                return
            assert isinstance(item, agent_pb2.ConnectRequest)
            yield item

    replies: Replies = []
    with channel(address, credentials) as chan:
        call = agent_pb2_grpc.AgentServiceStub(chan).Connect(requests(), timeout=timeout_s)
        try:
            for reply in call:
                replies.append(reply)
                for m in respond(reply):
                    outgoing.put(m)
                if reply.HasField("welcome"):
                    for m in then:
                        outgoing.put(m)
                if until(replies):
                    outgoing.put(_CLOSE)
        finally:
            outgoing.put(_CLOSE)
    return replies
