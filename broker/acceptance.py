"""The home broker's ledger accepts the usage of its tenants' jobs that ran at a peer.

When a forwarded job ends, its owner's ledger holds the run's records (signed by the
center, countersigned by the owner). The home broker asks the owner for them as proof
bundles (FederationService.JobRecords), checks each against the owner's log key (bound to
the owner's membership by gossip, broker.witnessing), and appends it to its own log as an
accepted entry naming the owner's origin, index and checkpoint. It asks again a few times
as the last records of a run arrive after its end; an entry already accepted is skipped.
After a restart, the jobs that ended within the last hour are asked about again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from broker.jobs import JobBook
from broker.ledger import BrokerLedger
from broker.peers import Peers
from broker.witnessing import Witnessing
from core.clock import Clock
from core.errors import IcxError, PermissionDenied
from core.states import TERMINAL
from core.types import Job, JobId
from icx.v1 import federation_pb2, federation_pb2_grpc
from ledger.bundle import ProofBundle
from ledger.signing import SignedRecord

log = logging.getLogger("icx.broker.acceptance")

# After a forwarded job ends: ask its owner for the records then, and again.
ASK_AFTER_S = (0.5, 2.0, 5.0, 15.0, 60.0, 300.0)
RESUME_WITHIN_MS = 3_600_000


class Acceptance:
    def __init__(
        self,
        *,
        ledger: BrokerLedger,
        peers: Peers,
        witnessing: Witnessing,
        jobs: JobBook,
        clock: Clock,
        ask_after_s: tuple[float, ...] = ASK_AFTER_S,
    ) -> None:
        self.ledger = ledger
        self.peers = peers
        self.witnessing = witnessing
        self.jobs = jobs
        self.clock = clock
        self.ask_after_s = ask_after_s
        self.accepted = 0
        self._tasks: dict[tuple[JobId, str], asyncio.Task[None]] = {}

    def ended(self, job: Job, owner: str) -> None:
        """A forwarded job is done at `owner` (ended, handed back, cancelled): collect
        the records of what ran there."""
        key = (job.job_id, owner)
        if not owner or key in self._tasks:
            return
        task = asyncio.create_task(self._collect(job, owner), name=f"accept-{job.job_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    def resume(self) -> int:
        """Collect again for forwarded jobs that ended recently (after a restart)."""
        since = self.clock.now_ms() - RESUME_WITHIN_MS
        recent = [
            j
            for j in self.jobs.jobs.values()
            if j.broker and j.state in TERMINAL and j.updated_at_ms >= since
        ]
        for job in recent:
            self.ended(job, job.broker)
        return len(recent)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _collect(self, job: Job, owner: str) -> None:
        job_id = job.job_id
        for delay in self.ask_after_s:
            await asyncio.sleep(delay)
            try:
                await self._ask(job, owner)
            except grpc.aio.AioRpcError as exc:
                log.info("records of job %s at %s: %s (asking again)", job_id, owner, exc.details())
            except IcxError as exc:
                log.warning("records of job %s at %s refused: %s", job_id, owner, exc)
            except Exception:
                log.exception("accepting the records of job %s from %s failed", job_id, owner)

    async def _ask(self, job: Job, owner: str) -> None:
        job_id = job.job_id
        key = self.witnessing.log_key(owner)
        channel = self.peers.channel(owner)
        if key is None or channel is None or owner in self.peers.distrusted:
            return
        stub = federation_pb2_grpc.FederationServiceStub(channel)
        reply = await stub.JobRecords(federation_pb2.JobRecordsRequest(job_id=job_id), timeout=10)
        for text in reply.bundles_json:
            bundle = ProofBundle.from_json(text)
            record = SignedRecord.from_entry(bundle.leaf).record
            if record.job_id != job_id or record.consumer != job.tenant:
                raise PermissionDenied(
                    f"{owner} answered for job {job_id} (tenant {job.tenant}) with a record of "
                    f"job {record.job_id} (tenant {record.consumer})"
                )
            accepted_id = f"{key.name}#{bundle.index}"
            if await self.ledger.has_accepted(accepted_id):
                continue
            index = await self.ledger.accept(owner, text, key)
            self.accepted += 1
            log.info(
                "accepted %s's record %s for job %s at entry %d", owner, accepted_id, job_id, index
            )
