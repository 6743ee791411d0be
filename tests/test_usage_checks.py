"""A center bills only what it ran: usage records checked against what the broker itself
saw of each claim (a real Broker, SQLite store and ledger; time from a ManualClock; the
honest record made by the agent's own metering)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from broker.centers import ClaimReply, JobUpdate, Reserve, Session, UsageAck
from broker.core import Broker, BrokerConfig
from broker.ledger import BrokerLedger
from broker.sqlite_store import SqliteStore
from broker.usage import CLOCK_TOLERANCE_MS
from core.clock import ManualClock
from core.errors import PermissionDenied
from core.money import charge_minor
from core.states import JobState
from core.types import CenterDescriptor, Job, JobSpec, Offer
from ledger import SignerKey, UsageRecord, sign_records
from ledger.records import carbon_g, energy_wh
from node_agent._metering import RunFacts, usage_record
from tests.conftest import make_center

T = TypeVar("T")
SPEC = JobSpec(accelerator="ascend-910", devices=2, estimated_s=3600, command=("true",))
TENANT = "lab-a"


def run(tmp_path: Path, body: Callable[[Broker], Awaitable[T]]) -> T:
    async def main() -> T:
        store = SqliteStore(tmp_path / "broker.db")
        ledger = BrokerLedger(tmp_path / "broker.db", origin="test.local/broker")
        ledger.open()
        broker = Broker(store, config=BrokerConfig(), clock=ManualClock(), ledger=ledger)
        broker.load()
        try:
            return await body(broker)
        finally:
            ledger.close()
            store.close()

    return asyncio.run(main())


class Center:
    """A center played by the test: its descriptor, key and session."""

    def __init__(self, broker: Broker, center_id: str) -> None:
        self.broker = broker
        self.descriptor: CenterDescriptor = make_center(center_id)
        self.key = SignerKey.generate(center_id)
        self.session: Session

    async def join(self) -> Center:
        self.session, _ = await self.broker.connect(
            self.descriptor, [], usage_key=self.key.verifier.text()
        )
        at = self.broker.clock.now_ms()
        c = self.descriptor
        self.broker.on_offer(
            self.session,
            Offer(
                center_id=c.center_id, seq=1, issued_at_ms=at, expires_at_ms=at + 600_000,
                pue_milli=c.pue_milli, grid_g_co2_per_kwh=c.grid_g_co2_per_kwh, pools=c.pools,
            ),
        )  # fmt: skip
        return self

    def take(self, kind: type[T]) -> list[T]:
        out: list[T] = []
        while not self.session.outbox.empty():
            m = self.session.outbox.get_nowait()
            if isinstance(m, kind):
                out.append(m)
        return out

    async def bill(self, record: UsageRecord, signer: SignerKey | None = None) -> UsageAck:
        entry = sign_records([record], signer or self.key)[0].entry()
        return await self.broker.on_usage(self.session, entry)


async def ran(broker: Broker, center: Center, seconds: int) -> tuple[Job, RunFacts]:
    """Submit a job, let `center` take it, run it for `seconds`, end it."""
    clock = broker.clock
    assert isinstance(clock, ManualClock)
    job = await broker.submit(TENANT, SPEC)
    assert await broker.match_round() == 1
    [reserve] = center.take(Reserve)
    await broker.on_claim_reply(
        center.session, ClaimReply(claim_id=reserve.claim_id, accepted=True, device_indices=(0, 1))
    )
    clock.advance(100)
    started = clock.now_ms()
    await broker.on_job_update(
        center.session,
        JobUpdate(claim_id=reserve.claim_id, job_id=job.job_id, state=JobState.RUNNING),
    )
    clock.advance(seconds * 1000)
    await broker.on_job_update(
        center.session,
        JobUpdate(
            claim_id=reserve.claim_id, job_id=job.job_id, state=JobState.SUCCEEDED, exit_code=0
        ),
    )
    facts = RunFacts(
        claim_id=reserve.claim_id, job_id=job.job_id, tenant=TENANT, pool_id="main",
        devices=2, started_at_ms=started, ended_at_ms=clock.now_ms(),
    )  # fmt: skip
    return job, facts


def forged(record: UsageRecord, **changes: object) -> UsageRecord:
    """`record` with `changes`, its derived figures made consistent again (a careful
    liar's record passes the record's own checks)."""
    f = {x.name: getattr(record, x.name) for x in dataclasses.fields(record) if x.init}
    f.update(changes)
    wall = (f["end_ms"] - f["start_ms"]) // 1000
    device_s = f["devices"] * wall
    energy = energy_wh(f["devices"], 300, wall, 1250)
    f.update(
        wall_s=wall, device_s=device_s, energy_wh=energy, carbon_g=carbon_g(energy, 500),
        charge_minor=charge_minor(device_s, f["unit_price_minor"]),
    )  # fmt: skip
    return UsageRecord(**f)


def _with(record: UsageRecord, **changes: object) -> UsageRecord:
    f = {x.name: getattr(record, x.name) for x in dataclasses.fields(record) if x.init}
    f.update(changes)
    return UsageRecord(**f)


def test_the_honest_record_is_accepted_once_and_every_lie_is_refused(tmp_path: Path) -> None:
    async def body(broker: Broker) -> dict[str, str]:
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=600)
        honest = usage_record(a.descriptor, facts)
        h = 3_600_000
        lies = {
            "more devices": forged(honest, devices=100),
            "a higher price": forged(honest, unit_price_minor=100_000),
            "ten days": forged(honest, end_ms=honest.start_ms + 240 * h),
            "before the claim": forged(
                honest, start_ms=honest.start_ms - 60_000 - CLOCK_TOLERANCE_MS
            ),
            "another tenant": forged(honest, consumer="lab-b"),
            "another job": forged(honest, job_id="j-000000000000"),
            "a second record id": forged(honest, record_id=f"CA/{facts.claim_id}-again"),
            "more energy": dataclasses.replace(
                honest,
                energy_wh=honest.energy_wh * 10,
                carbon_g=carbon_g(honest.energy_wh * 10, 500),
            ),
        }
        reasons = {what: (await a.bill(r)).reason for what, r in lies.items()}
        stranger = SignerKey.generate("CA")
        assert "is not admitted" in (await a.bill(honest, signer=stranger)).reason
        ack = await a.bill(honest)
        assert ack.accepted and ack.reason == ""
        again = await a.bill(honest)  # a resend after a reconnect: the same entry
        assert again.accepted and again.index == ack.index
        claim = broker.claims.record(facts.claim_id)
        assert claim is not None and claim.billed_record_id == honest.record_id
        refused = broker.metrics.registry.get_sample_value(
            "icx_center_messages_refused_total", {"kind": "usage"}
        )
        assert refused == len(lies) + 1
        return reasons

    reasons = run(tmp_path, body)
    assert all(reasons.values()), reasons
    assert reasons["more devices"].endswith("devices must be 2, got 100")
    assert reasons["a higher price"].endswith("unit_price_minor must be 500, got 100000")
    assert "lies outside what the broker saw" in reasons["ten days"]
    assert "lies outside what the broker saw" in reasons["before the claim"]
    assert reasons["another tenant"] == "job {} belongs to 'lab-a', not 'lab-b'".format(
        reasons["another tenant"].split()[1]
    )
    assert "job_id must be" in reasons["another job"]
    assert "holds no claim" in reasons["a second record id"]
    assert "energy_wh must be" in reasons["more energy"]


def test_a_center_cannot_bill_or_touch_another_centers_claim(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        a = await Center(broker, "CA").join()
        job, facts = await ran(broker, a, seconds=60)
        b = await Center(broker, "CB").join()  # a newcomer with its own admitted key
        theirs = usage_record(a.descriptor, facts)
        mine = usage_record(b.descriptor, facts)
        assert (await b.bill(mine)).reason == f"center CB holds no claim {facts.claim_id!r}"
        assert (await b.bill(theirs)).reason == "center CB cannot report usage for CA"
        assert (await b.bill(theirs, signer=b.key)).accepted is False
        with pytest.raises(
            PermissionDenied, match=f"center CB does not hold claim {facts.claim_id}"
        ):
            await b.broker.on_job_update(
                b.session,
                JobUpdate(claim_id=facts.claim_id, job_id=job.job_id, state=JobState.FAILED),
            )
        with pytest.raises(PermissionDenied, match="does not hold claim"):
            await broker.on_claim_reply(
                b.session, ClaimReply(claim_id=facts.claim_id, accepted=True)
            )
        assert broker.get(job.job_id).state == JobState.SUCCEEDED  # unchanged
        assert (await a.bill(theirs)).accepted  # the holder's own record still goes in

    run(tmp_path, body)


def test_another_centers_job_in_flight_stays_its_own(tmp_path: Path) -> None:
    async def body(broker: Broker) -> None:
        a = await Center(broker, "CA").join()
        job = await broker.submit(TENANT, SPEC)
        await broker.match_round()
        [reserve] = a.take(Reserve)
        b = await Center(broker, "CB").join()
        with pytest.raises(PermissionDenied):
            await broker.on_claim_reply(
                b.session, ClaimReply(claim_id=reserve.claim_id, accepted=True, device_indices=(0,))
            )
        assert b.take(Reserve) == [] and broker.get(job.job_id).state == JobState.CLAIMED
        assert broker.get(job.job_id).center_id == "CA"

    run(tmp_path, body)
