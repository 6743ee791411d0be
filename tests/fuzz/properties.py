"""The two properties the harness checks, as plain functions of a `Harness` and
hypothesis's `data`, so that the bounded tests and the soak (`python -m bench fuzz`) run
the same code:

- `rpc_example`: one to three generated requests to any RPC of BrokerService,
  AdminService and LedgerService, each as a user of a drawn tenant (the coordinator for
  what only it may call), with a drawn x-icx-tenant header that must change nothing;
- `stream_example`: one hand-driven agent stream (a `StreamPlan`), presenting the
  certificate of the fuzzing center the plan names.

After each, the world's invariants (harness.py) must hold.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from hypothesis import note
from hypothesis import strategies as st

from icx.v1 import agent_pb2, agent_pb2_grpc, broker_pb2, types_pb2
from identity import Credentials
from identity.tls import channel
from tests.fuzz.harness import RPCS, USER_TENANTS, Broken, Harness, Outcome
from tests.fuzz.strategies import (
    BAIT_ACCELERATOR,
    BAIT_TENANT,
    SLEEPER,
    BaitRun,
    Messages,
    StreamPlan,
    now_ms,
    resolve,
    stream_plans,
)

REPLY_TIMEOUT_S = 10.0
# Submits make the state the other calls then work on: drawn three times as often.
WEIGHTED_RPCS = (*RPCS, *[r for r in RPCS if r.name == "SubmitJob"] * 2)
# Declared tenants (the x-icx-tenant header, which a member's call must not be taken
# by): ids, not ids, another center's id.
TENANTS = ("lab-a", "lab-b", "bad tenant", "FA", "ZA", "a" * 200, "", "a/b", "-x")
# The tenant whose user submits the victim job.
VICTIM_TENANT = "default"


def rpc_example(h: Harness, data: st.DataObject) -> None:
    with h.example():
        _rpc_example(h, data)


def _rpc_example(h: Harness, data: st.DataObject) -> None:
    messages = Messages(h)
    accepted: set[str] = set()
    for _ in range(data.draw(st.integers(1, 3), label="calls")):
        rpc = data.draw(st.sampled_from(WEIGHTED_RPCS), label="rpc")
        request = data.draw(messages.of(rpc.request), label=rpc.full_name)
        tenant = data.draw(st.sampled_from(USER_TENANTS), label="user of tenant")
        declared = data.draw(st.one_of(st.none(), st.sampled_from(TENANTS)), label="header")
        # Jobs still moving (accepted in this example, or live at all) change on their
        # own while the request is refused: their rows are left out of the comparison.
        skip_jobs = frozenset(accepted) | h.moving_jobs()
        skip_claims = h.claims_of(skip_jobs)
        before = h.fingerprint(skip_jobs, skip_claims)
        outcome = h.call(rpc, request, tenant, declared)
        note(f"{rpc.full_name} -> {outcome.code.name} {outcome.details[:200]!r}")
        h.check_status(rpc.full_name, outcome)
        if outcome.refused:
            h.refusals += 1
            after = h.fingerprint(skip_jobs, skip_claims | h.claims_of(skip_jobs))
            h.check_unchanged(rpc.full_name, before, after)
        elif rpc.name == "SubmitJob":
            accepted.add(outcome.reply.job.job_id)
            check_submit(h, request, outcome.reply.job)
        h.check_alive()
    # Drawn whatever happened: a draw that depends on the broker's answers would make
    # replaying an example (to shrink it) draw differently.
    if data.draw(st.booleans(), label="let the jobs run") and accepted:
        h.let_run(accepted)
    h.check_alive()
    h.settle(keep=h.kept_jobs())
    h.check_world()


def check_submit(h: Harness, request: broker_pb2.SubmitJobRequest, job: types_pb2.Job) -> None:
    """An acknowledged job is on disk, and a request id names one job and one spec."""
    if not h.sql("SELECT 1 FROM jobs WHERE job_id = ?", job.job_id):
        raise Broken("durable", f"SubmitJob acknowledged {job.job_id}, not in broker.db")
    if not request.request_id:
        return
    key = (job.tenant, request.request_id)
    spec = request.spec.SerializeToString(deterministic=True)
    first = h.submits.setdefault(key, (job.job_id, spec))
    if first[0] != job.job_id:
        raise Broken("idempotent", f"request id {key} gave {first[0]}, then {job.job_id}")
    if first[1] != spec:
        raise Broken(
            "idempotent", f"request id {key} accepted with another spec, answered {job.job_id}"
        )


class AgentStream:
    """One agent stream driven by hand: `send` puts a message up; replies (and the end of
    the stream, with its status) arrive on a reader thread and are taken with `take`."""

    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        """`credentials`: the center's membership (None against an --insecure broker)."""
        self._out: queue.Queue[agent_pb2.ConnectRequest | None] = queue.Queue()
        self._in: queue.Queue[agent_pb2.ConnectResponse | Outcome] = queue.Queue()
        self._channel = channel(address, credentials)
        self._call = agent_pb2_grpc.AgentServiceStub(self._channel).Connect(
            self._requests(), timeout=120
        )
        self._reader = threading.Thread(target=self._read, name="fuzz-stream", daemon=True)
        self._reader.start()
        self.end: Outcome | None = None
        self.reserves: list[agent_pb2.Reserve] = []
        self._marker = 0

    def _requests(self) -> Iterator[agent_pb2.ConnectRequest]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._in.put(reply)
            self._in.put(Outcome(grpc.StatusCode.OK))
        except grpc.RpcError as exc:
            self._in.put(Outcome(exc.code(), exc.details() or ""))

    def send(self, message: agent_pb2.ConnectRequest) -> None:
        self._out.put(message)

    def take(self) -> agent_pb2.ConnectResponse | None:
        """The next reply, or None once the stream has ended (`self.end` says how)."""
        if self.end is not None:
            return None
        try:
            item = self._in.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            raise Broken("health", f"no reply on the agent stream in {REPLY_TIMEOUT_S} s") from None
        if isinstance(item, Outcome):
            self.end = item
            return None
        if item.HasField("reserve"):
            self.reserves.append(item.reserve)
        return item

    def wait_reserve(self, timeout_s: float) -> agent_pb2.Reserve | None:
        """The first Reserve the broker sent, waiting up to `timeout_s` for it."""
        deadline = time.monotonic() + timeout_s
        while not self.reserves and self.end is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self._in.get(timeout=left)
            except queue.Empty:
                return None
            if isinstance(item, Outcome):
                self.end = item
            elif item.HasField("reserve"):
                self.reserves.append(item.reserve)
        return self.reserves[0] if self.reserves else None

    def barrier(self, want_ack: bool) -> agent_pb2.UsageAck | None:
        """Send a heartbeat and wait for its echo: the broker has read what came before.
        With `want_ack`, also wait for the usage acknowledgement. None if the stream
        ended first."""
        self._marker += 1
        marker = self._marker
        self.send(agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at_ms=marker)))
        echoed = False
        ack: agent_pb2.UsageAck | None = None
        while not echoed or (want_ack and ack is None):
            reply = self.take()
            if reply is None:
                return ack
            if reply.HasField("heartbeat") and reply.heartbeat.sent_at_ms == marker:
                echoed = True
            elif reply.HasField("usage_ack") and want_ack:
                ack = reply.usage_ack
        return ack

    def close_side(self) -> None:
        """End our side of the stream (the broker sees the stream end)."""
        self._out.put(None)

    def cancel(self) -> None:
        """Cancel the call (as an agent that goes away does) and wait for its end."""
        self._call.cancel()
        self._reader.join(timeout=REPLY_TIMEOUT_S)
        self._out.put(None)
        self._channel.close()

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._reader.join(timeout=REPLY_TIMEOUT_S)
        self._channel.close()


