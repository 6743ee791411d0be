"""The broker's state machine driven directly (a real Broker on a real SQLite store),
for the edges that are slow to reach through processes: lapsed leases, refusals, and
the retry limit when a center keeps getting lost."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from broker.core import Broker, BrokerConfig, Session, now_ms
from broker.store import Store
from core import wire
from core.states import JobState
from core.types import JobSpec, Offer
from icx.v1 import agent_pb2
from tests.conftest import make_center

T = TypeVar("T")

SPEC = JobSpec(accelerator="ascend-910", devices=2, estimated_s=3600, command=("true",))


def run(tmp_path: Path, body: Callable[[Broker], Awaitable[T]], **config: Any) -> T:
    async def main() -> T:
        store = Store(tmp_path / "broker.db")
        broker = Broker(store, config=BrokerConfig(**config))
        broker.load()
        try:
            return await body(broker)
        finally:
            store.close()

    return asyncio.run(main())


async def join(broker: Broker, center_id: str) -> Session:
    center = make_center(center_id)
    session, _ = await broker.connect(center, [])
    at = now_ms()
    broker.on_offer(
        session,
        Offer(
            center_id=center.center_id, seq=1, issued_at_ms=at, expires_at_ms=at + 60_000,
            pue_milli=center.pue_milli, grid_g_co2_per_kwh=center.grid_g_co2_per_kwh,
            pools=center.pools,
        ),
    )  # fmt: skip
    return session


def sent(session: Session) -> list[agent_pb2.ConnectResponse]:
    out = []
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
        [reserve] = [m.reserve for m in sent(session) if m.HasField("reserve")]
        await asyncio.sleep(0.15)  # the lease passes with no reply
        await broker.expire()
        assert broker.get(job.job_id).state == JobState.QUEUED
        cancels = [m.cancel.claim_id for m in sent(session) if m.HasField("cancel")]
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
        [reserve] = [m.reserve for m in sent(session) if m.HasField("reserve")]
        await broker.on_claim_reply(
            session,
            agent_pb2.ClaimReply(
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
            [reserve] = [m.reserve for m in sent(session) if m.HasField("reserve")]
            await broker.on_claim_reply(
                session,
                agent_pb2.ClaimReply(
                    claim_id=reserve.claim_id, accepted=True, device_indices=[0, 1]
                ),
            )
            await broker.on_job_update(
                session,
                agent_pb2.JobUpdate(
                    claim_id=reserve.claim_id, job_id=job.job_id,
                    state=wire.state_to_proto(JobState.RUNNING),
                ),
            )  # fmt: skip
            assert broker.get(job.job_id).attempts == attempt
            await asyncio.sleep(0.12)  # the center goes silent past its expiry
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
            session,
            agent_pb2.JobUpdate(
                claim_id="c-stale", job_id=job.job_id, state=wire.state_to_proto(JobState.RUNNING)
            ),
        )
        [cancel] = [m.cancel for m in sent(session) if m.HasField("cancel")]
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
        claimed = {m.reserve.job_id for m in sent(session) if m.HasField("reserve")}
        assert claimed == {j.job_id for j in small}
        waiting = [j for j in broker.jobs.values() if j.state == JobState.QUEUED]
        explained = [j for j in waiting if j.explanation]
        assert 0 < len(explained) <= 64  # the head says why it waits ...
        return [j.explanation for j in explained]

    reasons = run(tmp_path, body)
    assert set(reasons) == {
        "no pool with 64 free devices of ascend-910 in any region (most free: 8)"
    }  # ... in words
