"""The broker's state machine driven directly (a real Broker on a real SQLite store, time
from a ManualClock the tests advance), for the edges that are slow to reach through
processes: lapsed leases, refusals, the retry limit when a center keeps getting lost,
duplicate submits, region checks, round logging and gauges."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker.centers import Cancel, ClaimReply, Command, JobUpdate, Reserve, Session
from broker.core import Broker, BrokerConfig
from broker.sqlite_store import SqliteStore
from core.clock import ManualClock
from core.errors import FailedPrecondition, InvalidJobSpec, NotFound, PermissionDenied
from core.states import JobState
from core.types import JobSpec, LogChunk, Offer
from tests.conftest import make_center

T = TypeVar("T")

SPEC = JobSpec(accelerator="ascend-910", devices=2, estimated_s=3600, command=("true",))


def run(tmp_path: Path, body: Callable[[Broker], Awaitable[T]], **config: Any) -> T:
    async def main() -> T:
        store = SqliteStore(tmp_path / "broker.db")
        broker = Broker(store, config=BrokerConfig(**config), clock=ManualClock())
        broker.load()
        try:
            return await body(broker)
        finally:
            store.close()

    return asyncio.run(main())


async def join(broker: Broker, center_id: str) -> Session:
    center = make_center(center_id)
    session, _ = await broker.connect(center, [])
    at = broker.clock.now_ms()
    broker.on_offer(
        session,
        Offer(
            center_id=center.center_id, seq=1, issued_at_ms=at, expires_at_ms=at + 60_000,
            pue_milli=center.pue_milli, grid_g_co2_per_kwh=center.grid_g_co2_per_kwh,
            pools=center.pools,
        ),
    )  # fmt: skip
    return session


def advance(broker: Broker, ms: int) -> None:
    clock = broker.clock
    assert isinstance(clock, ManualClock)
    clock.advance(ms)


def sent(session: Session) -> list[Command]:
    out: list[Command] = []
    while not session.outbox.empty():
        out.append(session.outbox.get_nowait())
    return out


def events(db: Path, job_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(
            conn.execute(
                "SELECT state, message FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        )


def test_unanswered_claim_lapses_and_the_job_is_placed_again(tmp_path: Path) -> None:
    async def body(broker: Broker) -> tuple[str, list[str]]:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        assert await broker.match_round() == 1
        [reserve] = [m for m in sent(session) if isinstance(m, Reserve)]
        advance(broker, 99)
        await broker.expire()
        assert broker.get(job.job_id).state == JobState.CLAIMED  # the lease holds ...
        advance(broker, 1)  # ... until it passes with no reply
        await broker.expire()
        assert broker.get(job.job_id).state == JobState.QUEUED
        cancels = [m.claim_id for m in sent(session) if isinstance(m, Cancel)]
        assert cancels == [reserve.claim_id]  # released at the center too
        assert await broker.match_round() == 1
        return job.job_id, [reserve.claim_id, broker.get(job.job_id).claim_id or ""]

    job_id, claims = run(tmp_path, body, lease_ms=100)
    assert claims[0] != claims[1]
    assert [s for s, _ in events(tmp_path / "broker.db", job_id)] == [
        "queued", "claimed", "queued", "claimed",
    ]  # fmt: skip
    assert events(tmp_path / "broker.db", job_id)[2][1].endswith("lapsed unanswered")


def test_refused_claim_requeues_without_counting_an_attempt(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.match_round()
        [reserve] = [m for m in sent(session) if isinstance(m, Reserve)]
        await broker.on_claim_reply(
            session,
            ClaimReply(
                claim_id=reserve.claim_id, accepted=False, reason="only 1 of 2 devices free"
            ),
        )
        after = broker.get(job.job_id)
        assert (after.state, after.attempts) == (JobState.QUEUED, 0)
        assert after.reason == "requeued: claim refused by CA: only 1 of 2 devices free"
        assert broker.metrics.registry.get_sample_value("icx_claim_refusals_total") == 1

    run(tmp_path, body)


def test_a_job_lost_max_attempts_times_fails_with_the_reason(tmp_path: Path) -> None:
    async def body(broker: Broker) -> str:
        job = await broker.submit("t", SPEC)
        for attempt in range(1, 4):
            session = await join(broker, f"C{attempt}")
            await broker.match_round()
            [reserve] = [m for m in sent(session) if isinstance(m, Reserve)]
            await broker.on_claim_reply(
                session,
                ClaimReply(claim_id=reserve.claim_id, accepted=True, device_indices=(0, 1)),
            )
            await broker.on_job_update(
                session,
                JobUpdate(claim_id=reserve.claim_id, job_id=job.job_id, state=JobState.RUNNING),
            )
            assert broker.get(job.job_id).attempts == attempt
            advance(broker, 100)  # the center goes silent past its expiry
            await broker.expire()
        final = broker.get(job.job_id)
        assert final.state == JobState.FAILED
        return final.reason

    reason = run(tmp_path, body, center_expiry_ms=100, max_attempts=3)
    assert reason == "center C3 lost (silent past expiry); gave up after 3 attempts"


def test_update_for_a_claim_the_broker_gave_away_stops_it_there(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.on_job_update(
            session, JobUpdate(claim_id="c-stale", job_id=job.job_id, state=JobState.RUNNING)
        )
        [cancel] = [m for m in sent(session) if isinstance(m, Cancel)]
        assert (cancel.claim_id, cancel.reason) == ("c-stale", "claim no longer valid")
        assert broker.get(job.job_id).state == JobState.QUEUED

    run(tmp_path, body)


def test_a_round_takes_what_could_run_and_skips_what_cannot(tmp_path: Path) -> None:
    """With 4 free devices, a queue headed by 100 jobs that no free pool could hold must
    not crowd out the small jobs behind them."""

    async def body(broker: Broker) -> list[str]:
        session = await join(broker, "CA")  # 8 x ascend-910
        big = dataclasses.replace(SPEC, devices=64, priority=9)
        for _ in range(100):
            await broker.submit("t", big)
        small = [await broker.submit("t", SPEC) for _ in range(3)]
        assert await broker.match_round() == 3
        claimed = {m.job_id for m in sent(session) if isinstance(m, Reserve)}
        assert claimed == {j.job_id for j in small}
        waiting = broker.list_jobs([JobState.QUEUED])
        explained = [j for j in waiting if j.explanation]
        assert 0 < len(explained) <= 64  # the head says why it waits ...
        return [j.explanation for j in explained]

    reasons = run(tmp_path, body)
    assert set(reasons) == {
        "no pool with 64 free devices of ascend-910 in any region (most free: 8)"
    }  # ... in words


def test_a_duplicate_submit_answers_only_after_the_first_commit(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        first = asyncio.ensure_future(broker.submit("t", SPEC, request_id="r-1"))
        await asyncio.sleep(0)  # the first is in memory, its commit not yet done
        again = await broker.submit("t", SPEC, request_id="r-1")
        assert first.done()  # the duplicate's answer came after the first's commit
        assert again.job_id == (await first).job_id
        on_disk = [r[0] for r in events(tmp_path / "broker.db", again.job_id)]
        assert on_disk == ["queued"]

    run(tmp_path, body)


def test_the_same_request_id_with_another_spec_is_refused(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        job = await broker.submit("t", SPEC, request_id="r-1")
        other = dataclasses.replace(SPEC, devices=1)
        with pytest.raises(
            FailedPrecondition, match=f"request_id 'r-1' was used for job {job.job_id}"
        ):
            await broker.submit("t", other, request_id="r-1")
        assert [j.job_id for j in broker.list_jobs()] == [job.job_id]
        # Another tenant's request ids are its own.
        assert (await broker.submit("u", other, request_id="r-1")).job_id != job.job_id

    run(tmp_path, body)


def test_submit_refuses_a_region_no_center_or_policy_knows(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        await join(broker, "CA")  # region TF
        for region in ("MARS", "tf"):
            spec = dataclasses.replace(SPEC, allowed_regions=(region,))
            with pytest.raises(InvalidJobSpec) as info:
                await broker.submit("t", spec)
            assert str(info.value) == (
                f"region {region!r} is not known to this broker; known regions: TF"
            )
            with pytest.raises(InvalidJobSpec):
                broker.quote(spec)
        assert broker.list_jobs() == []
        ok = await broker.submit("t", dataclasses.replace(SPEC, allowed_regions=("TF",)))
        assert ok.state == JobState.QUEUED

    run(tmp_path, body)


def test_job_gauges_are_right_whenever_scraped(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.match_round()
        [reserve] = [m for m in sent(session) if isinstance(m, Reserve)]
        await broker.on_claim_reply(
            session, ClaimReply(claim_id=reserve.claim_id, accepted=True, device_indices=(0, 1))
        )
        for state in (JobState.RUNNING, JobState.SUCCEEDED):
            await broker.on_job_update(
                session,
                JobUpdate(claim_id=reserve.claim_id, job_id=job.job_id, state=state, exit_code=0),
            )
        value = broker.metrics.registry.get_sample_value
        assert value("icx_jobs", {"state": "succeeded"}) == 1
        assert value("icx_jobs", {"state": "claimed"}) == 0
        assert value("icx_jobs", {"state": "running"}) == 0
        assert value("icx_queue_length") == 0
        assert value("icx_centers_connected") == 1
        broker.disconnect(session)
        assert value("icx_centers_connected") == 0

    run(tmp_path, body)


def test_a_round_is_logged_when_its_outcome_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(broker: Broker) -> None:
        await join(broker, "CA")
        await broker.submit("t", dataclasses.replace(SPEC, devices=64))  # cannot be placed
        caplog.set_level(logging.INFO, logger="icx.broker")
        for _ in range(20):
            await broker.match_round()
        assert len([r for r in caplog.records if r.message.startswith("round ")]) == 1
        assert broker.metrics.registry.get_sample_value("icx_match_rounds_total") == 20
        assert broker.metrics.registry.get_sample_value("icx_match_round_unplaced") == 1
        await broker.submit("t", SPEC)  # this one can: a new outcome
        await broker.match_round()
        rounds = [r.message for r in caplog.records if r.message.startswith("round ")]
        assert len(rounds) == 2 and "1 placed, 1 unplaced" in rounds[1]

    run(tmp_path, body)


def test_a_jobs_output_is_kept_up_to_its_cap_with_a_note(tmp_path: Path) -> None:
    async def body(broker: Broker) -> list[bytes]:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.match_round()
        for seq in range(1, 6):  # 5 x 400 bytes against a cap of 1,000
            broker.on_log(
                session, LogChunk(job_id=job.job_id, seq=seq, stream="stdout", data=b"x" * 400)
            )
        await broker.cancel("t", job.job_id)  # commits after the output
        dropped = broker.metrics.registry.get_sample_value(
            "icx_log_chunks_dropped_total", {"reason": "cap"}
        )
        assert dropped == 3  # the chunk cut at the cap, and the two after it
        return [c.data for c in broker.logs_after(job.job_id, 0)]

    chunks = run(tmp_path, body, max_log_bytes_per_job=1_000)
    assert [len(c) for c in chunks[:2]] == [400, 400]
    assert chunks[2].startswith(b"x" * 200 + b"\n[icx: output truncated at 1000 bytes")
    assert len(chunks) == 3


def test_a_center_sending_output_too_fast_has_the_excess_dropped(tmp_path: Path) -> None:
    async def body(broker: Broker) -> tuple[int, float | None]:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.match_round()
        for seq in range(1, 31):  # 30 chunks at once: a burst of 20 passes
            broker.on_log(session, LogChunk(job_id=job.job_id, seq=seq, stream="stdout", data=b"y"))
        advance(broker, 1_000)  # a second later, 10 more may pass
        for seq in range(31, 51):
            broker.on_log(session, LogChunk(job_id=job.job_id, seq=seq, stream="stdout", data=b"y"))
        await broker.cancel("t", job.job_id)
        dropped = broker.metrics.registry.get_sample_value(
            "icx_log_chunks_dropped_total", {"reason": "rate"}
        )
        return len(broker.logs_after(job.job_id, 0)), dropped

    kept, dropped = run(tmp_path, body, log_chunks_per_s=10)
    assert (kept, dropped) == (30, 20)


def test_pages_of_jobs_walk_newest_first_without_gaps_or_repeats(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        ids = []
        for _ in range(25):
            ids.append((await broker.submit("t", SPEC)).job_id)
            advance(broker, 1)
        cancelled = {ids[i] for i in range(0, 25, 3)}
        for job_id in cancelled:
            await broker.cancel("t", job_id)
        seen: list[str] = []
        after = ""
        while True:
            page = list(itertools.islice(broker.jobs.page([JobState.QUEUED], after), 4))
            if not page:
                break
            seen += [j.job_id for j in page]
            after = page[-1].job_id
        assert seen == [i for i in reversed(ids) if i not in cancelled]
        assert broker.count_jobs([JobState.QUEUED]) == len(seen)
        with pytest.raises(NotFound, match="no job 'j-nope' to continue after"):
            broker.jobs.page([], "j-nope")

    run(tmp_path, body)


def test_a_tenant_and_a_center_never_share_a_name(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        await join(broker, "CA")
        with pytest.raises(PermissionDenied, match=r"^tenant 'CA' is the name of a center$"):
            await broker.submit("CA", SPEC)
        await broker.submit("lab-x", SPEC)
        with pytest.raises(PermissionDenied, match=r"^center id 'lab-x' is the name of a tenant$"):
            await broker.connect(make_center("lab-x"), [])
        assert sorted(broker.centers.descriptors) == ["CA"]
        assert [j.tenant for j in broker.list_jobs()] == ["lab-x"]

    run(tmp_path, body)


def test_pages_by_state_agree_with_a_filter_of_every_job(tmp_path: Path) -> None:
    """The per-state index gives what filtering all jobs would, after many transitions."""
    moves = {
        JobState.QUEUED: (JobState.CLAIMED, JobState.CANCELLED),
        JobState.CLAIMED: (JobState.RUNNING, JobState.QUEUED, JobState.CANCELLED),
        JobState.RUNNING: (JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED),
    }

    async def body(broker: Broker) -> None:
        rng = random.Random(7)
        book = broker.jobs
        for _ in range(300):
            await broker.submit("t", SPEC)
            live = [j for j in book.jobs.values() if j.state in moves]
            for job in rng.sample(live, min(len(live), rng.choice((0, 0, 1, 2)))):
                await book.transition(job, rng.choice(moves[job.state]), "moved")
        everyone = list(reversed(list(book.jobs.values())))
        for wanted in (
            [JobState.QUEUED],
            [JobState.CANCELLED, JobState.FAILED],
            [JobState.SUCCEEDED, JobState.CLAIMED, JobState.RUNNING],
        ):
            expected = [j.job_id for j in everyone if j.state in wanted]
            assert expected and [j.job_id for j in book.page(wanted)] == expected
            middle = expected[len(expected) // 2]
            after = [j.job_id for j in book.page(wanted, middle)]
            assert after == expected[len(expected) // 2 + 1 :]
            assert book.count(wanted) == len(expected)

    run(tmp_path, body)


def test_a_slow_start_does_not_eat_into_the_centers_grace(tmp_path: Path) -> None:
    async def first(broker: Broker) -> None:
        await join(broker, "CA")

    run(tmp_path, first)

    async def restarted(broker: Broker) -> set[str]:
        advance(broker, 2_500)  # loading took long: most of the 3 s expiry is gone
        broker.centers.grant_grace()  # the broker now serves
        advance(broker, 2_999)
        early = broker.centers.expire(3_000)
        advance(broker, 1)
        return early | {"then:" + c for c in broker.centers.expire(3_000)}

    assert run(tmp_path, restarted) == {"then:CA"}


def test_output_for_a_job_that_ended_is_not_kept(tmp_path: Path) -> None:
    async def body(broker: Broker) -> list[bytes]:
        session = await join(broker, "CA")
        job = await broker.submit("t", SPEC)
        await broker.match_round()
        chunk = LogChunk(job_id=job.job_id, seq=1, stream="stdout", data=b"before the end\n")
        broker.on_log(session, chunk)
        await broker.cancel("t", job.job_id)
        late = LogChunk(job_id=job.job_id, seq=2, stream="stdout", data=b"after the end\n")
        broker.on_log(session, late)
        await broker.submit("t", SPEC)  # a later commit: the late chunk had its chance
        return [c.data for c in broker.logs_after(job.job_id, 0)]

    assert run(tmp_path, body) == [b"before the end\n"]


def test_a_second_stream_for_a_live_center_is_refused_until_the_first_goes_quiet(
    tmp_path: Path,
) -> None:
    async def body(broker: Broker) -> None:
        first = await join(broker, "CA")  # heartbeat interval 1,000 ms
        advance(broker, 1_999)
        with pytest.raises(FailedPrecondition, match=r"^center CA is already connected"):
            await broker.connect(make_center("CA"), [])
        assert first.connected and broker.centers.sessions["CA"] is first
        advance(broker, 1)  # two heartbeats without a word: the first stream is gone
        second, _ = await broker.connect(make_center("CA"), [])
        assert second.connected and not first.connected
        assert broker.centers.sessions["CA"] is second

    run(tmp_path, body)


def test_a_job_cancelled_after_the_round_chose_it_is_not_claimed(tmp_path: Path) -> None:
    """The round chooses, then claims; the user's cancel can land in between. The claim
    must see the job as it is now, not as the round saw it."""

    class CancelDuringTheRound:
        def __init__(self, broker: Broker, inner: Any, victim: str) -> None:
            self.broker, self.inner, self.victim = broker, inner, victim
            self.cancelled = False

        async def claim(self, *args: Any) -> bool:
            if not self.cancelled:
                self.cancelled = True
                await self.broker.cancel("t", self.victim)
            return bool(await self.inner.claim(*args))

    async def body(broker: Broker) -> None:
        session = await join(broker, "CA")  # 8 x ascend-910: room for both
        first = await broker.submit("t", SPEC)
        second = await broker.submit("t", SPEC)
        third = await broker.submit("t", dataclasses.replace(SPEC, devices=64))  # waits
        [(name, route)] = broker.rounds.routes.items()
        broker.rounds.routes[name] = CancelDuringTheRound(broker, route, second.job_id)
        assert await broker.match_round() == 1
        assert [m.job_id for m in sent(session) if isinstance(m, Reserve)] == [first.job_id]
        assert broker.get(second.job_id).state == JobState.CANCELLED
        assert broker.get(first.job_id).state == JobState.CLAIMED
        # the book's index by state still agrees with every job's state
        for state in (JobState.QUEUED, JobState.CLAIMED, JobState.CANCELLED):
            by_index = {j.job_id for j in broker.list_jobs([state])}
            by_state = {j for j in (first.job_id, second.job_id, third.job_id)
                        if broker.get(j).state == state}  # fmt: skip
            assert by_index == by_state, state

    run(tmp_path, body)