def _kind(message: agent_pb2.ConnectRequest) -> str:
    return message.WhichOneof("msg") or "empty"


def stream_example(h: Harness, data: st.DataObject) -> None:
    with h.example():
        _stream_example(h, data)


def _stream_example(h: Harness, data: st.DataObject) -> None:
    victim = h.ensure_victim()
    plan: StreamPlan = data.draw(stream_plans(h), label="stream")
    h.outcomes[f"stream plan: {plan.kind}"] += 1
    run_stream(h, plan)
    h.check_alive()
    h.check_victim(victim)
    h.settle(keep=h.kept_jobs())
    h.check_world()


def run_stream(h: Harness, plan: StreamPlan) -> None:
    stream = AgentStream(h.address, h.center_credentials(plan.as_center))
    try:
        before = h.fingerprint()
        stream.send(plan.hello)
        reply = stream.take()
        if reply is not None and reply.HasField("challenge"):
            proof = plan.proof_for(h, reply.challenge.nonce)
            if proof is None:
                stream.close_side()
            else:
                stream.send(proof)
            reply = stream.take()
        if reply is None or not reply.HasField("welcome"):
            _refused(h, stream, "Hello", before)
            return
        h.calls += 1
        run: BaitRun | None = None
        skip: frozenset[str] = frozenset()
        for i, planned in enumerate(plan.tail):
            message = resolve(planned, h, plan.center_id, run)
            kind = _kind(message)
            before = h.fingerprint(skip)
            h.calls += 1
            stream.send(message)
            ack = stream.barrier(want_ack=kind == "usage")
            if stream.end is not None:
                _refused(h, stream, kind, before, skip)
                return
            note(f"{kind} -> read" + (f", ack {ack}" if ack is not None else ""))
            verdict = "read" if ack is None else ("accepted" if ack.accepted else "refused")
            h.outcomes[f"agent stream, {kind} {verdict}"] += 1
            if ack is not None and ack.reason:
                h.sample_details.setdefault(f"agent stream, {kind} {verdict}", ack.reason[:120])
            if ack is not None and not ack.accepted:
                h.refusals += 1
                h.check_unchanged(f"usage ({ack.reason[:200]!r})", before, h.fingerprint(skip))
            if kind == "log":
                # Output is stored after the broker read it, not before it reads the next
                # message: that job's rows move on their own for a while.
                skip = skip | {message.log.job_id}
            if kind == "job_update" and run is not None:
                run = _observed(run, message.job_update)
            if i == 0 and plan.bait:
                # The offer is in: now the bait, which only this center can take.
                job_id = submit_bait(h)
                skip = frozenset({job_id})
                reserve = stream.wait_reserve(REPLY_TIMEOUT_S)
                note(f"bait {job_id}: {'reserved' if reserve else 'no reserve'}")
                h.outcomes[f"bait {'reserved' if reserve else 'not reserved'}"] += 1
                if reserve is not None:
                    run = BaitRun(
                        claim_id=reserve.claim_id, job_id=reserve.job_id, devices=reserve.devices
                    )
    finally:
        stream.close()


