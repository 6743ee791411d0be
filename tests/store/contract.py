"""The store contract suite: what every broker store must do, written against the
interface (broker.store.Store). A store's test module subclasses `StoreContract` and
provides `make_store` (and `reopen`, the same data opened anew); every store passes
every test."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from broker.store import Store
from core.errors import FailedPrecondition, NotFound
from core.states import JobState
from core.types import (
    CenterDescriptor,
    CenterId,
    ClaimId,
    Job,
    JobEvent,
    JobId,
    JobSpec,
    LogChunk,
    Pool,
    PoolId,
)

T = TypeVar("T")

FULL_SPEC = JobSpec(
    name="train-7b",
    accelerator="nvidia-a800",
    devices=8,
    estimated_s=7200,
    allowed_regions=("YRD", "GBA"),
    max_price_minor=150_000,
    deadline_ms=1_900_000_000_000,
    priority=7,
    data_region="YRD",
    data_mb=20_000,
    command=("python3", "-c", "print('a \\u00e9 \\0 \"quoted\"')", ""),
    env=(("A", "1"), ("B", "two words"), ("EMPTY", "")),
    image="registry.example:5000/team/train:v2",
    memory_mb=65_536,
    millicpus=12_500,
    network=True,
)
BARE_SPEC = JobSpec(accelerator="any", devices=1, estimated_s=1, command=("true",))


def job(job_id: str, spec: JobSpec = FULL_SPEC, tenant: str = "lab-a", at: int = 1_000) -> Job:
    return Job(
        job_id=JobId(job_id),
        tenant=tenant,
        spec=spec,
        state=JobState.QUEUED,
        submitted_at_ms=at,
        updated_at_ms=at,
    )


def event(j: Job, seq: int, message: str = "") -> JobEvent:
    return JobEvent(
        job_id=j.job_id,
        seq=seq,
        at_ms=j.updated_at_ms,
        state=j.state,
        center_id=j.center_id,
        message=message,
    )


def center(center_id: str = "CN01", devices: int = 8) -> CenterDescriptor:
    return CenterDescriptor(
        center_id=CenterId(center_id),
        name="Test center 中心",
        region="GBA",
        latitude=22.5,
        longitude=113.9,
        pue_milli=1250,
        grid_g_co2_per_kwh=520,
        pools=(
            Pool(
                pool_id=PoolId("a800"),
                accelerator="nvidia-a800",
                devices_total=devices,
                devices_free=devices,
                memory_gb=80,
                fp16_tflops=312,
                power_w=400,
                price_minor_per_device_hour=1_200,
            ),
            Pool(
                pool_id=PoolId("910b"),
                accelerator="ascend-910b",
                devices_total=16,
                devices_free=12,
                memory_gb=64,
                fp16_tflops=320,
                power_w=310,
                price_minor_per_device_hour=900,
            ),
        ),
        images=("icx/busybox:1", "registry.example:5000/team/train:v2"),
    )


class StoreContract:
    """Subclasses set up the store; each test gets a fresh, empty one."""

    def make_store(self) -> Store:
        raise NotImplementedError

    def reopen(self, store: Store) -> Store:
        """Close `store` and open the same data anew."""
        raise NotImplementedError

    def run(self, body: Callable[[Store], Awaitable[T]]) -> T:
        async def main() -> T:
            store = self.make_store()
            try:
                return await body(store)
            finally:
                store.close()

        return asyncio.run(main())

    def test_a_new_store_is_empty_at_the_current_schema(self) -> None:
        from broker.store import SCHEMA_VERSION

        async def body(store: Store) -> None:
            snap = store.load()
            assert (list(snap.jobs), list(snap.centers), snap.event_seq, snap.log_seq) == (
                [], [], {}, {},
            )  # fmt: skip
            assert store.schema_version() == SCHEMA_VERSION

        self.run(body)

    def test_a_job_and_every_spec_field_come_back_after_a_reopen(self) -> None:
        async def main() -> None:
            store = self.make_store()
            full, bare = job("j-1"), job("j-2", BARE_SPEC, tenant="lab-b", at=2_000)
            await store.insert_job(full, event(full, 1, "accepted"), request_id="req-1")
            await store.insert_job(bare, event(bare, 1, "accepted"))
            store = self.reopen(store)
            try:
                snap = store.load()
                by_id = {s.job.job_id: s for s in snap.jobs}
                assert by_id[JobId("j-1")].job == full
                assert by_id[JobId("j-1")].request_id == "req-1"
                assert by_id[JobId("j-2")].job == bare
                assert by_id[JobId("j-2")].request_id == ""
                assert snap.event_seq == {"j-1": 1, "j-2": 1}
            finally:
                store.close()

        asyncio.run(main())

    def test_a_transition_and_its_event_commit_together(self) -> None:
        async def body(store: Store) -> None:
            j = job("j-1")
            await store.insert_job(j, event(j, 1, "accepted"))
            claimed = dataclasses.replace(
                j,
                state=JobState.CLAIMED,
                updated_at_ms=2_000,
                center_id=CenterId("CN01"),
                pool_id=PoolId("a800"),
                claim_id=ClaimId("c-1"),
                reason="claim c-1",
                explanation="cheapest",
            )
            await store.update_job(claimed, event(claimed, 2, "claim c-1 at CN01/a800"))
            done = dataclasses.replace(
                claimed,
                state=JobState.SUCCEEDED,
                updated_at_ms=3_000,
                device_indices=(0, 3, 5),
                attempts=1,
                exit_code=0,
            )
            await store.update_job(done, event(done, 3, "exit 0"))
            [stored] = store.load().jobs
            assert stored.job == done
            got = store.events_after(j.job_id, 0)
            assert [(e.seq, e.state, e.center_id, e.message) for e in got] == [
                (1, JobState.QUEUED, None, "accepted"),
                (2, JobState.CLAIMED, "CN01", "claim c-1 at CN01/a800"),
                (3, JobState.SUCCEEDED, "CN01", "exit 0"),
            ]  # fmt: skip
            assert [e.seq for e in store.events_after(j.job_id, 2)] == [3]

        self.run(body)

    def test_a_forwarded_job_keeps_its_home_and_its_broker(self) -> None:
        async def body(store: Store) -> None:
            here = dataclasses.replace(job("j-in"), home="east")  # forwarded to this broker
            await store.insert_job(here, event(here, 1, "forwarded by east"))
            away = job("j-out")
            await store.insert_job(away, event(away, 1, "accepted"))
            sent = dataclasses.replace(
                away, state=JobState.CLAIMED, updated_at_ms=2_000, broker="west",
                center_id=CenterId("CN09"), pool_id=PoolId("a800"),
            )  # fmt: skip
            await store.update_job(sent, event(sent, 2, "forwarded to west"))
            stored = {s.job.job_id: s.job for s in store.load().jobs}
            assert (stored[JobId("j-in")].home, stored[JobId("j-in")].broker) == ("east", "")
            assert stored[JobId("j-out")] == sent

        self.run(body)

    def test_an_update_without_an_event_changes_only_the_job(self) -> None:
        async def body(store: Store) -> None:
            j = job("j-1")
            await store.insert_job(j, event(j, 1))
            amended = dataclasses.replace(j, attempts=2, updated_at_ms=5_000)
            await store.update_job(amended)
            assert store.load().jobs[0].job == amended
            assert len(store.events_after(j.job_id, 0)) == 1

        self.run(body)

    def test_a_duplicate_request_id_is_refused_and_nothing_is_stored(self) -> None:
        async def body(store: Store) -> None:
            a, b = job("j-1"), job("j-2")
            await store.insert_job(a, event(a, 1), request_id="r")
            with pytest.raises(FailedPrecondition, match="request 'r' of tenant 'lab-a'"):
                await store.insert_job(b, event(b, 1), request_id="r")
            assert [s.job.job_id for s in store.load().jobs] == ["j-1"]
            assert store.events_after(b.job_id, 0) == []
            # The same request id of another tenant is another request.
            c = job("j-3", tenant="lab-b")
            await store.insert_job(c, event(c, 1), request_id="r")
            assert len(store.load().jobs) == 2

        self.run(body)

    def test_updating_an_unknown_job_is_not_found_and_changes_nothing(self) -> None:
        async def body(store: Store) -> None:
            ghost = job("j-ghost")
            with pytest.raises(NotFound, match="no job 'j-ghost'"):
                await store.update_job(ghost, event(ghost, 2))
            assert list(store.load().jobs) == []
            assert store.events_after(ghost.job_id, 0) == []

        self.run(body)

    def test_one_failed_write_does_not_undo_the_others_in_its_commit(self) -> None:
        async def body(store: Store) -> None:
            a, dup, c = job("j-1"), job("j-2"), job("j-3")
            results = await asyncio.gather(
                store.insert_job(a, event(a, 1), request_id="r"),
                store.insert_job(dup, event(dup, 1), request_id="r"),
                store.insert_job(c, event(c, 1)),
                return_exceptions=True,
            )
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], FailedPrecondition)
            assert sorted(s.job.job_id for s in store.load().jobs) == ["j-1", "j-3"]

        self.run(body)

    def test_log_chunks_keep_their_bytes_and_a_resend_is_kept_once(self) -> None:
        async def body(store: Store) -> None:
            j = job("j-1")
            await store.insert_job(j, event(j, 1))
            chunks = [
                LogChunk(job_id=j.job_id, seq=1, stream="stdout", data=b"hello\n"),
                LogChunk(job_id=j.job_id, seq=2, stream="stderr", data=b"\x00\xff\xfe raw"),
            ]
            for c in chunks:
                await store.insert_log(c)
            await store.insert_log(
                LogChunk(job_id=j.job_id, seq=2, stream="stderr", data=b"a resend")
            )
            assert store.logs_after(j.job_id, 0) == chunks
            assert store.logs_after(j.job_id, 1) == chunks[1:]
            assert store.load().log_seq == {"j-1": 2}
            assert store.load().log_bytes == {"j-1": sum(len(c.data) for c in chunks)}

        self.run(body)

    def test_a_center_is_stored_with_its_pools_in_order_and_replaced_on_reconnect(
        self,
    ) -> None:
        async def body(store: Store) -> None:
            await store.upsert_center(center(), 1_000)
            smaller = dataclasses.replace(center(devices=4), region="YRD")
            await store.upsert_center(smaller, 5_000)
            [stored] = store.load().centers
            assert stored.center == smaller
            assert [p.pool_id for p in stored.center.pools] == ["a800", "910b"]
            assert (stored.first_seen_ms, stored.last_seen_ms) == (1_000, 5_000)

        self.run(body)

    def test_writes_commit_in_order_and_many_share_a_commit(self) -> None:
        async def body(store: Store) -> None:
            jobs = [job(f"j-{i:04d}", at=i) for i in range(300)]
            await asyncio.gather(*(store.insert_job(j, event(j, 1)) for j in jobs))
            assert len(store.load().jobs) == 300
            latest = jobs[0]
            for seq in range(2, 40):
                latest = dataclasses.replace(latest, attempts=seq, updated_at_ms=seq)
                store.update_job(latest, event(latest, seq))
            await store.update_job(latest)
            stored = {s.job.job_id: s.job for s in store.load().jobs}
            assert stored[latest.job_id].attempts == 39  # the last write won
            assert [e.seq for e in store.events_after(latest.job_id, 0)] == list(range(1, 40))

        self.run(body)

    def test_a_claim_record_is_kept_and_replaced_by_its_latest(self) -> None:
        from broker.claims import ClaimRecord
        from core.types import PoolRef

        async def body(store: Store) -> None:
            record = ClaimRecord(
                claim_id=ClaimId("c-1"), job_id=JobId("j-1"), tenant="lab-a",
                pool=PoolRef(center_id=CenterId("CN01"), pool_id=PoolId("a800")),
                accelerator="nvidia-a800", devices=2, price_minor_per_device_hour=1_200,
                power_w=400, pue_milli=1250, grid_g_co2_per_kwh=520, claimed_at_ms=1_000,
            )  # fmt: skip
            await store.put_claim(record)
            assert list(store.load().claims) == [record]
            ended = dataclasses.replace(
                record, started_at_ms=2_000, ended_at_ms=9_000, billed_record_id="CN01/c-1"
            )
            await store.put_claim(ended)
            assert list(store.load().claims) == [ended]

        self.run(body)

    def test_policy_changes_come_back_in_order_and_a_gap_is_refused(self) -> None:
        from core.national import PolicyVersion

        async def main() -> None:
            store = self.make_store()
            first = PolicyVersion(
                version=1, policy_json='{"weights": {"carbon": 2}}', set_by="coordinator",
                set_at_ms=1_000, comment="greener, é",
            )  # fmt: skip
            second = dataclasses.replace(first, version=2, policy_json="{}", comment="")
            await store.put_policy_change(first)
            with pytest.raises(FailedPrecondition, match="policy version 3 does not follow"):
                await store.put_policy_change(dataclasses.replace(second, version=3))
            with pytest.raises(FailedPrecondition, match="policy version 1 does not follow"):
                await store.put_policy_change(first)
            await store.put_policy_change(second)
            store = self.reopen(store)
            try:
                assert list(store.load().policy_changes) == [first, second]
            finally:
                store.close()

        asyncio.run(main())

    def test_free_text_with_nul_is_kept_with_u_fffd_in_its_place(self) -> None:
        """A PostgreSQL text column cannot hold NUL: on every store a job's reason and
        explanation, an event's message and a policy comment keep U+FFFD in its place,
        and the write (and the others of its commit) goes through."""
        from core.national import PolicyVersion

        async def main() -> None:
            store = self.make_store()
            j, other = job("j-1"), job("j-2")
            await store.insert_job(j, event(j, 1, "accepted \0 by\0"))
            ended = dataclasses.replace(
                j, state=JobState.FAILED, updated_at_ms=2_000, reason="exit\0 1",
                explanation="\0cheapest",
            )  # fmt: skip
            results = await asyncio.gather(
                store.update_job(ended, event(ended, 2, "failed: \0")),
                store.insert_job(other, event(other, 1, "accepted")),
                store.put_policy_change(
                    PolicyVersion(
                        version=1, policy_json="{}", set_by="coordinator", set_at_ms=1_000,
                        comment="why\0",
                    )
                ),
            )  # fmt: skip
            assert list(results) == [None, None, None]
            store = self.reopen(store)
            try:
                snap = store.load()
                stored = {s.job.job_id: s.job for s in snap.jobs}
                assert stored[j.job_id] == dataclasses.replace(
                    ended, reason="exit\ufffd 1", explanation="\ufffdcheapest"
                )
                assert stored[other.job_id] == other
                assert [e.message for e in store.events_after(j.job_id, 0)] == [
                    "accepted \ufffd by\ufffd",
                    "failed: \ufffd",
                ]
                assert [p.comment for p in snap.policy_changes] == ["why\ufffd"]
            finally:
                store.close()

        asyncio.run(main())
