"""The center's runs: claims decided against the DeviceBook, launches through the
backend, supervision to the end, cancels, fencing, and the run table on disk that lets a
restarted agent re-attach to what it launched.

Takes and returns domain values; what it has to say goes to `RunEvents`, which the agent
forwards to the broker.

One job or one order never stops the agent: a launch that fails in any way (a spec exec
cannot carry, a program that does not exist, a backend error, a run table that cannot
be written) fails that job with the reason and frees its devices; a cancel frees the
devices whatever state the run is in; every task spawned here contains its own errors,
logs them and counts them (`icx_agent_faults`), so the agent's task group never ends
because of one job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.clock import Clock
from core.errors import InvalidArgument
from core.ids import check_id, shown
from core.states import TERMINAL, JobState
from core.types import CenterDescriptor, JobId, LogChunk, accepts_image
from node_agent._messages import (
    CancelOrder,
    ClaimAnswer,
    HeldClaim,
    JobUpdate,
    LaunchOrder,
    ReserveOrder,
)
from node_agent._metering import DEFAULT_INTERVAL_S, Interval, RunFacts, due_intervals
from node_agent._output import STREAM_MAX_BYTES, JobOutput, Pace
from node_agent._run_table import RunRow, RunTable
from node_agent.backends import Backend, LaunchRequest, Run, engine_end_ms
from node_agent.devices import DeviceBook
from node_agent.errors import CannotReattach, Refused
from node_agent.metrics import AgentMetrics

log = logging.getLogger("icx.agent")

FINISHED_RETENTION_MS = 10 * 60_000
"""How long an ended run stays in the Hello's held claims (and the run table)."""

_EPOCH_SHIFT = 32  # output sequence numbers: (agent lives that followed the run) << 32 | n

CANCEL_SETTLE_S = 10.0
"""How long a cancel waits, after stopping a run, for the run's end before it ends the
job itself and frees the devices (a backend that cannot stop the run, or never reports
its end)."""

REASON_CHARS = 200
"""The longest reason the agent reports for a job's end (it may quote what it was sent)."""

Spawn = Callable[[Coroutine[Any, Any, None]], object]
DeviceNames = Callable[[str, tuple[int, ...]], tuple[str, ...]]
"""(pool id, the pool's device indices) -> those devices as the machine names them."""


class RunEvents(Protocol):
    """What the runs tell the rest of the agent."""

    def update(self, update: JobUpdate) -> None: ...

    def output(self, chunk: LogChunk) -> None: ...

    def changed(self) -> None:
        """The free devices changed: advertise again."""
        ...

    def metered(self, run: RunFacts, interval: Interval) -> bool:
        """An interval of a run that started has passed (or the run ended): sign its
        usage; True if the record was kept. Called once per interval, in order, and
        again with the same facts only if a restart came before the run table noted it
        metered."""
        ...


@dataclass(slots=True, kw_only=True)
class _Task:
    """A claim's job at this center; `row` once launched."""

    claim_id: str
    job_id: str
    state: JobState = JobState.CLAIMED
    row: RunRow | None = None
    run: Run | None = None
    exit_code: int | None = None
    ended_at_ms: int = 0
    reason: str = ""  # why it ended, as reported to the broker
    log_seq: int = 0
    cancelled: bool = False
    # Stopped because the broker went silent: given back (or left out of the next Hello)
    # so that the broker requeues it.
    fenced: bool = False
    output: JobOutput | None = None
    # An interval could not be metered (no key, or a failure, logged once): no more
    # until the run's end, which meters the rest.
    metering_stopped: bool = False
    # Set once the job has ended here (or was given back): a cancel waits for it.
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def launching(self) -> bool:
        """Launched by the broker, and the backend has not yet returned the run."""
        return self.state == JobState.RUNNING and self.run is None


