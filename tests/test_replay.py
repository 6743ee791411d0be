"""A center that sends its own messages again (a replayed offer, claim reply, job update
or usage record) changes nothing: each is refused or harmless. TLS keeps anyone else
from replaying them (a real Broker, SQLite store and ledger; time from a ManualClock)."""

from __future__ import annotations

from pathlib import Path

from broker.centers import Cancel, ClaimReply, JobUpdate, Launch, Reserve
from broker.core import Broker
from core.states import JobState
from core.types import Offer
from node_agent._metering import usage_record
from tests.test_usage_checks import SPEC, TENANT, Center, ran, run


def test_an_old_offer_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        center = await Center(broker, "c1").join()
        newer = center.session.offer
        assert newer is not None
        at = broker.clock.now_ms()
        fuller = [p for p in newer.pools]
        newer2 = Offer(
            center_id=newer.center_id, seq=5, issued_at_ms=at, expires_at_ms=at + 600_000,
            pue_milli=newer.pue_milli, grid_g_co2_per_kwh=newer.grid_g_co2_per_kwh,
            pools=tuple(fuller),
        )  # fmt: skip
        assert broker.centers.on_offer(center.session, newer2)
        replayed = Offer(
            center_id=newer.center_id, seq=1, issued_at_ms=newer.issued_at_ms,
            expires_at_ms=newer.expires_at_ms, pue_milli=newer.pue_milli,
            grid_g_co2_per_kwh=newer.grid_g_co2_per_kwh, pools=newer.pools,
        )  # fmt: skip
        assert not broker.centers.on_offer(center.session, replayed)
        assert center.session.offer is newer2

    run(tmp_path, body)


def test_a_replayed_claim_reply_changes_nothing(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        center = await Center(broker, "c1").join()
        job = await broker.submit(TENANT, SPEC)
        assert await broker.match_round() == 1
        [reserve] = center.take(Reserve)
        accept = ClaimReply(claim_id=reserve.claim_id, accepted=True, device_indices=(0, 1))
        await broker.on_claim_reply(center.session, accept)
        [launch] = center.take(Launch)
        before = broker.jobs.get(job.job_id)
        await broker.on_claim_reply(center.session, accept)  # replayed
        # No second launch, no cancel of the claim the center holds, the job unchanged.
        assert center.take(Launch) == []
        assert center.take(Cancel) == []
        assert broker.jobs.get(job.job_id) == before
        assert launch.claim_id == reserve.claim_id
        # A replayed refusal after the accept does not requeue the job either.
        await broker.on_claim_reply(
            center.session, ClaimReply(claim_id=reserve.claim_id, accepted=False, reason="no")
        )
        assert broker.jobs.get(job.job_id).state == JobState.CLAIMED

    run(tmp_path, body)


def test_a_replayed_end_and_usage_are_harmless(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        center = await Center(broker, "c1").join()
        job, facts = await ran(broker, center, seconds=60)
        done = broker.jobs.get(job.job_id)
        assert done.state == JobState.SUCCEEDED
        # The end again, and the start again after it: the job stays as it ended.
        for state in (JobState.SUCCEEDED, JobState.RUNNING):
            await broker.on_job_update(
                center.session,
                JobUpdate(claim_id=facts.claim_id, job_id=job.job_id, state=state, exit_code=0),
            )
        assert broker.jobs.get(job.job_id) == done
        record = usage_record(center.descriptor, facts)
        first = await center.bill(record)
        again = await center.bill(record)  # replayed: logged once, billed once
        assert first.accepted and again.accepted
        assert again.index == first.index

    run(tmp_path, body)