def _observed(run: BaitRun, update: agent_pb2.JobUpdate) -> BaitRun:
    """The run's start and end as the broker saw them (when we reported them)."""
    if update.claim_id != run.claim_id:
        return run
    if update.state == types_pb2.JOB_STATE_RUNNING:
        return dataclasses.replace(run, started_at_ms=now_ms())
    if update.state in (types_pb2.JOB_STATE_SUCCEEDED, types_pb2.JOB_STATE_FAILED):
        return dataclasses.replace(run, ended_at_ms=now_ms())
    return run


def _refused(
    h: Harness, stream: AgentStream, what: str, before: Any, skip: frozenset[str] = frozenset()
) -> None:
    end = stream.end or Outcome(grpc.StatusCode.UNKNOWN, "the stream went on unwelcomed")
    note(f"{what} -> {end.code.name} {end.details[:200]!r}")
    h.check_status(f"agent stream, {what}", end)
    if end.refused:
        h.refusals += 1
        h.check_unchanged(f"agent stream, {what}", before, h.fingerprint(skip))


def victim_spec() -> types_pb2.JobSpec:
    """A job that runs until cancelled on the real center FB: the claim the hostile
    centers try to answer, update and bill."""
    return types_pb2.JobSpec(
        name="victim", accelerator="nvidia-h800", devices=1, estimated_seconds=3600,
        command=list(SLEEPER),
    )  # fmt: skip


def submit_bait(h: Harness) -> str:
    """A job only a fuzzing center's pool fits."""
    spec = types_pb2.JobSpec(
        name="bait", accelerator=BAIT_ACCELERATOR, devices=1, estimated_seconds=60,
        command=list(SLEEPER),
    )  # fmt: skip
    reply = h.user(BAIT_TENANT).SubmitJob(broker_pb2.SubmitJobRequest(spec=spec), timeout=10)
    return str(reply.job.job_id)


def submit_victim(h: Harness) -> str:
    request = broker_pb2.SubmitJobRequest(spec=victim_spec())
    reply = h.user(VICTIM_TENANT).SubmitJob(request, timeout=10)
    return str(reply.job.job_id)