class Runs:
    def __init__(
        self,
        *,
        center: CenterDescriptor,
        backend: Backend,
        table: RunTable,
        workdir: Path,
        clock: Clock,
        events: RunEvents,
        metrics: AgentMetrics,
        pace: Pace | None = None,
        stream_max_bytes: int = STREAM_MAX_BYTES,
        metering_interval_s: int = DEFAULT_INTERVAL_S,
    ) -> None:
        """`metering_interval_s`: how often a running job's usage is signed (as well as
        at its end)."""
        self.center = center
        self.backend = backend
        self.book = DeviceBook(center)
        self.table = table
        self.workdir = workdir
        self.clock = clock
        self.events = events
        self.metrics = metrics
        self.tasks: dict[str, _Task] = {}
        self.pace = pace or Pace()
        self.cancel_settle_s = CANCEL_SETTLE_S
        self.stream_max_bytes = stream_max_bytes
        self.metering_interval_s = metering_interval_s
        # How the machine names a pool's devices (set when they were discovered).
        self.device_names: DeviceNames | None = None
        self._spawn: Spawn | None = None

    # ------------------------------------------------------------- the broker's orders

    def reserve(self, order: ReserveOrder) -> ClaimAnswer:
        """Hold devices for a claim, or refuse it saying why. Announces the new free count
        (`changed`) before it returns an acceptance, so the broker never believes these
        devices free once it hears the answer."""
        try:
            _check_image(self.center, order.image)
            holding = self.book.reserve(
                claim_id=order.claim_id,
                job_id=order.job_id,
                pool_id=order.pool_id,
                devices=order.devices,
                lease_expires_at_ms=order.lease_expires_at_ms,
            )
        except Refused as exc:
            self.metrics.claims.labels(outcome="refused").inc()
            log.info("claim %s for job %s refused: %s", order.claim_id, order.job_id, exc)
            return ClaimAnswer(claim_id=order.claim_id, accepted=False, reason=str(exc))
        self.metrics.claims.labels(outcome="accepted").inc()
        self.tasks.setdefault(order.claim_id, _Task(claim_id=order.claim_id, job_id=order.job_id))
        log.info(
            "claim %s for job %s accepted: %s devices %s",
            order.claim_id,
            order.job_id,
            order.pool_id,
            ",".join(map(str, holding.indices)),
        )
        self.events.changed()
        return ClaimAnswer(claim_id=order.claim_id, accepted=True, device_indices=holding.indices)

    def start_launch(self, order: LaunchOrder) -> None:
        """Launch in the background: the stream goes on reading (heartbeats, a cancel for
        this very claim) while the backend starts the job."""
        self._spawning(self.launch(order), "launch")

    def start_cancel(self, order: CancelOrder) -> None:
        self._spawning(self.cancel(order), "cancel")

    def refuse_launch(self, claim_id: str, job_id: str, reason: str) -> None:
        """A launch the agent cannot even read (a spec that does not check): the job
        fails with `reason` and the claim's devices are free again."""
        reason = _cut(f"cannot start the job: {reason}")
        log.error("claim %s (job %s): %s", claim_id, shown(job_id), reason)
        task = self.tasks.get(claim_id)
        if task is not None:
            if task.state == JobState.CLAIMED:
                self._end(task, JobState.FAILED, None, reason)
            return  # launched already: this was a resend, and the run goes on
        if self.book.release(claim_id) is not None:
            self.events.changed()
        self._update(claim_id, job_id, JobState.FAILED, message=reason)

    async def launch(self, order: LaunchOrder) -> None:
        """Start the claim's job. Never raises: whatever goes wrong fails this job alone,
        with the reason, and frees its devices."""
        task = self.tasks.get(order.claim_id)
        holding = self.book.holdings.get(order.claim_id)
        if task is None or holding is None:
            # Given back, not failed: the job never started, so it runs elsewhere.
            self._update(
                order.claim_id,
                order.job_id,
                JobState.QUEUED,
                message="reservation lapsed before the launch arrived",
            )
            return
        if task.state != JobState.CLAIMED:
            return  # already launched (a resent launch after reconnect)
        self.book.launch(order.claim_id)
        task.state = JobState.RUNNING  # launching: no run yet
        try:
            request = self._request(order, holding.pool_id, holding.indices)
            task.output = self._output(task, request.workdir)
            run = await self.backend.launch(request, task.output.write)
            # Billed from when the backend says it runs (a Slurm job may wait in Slurm's
            # queue first), never from the submission.
            started_at_ms = self.clock.now_ms()
        except Exception as exc:
            if not isinstance(exc, OSError | InvalidArgument):  # those say why themselves
                log.exception("job %s: the backend failed to launch it", shown(order.job_id))
                self.metrics.faults.labels(where="launch").inc()
            if task.output is not None:
                task.output.close()
            self._end(task, JobState.FAILED, None, _launch_failure(order, exc))
            return
        task.run = run
        if task.done.is_set():  # a cancel gave up waiting for the backend and ended it
            log.info("job %s: started after it was cancelled; stopping it", task.job_id)
            await self._kill(task)
            await self._reap(task)
            return
        # On disk before the launch is reported: a restarted agent finds the run.
        row = RunRow(
            claim_id=task.claim_id,
            job_id=task.job_id,
            pool_id=holding.pool_id,
            device_indices=holding.indices,
            backend=self.backend.name,
            backend_run_id=run.run_id,
            tenant=order.tenant,
            started_at_ms=started_at_ms,
            state=JobState.RUNNING,
        )
        try:
            self.table.put(row)
        except Exception as exc:
            # A run the table does not hold would be lost to a restart: stop it now.
            log.exception("job %s: cannot write the run table", task.job_id)
            self.metrics.faults.labels(where="run_table").inc()
            await self._kill(task)
            if task.output is not None:
                task.output.close()
            self._end(
                task, JobState.FAILED, None, _cut(f"cannot record the run at this center: {exc}")
            )
            return
        task.row = row
        log.info(
            "job %s running on %s devices %s", task.job_id, holding.pool_id, list(holding.indices)
        )
        self._start_supervising(task)
        if task.cancelled or task.fenced:  # while the backend was starting it
            await self._stop(task, "cancelled" if task.cancelled else "cut off")
            return
        self._update(
            task.claim_id, task.job_id, JobState.RUNNING, message=f"started on {holding.pool_id}"
        )

    def _request(self, order: LaunchOrder, pool_id: str, indices: tuple[int, ...]) -> LaunchRequest:
        # The job id names the job's folder: one path component, never `..` or a `/`.
        check_id("job_id", order.job_id, InvalidArgument)
        return LaunchRequest(
            claim_id=order.claim_id,
            job_id=order.job_id,
            command=order.spec.command,
            env={
                **dict(order.spec.env),
                "ICX_CENTER_ID": self.center.center_id,
                "ICX_POOL_ID": pool_id,
                "ICX_CLAIM_ID": order.claim_id,
            },
            device_indices=indices,
            workdir=self.workdir / order.job_id,
            image=order.spec.image,
            memory_mb=order.spec.memory_mb,
            millicpus=order.spec.millicpus,
            network=order.spec.network,
            visible_devices=self.device_names(pool_id, indices) if self.device_names else (),
        )

    async def cancel(self, order: CancelOrder) -> None:
        """Stop the claim's job and free its devices, whatever state it is in: a
        reservation at once; a launching job once the backend returns its run; a running
        or ending one once it is stopped. A backend that does not return the run, cannot
        stop it or never reports its end holds the devices for `cancel_settle_s` at most:
        then the job ends here (and a run that starts after that is stopped at once)."""
        task = self.tasks.get(order.claim_id)
        if task is None:
            if self.book.release(order.claim_id) is not None:
                self.events.changed()
            return
        if task.state == JobState.CLAIMED:
            self.book.release(task.claim_id)
            self.tasks.pop(task.claim_id, None)
            task.done.set()
            self.events.changed()
            return
        if task.state != JobState.RUNNING or task.fenced:
            return  # ended (its devices are free) or being given back
        task.cancelled = True
        if task.run is None:
            log.info("job %s: cancelled while launching; stopped once started", task.job_id)
            try:
                await asyncio.wait_for(task.done.wait(), self.cancel_settle_s)
            except TimeoutError:
                log.error(
                    "job %s: its backend has not started it %.1f s after the cancel; "
                    "freeing its devices (the run is stopped if it ever starts)",
                    task.job_id,
                    self.cancel_settle_s,
                )
                self.metrics.faults.labels(where="cancel").inc()
                self._end(task, JobState.CANCELLED, None, "cancelled (the launch did not return)")
            return
        await self._stop(task, order.reason or "cancelled")

    async def _stop(self, task: _Task, why: str) -> None:
        log.info("job %s: stopping (%s)", task.job_id, why)
        await self._kill(task)
        try:
            await asyncio.wait_for(task.done.wait(), self.cancel_settle_s)
        except TimeoutError:
            log.error(
                "job %s: no end reported %.1f s after it was stopped; freeing its devices",
                task.job_id,
                self.cancel_settle_s,
            )
            self.metrics.faults.labels(where="cancel").inc()
            if task.fenced:
                self._give_back(task, None)
            else:
                self._end(
                    task, JobState.CANCELLED, None, "cancelled (the run did not report its end)"
                )

    async def _reap(self, task: _Task) -> None:
        """Wait for a stopped run nobody supervises, and close its output."""
        assert task.run is not None
        try:
            await task.run.wait()
        except Exception:
            log.exception("job %s: waiting for its stopped run failed", task.job_id)
        finally:
            if task.output is not None:
                task.output.close()

    async def _kill(self, task: _Task) -> None:
        """Stop the task's run; a backend error is logged and counted, not raised."""
        if task.run is None:
            return
        try:
            await task.run.kill()
        except Exception:
            log.exception("job %s: stopping its run failed", task.job_id)
            self.metrics.faults.labels(where="kill").inc()

    def stale(self, claim_ids: tuple[str, ...]) -> None:
        """Claims the broker no longer gives this center: stop the live ones, forget the
        ended ones."""
        for claim_id in claim_ids:
            task = self.tasks.get(claim_id)
            if task is not None and task.state in (JobState.CLAIMED, JobState.RUNNING):
                log.info(
                    "claim %s (job %s) is stale at the broker: stopping", claim_id, task.job_id
                )
                self.start_cancel(CancelOrder(claim_id=claim_id, reason="stale"))
            elif task is not None:
                self._forget(task)

    # ------------------------------------------------------------------ what it holds

    def held(self) -> list[HeldClaim]:
        return [
            HeldClaim(claim_id=t.claim_id, job_id=t.job_id, state=t.state, exit_code=t.exit_code)
            for t in self.tasks.values()
        ]

    def running(self) -> int:
        return sum(1 for t in self.tasks.values() if t.state == JobState.RUNNING)

    # ------------------------------------------------------------------- over time

    def lapse(self, now_ms: int) -> bool:
        """Release reservations whose lease passed without a launch; True if any did."""
        lapsed = self.book.lapse(now_ms)
        for h in lapsed:
            log.info("reservation %s for job %s lapsed", h.claim_id, h.job_id)
            self.tasks.pop(h.claim_id, None)
        return bool(lapsed)

    def meter_due(self, now_ms: int) -> int:
        """Meter every interval of the running jobs that has passed by `now_ms`; the
        number of records kept. A job being stopped because the broker went silent is
        not metered further (it is given back; what was metered before stays billed), nor
        one whose metering failed until it ends (its end meters the rest)."""
        kept = 0
        for task in list(self.tasks.values()):
            if task.state != JobState.RUNNING or task.row is None:
                continue
            if task.fenced or task.metering_stopped:
                continue
            done = self._meter_until(task, now_ms, final=False)
            if done < 0:
                task.metering_stopped = True
            else:
                kept += done
        return kept

    def forget_ended(self, now_ms: int) -> None:
        for task in list(self.tasks.values()):
            if task.ended_at_ms and now_ms - task.ended_at_ms > FINISHED_RETENTION_MS:
                self._forget(task)

    async def fence(self) -> int:
        """Stop every live job (the broker is silent and will requeue them); the number
        stopped. A stopped run is given back, not ended: the intervals metered before the
        stop stay billed (signed, in the outbox or the ledger), the part since the last of
        them is not (at most one interval; the job runs again elsewhere)."""
        live = [
            t
            for t in self.tasks.values()
            if t.state in (JobState.CLAIMED, JobState.RUNNING) and not t.fenced
        ]
        kills = []
        for task in live:
            if task.state == JobState.RUNNING and task.run is not None:
                task.fenced = True
                kills.append(self._kill(task))
            elif task.state == JobState.RUNNING:
                task.fenced = True  # launching: launch() stops it once started
            else:
                self.book.release(task.claim_id)
                self.tasks.pop(task.claim_id, None)
        await asyncio.gather(*kills)
        return len(live)

    async def stop(self) -> None:
        """Stop every running job (the agent is shutting down)."""
        await asyncio.gather(
            *(
                self._kill(t)
                for t in self.tasks.values()
                if t.run is not None and t.state == JobState.RUNNING
            )
        )

    # ----------------------------------------------------------------- after a restart

    async def restore(self, spawn: Spawn) -> None:
        """Take up the runs an earlier life of this agent left in the table: re-attach to
        the live ones (or report them lost), meter ended ones not yet metered, and stop
        runs the backend started that the table never heard of or that could not be
        re-attached (the broker requeues their jobs). Then supervise through
        `spawn` (the agent's task group)."""
        self._spawn = spawn
        unknown = set(await self.backend.list_runs())
        for row in list(self.table.rows.values()):
            if row.ended:
                unknown.discard(row.backend_run_id)
                task = _Task(
                    claim_id=row.claim_id,
                    job_id=row.job_id,
                    state=row.state,
                    row=row,
                    exit_code=row.exit_code,
                    ended_at_ms=row.ended_at_ms,
                )
                task.done.set()
                self.tasks[row.claim_id] = task
                if not row.metered:
                    self._meter(task)
                continue
            if await self._reattach(row) or row.backend != self.backend.name:
                unknown.discard(row.backend_run_id)
        for run_id in sorted(unknown):
            # Started, but the agent died before it was in the table, or its claim was
            # lost across the restart: the broker will requeue the job; it must not
            # also run here.
            log.warning("backend run %s is in no claim: stopping it", run_id)
            try:
                run = await self.backend.reattach(run_id, _discard)
                await run.kill()
            except Exception as exc:
                log.warning("cannot stop backend run %s: %s", run_id, exc)

    async def _reattach(self, row: RunRow) -> bool:
        """Follow the row's run again; False (the row dropped) when it is lost."""
        # A new epoch before any output arrives: sequence numbers above the last life's.
        task = _Task(
            claim_id=row.claim_id,
            job_id=row.job_id,
            state=JobState.RUNNING,
            row=dataclasses.replace(row, log_epoch=row.log_epoch + 1),
        )
        try:
            if row.backend != self.backend.name:
                raise CannotReattach(
                    f"run {row.backend_run_id} belongs to backend {row.backend!r}, "
                    f"this agent runs {self.backend.name!r}"
                )
            self.book.restore(
                claim_id=row.claim_id,
                job_id=row.job_id,
                pool_id=row.pool_id,
                indices=row.device_indices,
            )
            try:
                task.output = self._output(task, self.workdir / row.job_id)
                task.run = await self.backend.reattach(row.backend_run_id, task.output.write)
            except Exception:
                self.book.release(row.claim_id)
                if task.output is not None:
                    task.output.close()
                raise
        except Exception as exc:
            # Left out of the Hello: the broker requeues the job, as for any job the
            # center no longer holds.
            log.warning(
                "job %s lost across the restart (claim %s): %s", row.job_id, row.claim_id, exc
            )
            self._drop_row(row.claim_id)
            return False
        assert task.row is not None
        try:
            self.table.put(task.row)
        except OSError as exc:
            log.error("job %s: cannot write the run table: %s", row.job_id, exc)
        self.tasks[row.claim_id] = task
        log.info("job %s re-attached (backend run %s)", row.job_id, row.backend_run_id)
        self._start_supervising(task)
        return True

    # ------------------------------------------------------------------- internals

    def _start_supervising(self, task: _Task) -> None:
        self._spawning(self._supervise(task), "supervise")

    def _spawning(self, coro: Coroutine[Any, Any, None], where: str) -> None:
        assert self._spawn is not None, "restore() first: the runs have no task group"
        self._spawn(self._contained(coro, where))

    async def _contained(self, coro: Coroutine[Any, Any, None], where: str) -> None:
        """Run `coro` in the agent's task group without ever ending it: an error is one
        job's or one order's, logged and counted."""
        try:
            await coro
        except Exception:
            log.exception("%s failed; the agent goes on", where)
            self.metrics.faults.labels(where=where).inc()

    def _output(self, task: _Task, folder: Path) -> JobOutput:
        def send(stream: str, data: bytes) -> None:
            task.log_seq += 1
            epoch = task.row.log_epoch if task.row is not None else 0
            self.events.output(
                LogChunk(
                    job_id=JobId(task.job_id),
                    seq=(epoch << _EPOCH_SHIFT) + task.log_seq,
                    stream=stream,
                    data=data,
                )
            )

        return JobOutput(
            folder,
            job_id=task.job_id,
            send=send,
            pace=self.pace,
            stream_max_bytes=self.stream_max_bytes,
        )

    async def _supervise(self, task: _Task) -> None:
        assert task.run is not None
        lost = ""
        code: int | None
        try:
            code = await task.run.wait()
        except Exception as exc:
            log.exception("job %s: its backend lost track of the run", task.job_id)
            self.metrics.faults.labels(where="wait").inc()
            code, lost = None, _cut(f"the center lost track of the run: {exc}")
            await self._kill(task)
        finally:
            if task.output is not None:
                task.output.close()
        if task.done.is_set():
            return  # a cancel ended it (or gave it back) already
        if task.fenced and code == 0:
            task.fenced = False  # it finished on its own before the stop took effect
        if task.fenced:
            self._give_back(task, code)
        elif task.cancelled:
            self._end(task, JobState.CANCELLED, code, "cancelled")
        elif lost:
            self._end(task, JobState.FAILED, code, lost)
        elif code == 0:
            self._end(task, JobState.SUCCEEDED, code, "exit 0")
        else:
            self._end(task, JobState.FAILED, code, _exit_reason(code))

    def _give_back(self, task: _Task, code: int | None) -> None:
        """A run stopped because the broker went silent: not ended, and not metered
        further (its intervals metered before the stop stay billed; the rest is not)."""
        if task.done.is_set():
            return
        self.book.release(task.claim_id)
        self.tasks.pop(task.claim_id, None)
        self._drop_row(task.claim_id)
        task.done.set()
        log.info("job %s stopped while cut off (exit %s): giving it back", task.job_id, code)
        # If the stream is back by now, say so; if not, the next Hello will not list the
        # job and the broker requeues it then.
        self._update(task.claim_id, task.job_id, JobState.QUEUED, message="stopped while cut off")
        self.events.changed()

    def _end(self, task: _Task, state: JobState, code: int | None, message: str) -> None:
        """End the job here: on disk, its devices free, reported, metered. Once only."""
        if task.state in TERMINAL:
            return
        at = self.clock.now_ms()
        engine_end = engine_end_ms(task.run) if task.run is not None else None
        if engine_end is not None:
            at = min(at, engine_end)  # it ended while the agent was away: then
        if task.row is not None:
            # A clock stepped back ends no run early, nor before what is billed already.
            at = max(at, task.row.started_at_ms, task.row.metered_to_ms)
        task.state = state
        task.exit_code = code
        task.ended_at_ms = at
        task.reason = message
        if task.row is not None:
            # The end is on disk before it is metered: a restart meters these facts.
            task.row = dataclasses.replace(task.row, state=state, exit_code=code, ended_at_ms=at)
            try:
                self.table.put(task.row)
            except OSError as exc:
                log.error("job %s: cannot write its end to the run table: %s", task.job_id, exc)
                self.metrics.faults.labels(where="run_table").inc()
        self.metrics.jobs_ended.labels(state=state.value).inc()
        self.book.release(task.claim_id)
        task.done.set()
        log.info("job %s %s (%s)", task.job_id, state, message)
        self._update(task.claim_id, task.job_id, state, exit_code=code, message=message)
        self.events.changed()
        if task.row is not None:
            self._meter(task)

    def _meter(self, task: _Task) -> None:
        """Meter what is left of an ended run, then mark it metered."""
        row = task.row
        assert row is not None and row.ended
        if self._meter_until(task, row.ended_at_ms, final=True) < 0:
            return  # nothing to meter (no key, no tenant) or metering failed (logged)
        assert task.row is not None
        row = task.row = dataclasses.replace(task.row, metered=True)
        try:
            self.table.put(row)
        except OSError as exc:
            log.error("job %s: cannot mark it metered: %s", task.job_id, exc)

    def _meter_until(self, task: _Task, until_ms: int, *, final: bool) -> int:
        """Sign the run's intervals due at `until_ms` (with `final`, the rest of an
        ended run), noting each in the run table once it is in the outbox; the number
        kept, or -1 if one was not kept (the next call tries it again)."""
        row = task.row
        assert row is not None
        due = due_intervals(
            started_at_ms=row.started_at_ms,
            metered_n=row.metered_n,
            metered_to_ms=row.metered_to_ms,
            until_ms=until_ms,
            interval_s=self.metering_interval_s,
            final=final,
        )
        for interval in due:
            facts = RunFacts(
                claim_id=row.claim_id,
                job_id=row.job_id,
                tenant=row.tenant,
                pool_id=row.pool_id,
                devices=len(row.device_indices),
                started_at_ms=row.started_at_ms,
                ended_at_ms=interval.end_ms,
            )
            if not self.events.metered(facts, interval):
                return -1
            row = dataclasses.replace(row, metered_n=interval.n, metered_to_ms=interval.end_ms)
            task.row = row
            try:
                self.table.put(row)
            except OSError as exc:
                # The record is signed and kept: a restart before the table is written
                # signs the same bytes again, which the ledger takes once.
                log.error(
                    "job %s: cannot note interval %d metered: %s", task.job_id, interval.n, exc
                )
                self.metrics.faults.labels(where="run_table").inc()
        return len(due)

    def _forget(self, task: _Task) -> None:
        self.tasks.pop(task.claim_id, None)
        self._drop_row(task.claim_id)

    def _drop_row(self, claim_id: str) -> None:
        try:
            self.table.drop(claim_id)
        except OSError as exc:
            log.error("claim %s: cannot write the run table: %s", claim_id, exc)
            self.metrics.faults.labels(where="run_table").inc()

    def _update(
        self,
        claim_id: str,
        job_id: str,
        state: JobState,
        *,
        exit_code: int | None = None,
        message: str = "",
    ) -> None:
        self.events.update(
            JobUpdate(
                claim_id=claim_id,
                job_id=job_id,
                state=state,
                at_ms=self.clock.now_ms(),
                exit_code=exit_code,
                message=message,
            )
        )


async def _discard(stream: str, data: bytes) -> None:
    """Output of a run being stopped: nobody reads it."""


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _launch_failure(order: LaunchOrder, exc: Exception) -> str:
    """Why the launch failed, for the job's reason: short, quoting at most a little of
    what the broker sent."""
    if isinstance(exc, OSError) and exc.strerror:
        return _cut(f"cannot start {shown(order.spec.command[0])}: {exc.strerror}")
    return _cut(f"cannot start the job: {str(exc) or type(exc).__name__}")


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit {code}"


def _check_image(center: CenterDescriptor, image: str) -> None:
    """Refuse a claim for a job this center cannot run: an image it does not accept, or
    none at a center that runs only containers (the matcher sends neither; a center's
    list may have changed since its last offer)."""
    if accepts_image(center.images, image):
        return
    if image:
        accepts = ", ".join(center.images) or "none: it runs no containers"
        raise Refused(f"this center does not accept the image {image!r} (it accepts {accepts})")
    raise Refused("this center runs only container images; the job names none")
