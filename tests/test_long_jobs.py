"""Long jobs are billed as they go: a real broker and agent, the agent metering every
second (`--metering-interval-s 1`), each interval a signed record chained to the one
before; the records of a run add up to what one record of the run would say, each proves
offline with the commands `icx bill` prints, and an agent killed mid-run bills exactly
the intervals it had signed."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from broker.core import Broker
from broker.ledger import ledger_paths
from broker.usage import MIN_INTERVAL_S
from cli.federation import LocalFederation
from client import BrokerClient
from core.states import JobState
from core.types import CenterDescriptor, JobSpec
from identity import Role
from ledger import LedgerStore, Log, UsageRecord
from ledger.bill import LoggedRecord
from ledger.records import RecordKind, split_interval_id
from node_agent._metering import (
    Interval,
    RunFacts,
    interval_record,
    usage_record,
    usage_records,
)
from node_agent._run_table import runs_on_disk
from tests.conftest import FAST_BROKER, make_center, run_icx, wait_centers, wait_for

TENANT = "lab-long"
INTERVAL_S = 1
INTERVAL = ("--metering-interval-s", str(INTERVAL_S))
HEARTBEAT_S = int(FAST_BROKER[FAST_BROKER.index("--heartbeat-ms") + 1]) / 1000
SLACK_MS = 3_000


def _center(center_id: str) -> CenterDescriptor:
    # A dear pool: one device-second is several fen, so no interval is charged zero.
    return make_center(center_id, pools={"p": ("ascend-910", 4, 36_000)})


def _workdir(federation: LocalFederation, center_id: str) -> Path:
    return federation.root / "work" / center_id


def _run_rows(federation: LocalFederation, center_id: str) -> list[dict[str, Any]]:
    return runs_on_disk(_workdir(federation, center_id) / "runs.json")


def _outbox(federation: LocalFederation, center_id: str) -> list[str]:
    return sorted(
        p.name for p in (_workdir(federation, center_id) / "usage-outbox").glob("*.entry")
    )


def _chain(records: list[LoggedRecord], center_id: str, claim_id: str) -> list[UsageRecord]:
    base = f"{center_id}/{claim_id}"
    mine = [r.record for r in records if r.record.record_id.split("/")[:2] == base.split("/")]
    return sorted(mine, key=lambda r: r.offset_s)


def _assert_chained(chain: list[UsageRecord], center_id: str, claim_id: str) -> None:
    base = f"{center_id}/{claim_id}"
    assert [r.record_id for r in chain] == [base] + [
        f"{base}/{n}" for n in range(2, len(chain) + 1)
    ]
    assert chain[0].refs == "" and chain[0].offset_s == 0
    for before, after in itertools.pairwise(chain):
        assert after.refs == before.record_id
        assert after.start_ms == before.end_ms  # no gap, no overlap
        assert after.offset_s == before.offset_s + before.wall_s
        assert before.wall_s == 1  # a whole interval


def _audit(federation: LocalFederation) -> dict[str, Any]:
    audited = run_icx("ledger", "audit", "--db", str(ledger_paths(federation.db)[0]), "--json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    result: dict[str, Any] = json.loads(audited.stdout)
    return result


def test_a_long_job_is_billed_in_chained_intervals_that_add_up_and_prove_offline(
    federation: LocalFederation, tmp_path: Path
) -> None:
    center = _center("CL")
    federation.start_agent(center, *INTERVAL)
    with federation.client(TENANT) as user:
        wait_centers(user, 1)
        spec = JobSpec(accelerator="any", devices=2, estimated_s=60, command=("sleep", "4.6"))
        job_id = user.submit(spec).job_id
        wait_for(lambda: user.get_job(job_id).state.terminal, 30, "the job to end")
        assert user.get_job(job_id).state == JobState.SUCCEEDED
        wait_for(
            lambda: (
                [r["metered"] for r in _run_rows(federation, "CL")] == [True]
                and not _outbox(federation, "CL")
            ),
            20,
            "every record signed and acknowledged",
        )
        [row] = _run_rows(federation, "CL")
        chain = _chain(user.job_records(job_id), "CL", row["claim_id"])

    assert len(chain) >= 4 and row["metered_n"] == len(chain)
    _assert_chained(chain, "CL", row["claim_id"])
    assert chain[0].start_ms == row["started_at_ms"]
    assert row["ended_at_ms"] - chain[-1].end_ms < 1000  # the rest: under a second
    # The intervals add up to exactly what one record of the whole run would say.
    whole = usage_record(
        center,
        RunFacts(
            claim_id=row["claim_id"], job_id=job_id, tenant=TENANT, pool_id="p", devices=2,
            started_at_ms=row["started_at_ms"], ended_at_ms=row["ended_at_ms"],
        ),
    )  # fmt: skip
    for name in ("wall_s", "device_s", "energy_wh", "carbon_g", "charge_minor"):
        assert sum(getattr(r, name) for r in chain) == getattr(whole, name), name
    assert all(r.charge_minor > 0 for r in chain)

    # Each provable offline, by running the very commands the bill prints.
    user_folder = federation.member(f"{TENANT}.user", Role.USER, tenant=TENANT)
    billed = run_icx("bill", job_id, "--broker", federation.address, "--json",
                     identity=user_folder)  # fmt: skip
    assert billed.returncode == 0, billed.stderr
    bill = json.loads(billed.stdout)
    assert [r["record_id"] for r in bill["records"]] == [r.record_id for r in chain]

    def icx(command: str) -> str:
        argv = shlex.split(command)
        assert argv[0] == "icx"
        done = run_icx(*argv[1:], identity=user_folder, cwd=tmp_path)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        return done.stdout

    icx(bill["trust"])
    for r in bill["records"]:
        icx(r["prove"])
        assert icx(r["verify"]).startswith(f"ok: entry {r['index']} is in ")
    assert _audit(federation)["ok"]


def test_an_agent_killed_mid_run_bills_exactly_the_intervals_it_signed(
    federation: LocalFederation, client: BrokerClient, tmp_path: Path
) -> None:
    """The process backend's jobs die with the agent: what was metered stays (the signed
    records left in the outbox are delivered by the agent's next life), the rest is
    lost, at most one interval and a heartbeat; the job runs again and that run is
    billed too, and the ledger audits (no two runs overlap)."""
    center = _center("CK")
    federation.start_agent(center, *INTERVAL)
    marker = tmp_path / "ran-once"
    # The first run sleeps (and dies with its agent); the rerun ends at once.
    script = f"import os,sys,time\nif os.path.exists({str(marker)!r}): sys.exit(0)\n" \
             f"open({str(marker)!r}, 'w').close()\ntime.sleep(60)\n"  # fmt: skip
    spec = JobSpec(accelerator="any", devices=1, estimated_s=60,
                   command=(sys.executable, "-c", script))  # fmt: skip
    with federation.client(TENANT) as user:
        wait_centers(user, 1)
        job_id = user.submit(spec).job_id
        wait_for(lambda: len(user.job_records(job_id)) >= 3, 30, "three intervals in the ledger")
        federation.agents["CK"].kill()  # SIGKILL: the run dies with it
        killed_at_ms = int(time.time() * 1000)
        [row] = _run_rows(federation, "CK")
        first_claim = row["claim_id"]
        signed = max([row["metered_n"], *(_pending_n(name) for name in _outbox(federation, "CK"))])
        assert row["state"] == "running" and not row["metered"]

        federation.start_agent(center, *INTERVAL)  # back, with its run table and outbox
        wait_for(lambda: user.get_job(job_id).state.terminal, 30, "the rerun to end")
        job = user.get_job(job_id)
        assert job.state == JobState.SUCCEEDED and job.attempts >= 2
        wait_for(lambda: not _outbox(federation, "CK"), 20, "the outbox delivered")
        records = user.job_records(job_id)

    lost_run = _chain(records, "CK", first_claim)
    assert len(lost_run) == signed  # exactly the intervals it signed, delivered once
    _assert_chained(lost_run, "CK", first_claim)
    assert lost_run[-1].wall_s == 1  # no end record: the agent never saw the end
    # Nothing billed past the death; lost: at most one interval and one tick (metering
    # runs on the agent's tick), plus a generous allowance for the kill and the polls.
    lost_ms = killed_at_ms - lost_run[-1].end_ms
    assert 0 <= lost_ms < (INTERVAL_S + HEARTBEAT_S) * 1000 + SLACK_MS
    reruns = {r.record.record_id.split("/")[1] for r in records} - {first_claim}
    assert len(reruns) == 1  # the rerun: its own chain
    audit = _audit(federation)
    assert audit["ok"] and audit["records"] == len(records)


def _pending_n(name: str) -> int:
    """The interval number of an outbox file `CENTER_CLAIM[_n].entry`."""
    return split_interval_id(name.removesuffix(".entry").replace("_", "/"))[1]


def test_the_broker_takes_a_runs_intervals_in_order_and_refuses_a_broken_chain(
    tmp_path: Path,
) -> None:
    """A real Broker, store and ledger on a ManualClock (as tests/test_usage_checks.py):
    the agent's own interval records of a 600 s run, metered every 100 s."""
    from tests.test_usage_checks import Center, ran, run

    async def body(broker: Broker) -> tuple[dict[str, str], int]:
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=600)
        records = usage_records(a.descriptor, facts, 100)
        assert len(records) == 6
        one, two, three = records[:3]
        size = await _size(broker)
        first_refusals = {
            "interval 3 before 2": (await a.bill(three)).reason,
            "interval 2 before 1": (await a.bill(two)).reason,
        }
        assert await _size(broker) == size  # nothing logged
        assert (await a.bill(one)).accepted
        lies = {
            "refs that skip one": dataclasses.replace(two, record_id=three.record_id),
            "a gap": dataclasses.replace(
                two, start_ms=two.start_ms + 1000, end_ms=two.end_ms + 1000
            ),
            "more energy": dataclasses.replace(two, energy_wh=two.energy_wh + 1),
            "after the end": interval_record(
                a.descriptor,
                facts,
                Interval(
                    n=7,
                    start_ms=facts.ended_at_ms,
                    end_ms=facts.ended_at_ms + 100_000,
                    offset_s=600,
                ),
            ),
        }
        reasons = first_refusals | {what: (await a.bill(r)).reason for what, r in lies.items()}
        assert await _size(broker) == size + 1
        indexes = [(await a.bill(r)).index for r in records]
        assert indexes == [indexes[0] + i for i in range(6)]
        assert (await a.bill(two)).index == indexes[1]  # a resend: the same entry
        claim = broker.claims.record(facts.claim_id)
        assert claim is not None and claim.billed_record_id == records[-1].record_id
        return reasons, await _size(broker)

    reasons, size = run(tmp_path, body)
    assert all(reasons.values()), reasons
    assert "continues" in reasons["interval 3 before 2"]
    assert "which is not in the log" in reasons["interval 3 before 2"]
    assert "which is not in the log" in reasons["interval 2 before 1"]
    assert "refs must be" in reasons["refs that skip one"]
    assert "(a gap)" in reasons["a gap"]
    assert "energy_wh must be" in reasons["more energy"] and "after 100 s" in reasons["more energy"]
    assert "lies outside what the broker saw" in reasons["after the end"]
    with LedgerStore(ledger_paths(tmp_path / "broker.db")[0]) as store:
        assert Log(store).audit().size == size


async def _size(broker: Broker) -> int:
    ledger = broker.usage.ledger
    assert ledger is not None
    note = await ledger.latest_note()
    return int(note.splitlines()[1])


def test_a_restarted_agent_finishes_metering_an_ended_run_from_where_it_stopped(
    tmp_path: Path,
) -> None:
    """A run that ended before its agent died, one interval of it metered: the next life
    meters the rest, interval by interval, from the run table (no broker needed: the
    records wait in the outbox)."""
    from ledger import SignedRecord, SignerKey
    from node_agent._run_table import RunRow, RunTable
    from node_agent.agent import OUTBOX, RUN_TABLE, Agent

    center = _center("CR")
    start = 1_796_000_000_123
    table = RunTable(tmp_path / RUN_TABLE)
    table.put(
        RunRow(
            claim_id="c-1", job_id="j-1", pool_id="p", device_indices=(0, 1),
            backend="process", backend_run_id="4242", tenant=TENANT, started_at_ms=start,
            state=JobState.SUCCEEDED, exit_code=0, ended_at_ms=start + 5_300,
            metered_n=1, metered_to_ms=start + 2_000,
        )
    )  # fmt: skip
    key = SignerKey.generate("CR")
    agent = Agent(center, "127.0.0.1:1", workdir=tmp_path, usage_key=key, metering_interval_s=2)

    async def restore() -> None:
        await agent.runs.restore(lambda coro: coro.close())

    asyncio.run(restore())
    facts = RunFacts(claim_id="c-1", job_id="j-1", tenant=TENANT, pool_id="p", devices=2,
                     started_at_ms=start, ended_at_ms=start + 5_300)  # fmt: skip
    every = usage_records(center, facts, 2)
    assert [r.record_id for r in every] == ["CR/c-1", "CR/c-1/2", "CR/c-1/3"]
    assert [r.wall_s for r in every] == [2, 2, 1]  # the last: the 1.3 s left, whole seconds
    pending = [SignedRecord.from_entry(p.read_bytes()).record
               for p in sorted((tmp_path / OUTBOX).glob("*.entry"))]  # fmt: skip
    assert sorted(r.record_id for r in pending) == ["CR/c-1/2", "CR/c-1/3"]
    assert {r.record_id: r for r in pending} == {r.record_id: r for r in every[1:]}
    [row] = runs_on_disk(tmp_path / RUN_TABLE)
    assert (row["metered"], row["metered_n"], row["metered_to_ms"]) == (True, 3, start + 5_300)


def test_a_run_table_written_before_interval_metering_reads_as_nothing_metered(
    tmp_path: Path,
) -> None:
    old = {"claim_id": "c-1", "job_id": "j-1", "pool_id": "p", "device_indices": [0],
           "backend": "process", "backend_run_id": "1", "tenant": TENANT,
           "started_at_ms": 5, "state": "running", "exit_code": None, "ended_at_ms": 0,
           "metered": False, "log_epoch": 0}  # fmt: skip
    (tmp_path / "runs.json").write_text(json.dumps({"version": 1, "runs": [old]}))
    [row] = runs_on_disk(tmp_path / "runs.json")
    assert (row["metered_n"], row["metered_to_ms"]) == (0, 0)


def _correction(record: UsageRecord, fixed: UsageRecord) -> UsageRecord:
    """A correction of `record` with the figures of `fixed`."""
    return dataclasses.replace(
        fixed, kind=RecordKind.CORRECTION, record_id=f"{record.record_id}/fix",
        refs=record.record_id,
    )  # fmt: skip


def test_corrections_of_intervals_are_taken_and_the_chain_is_checked_as_in_force(
    tmp_path: Path,
) -> None:
    """A correction is no "overlap" of the interval it corrects; an interval continues its
    predecessor as corrected (as the audit checks it); a correction may not break a chain
    (move the end of an interval that another continues); and the broker's floor refuses
    an interval that continues one shorter than it (a run's last may be shorter)."""
    from tests.test_usage_checks import Center, ran, run

    async def body(broker: Broker) -> tuple[dict[str, str], int]:
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=600)
        one, two, three, *_ = usage_records(a.descriptor, facts, 100)
        shorter = interval_record(
            a.descriptor,
            facts,
            Interval(n=2, start_ms=two.start_ms, end_ms=two.end_ms - 10_000, offset_s=100),
        )
        assert (await a.bill(one)).accepted and (await a.bill(two)).accepted
        fix_two = _correction(two, shorter)
        ack = await a.bill(fix_two)
        assert ack.accepted, ack.reason  # no "overlap" with the record it corrects
        reasons = {"continues the original": (await a.bill(three)).reason}
        # The third interval as the corrected second one leaves off is taken.
        after_fix = interval_record(
            a.descriptor,
            facts,
            Interval(n=3, start_ms=shorter.end_ms, end_ms=two.end_ms + 100_000, offset_s=190),
        )
        ack = await a.bill(after_fix)
        assert ack.accepted, ack.reason
        # Now the second interval is continued: its end stays.
        back = _correction(two, two)
        reasons["moves a continued end"] = (await a.bill(dataclasses.replace(
            back, record_id=f"{two.record_id}/fix2"))).reason  # fmt: skip
        claim = broker.claims.record(facts.claim_id)
        assert claim is not None and claim.billed_record_id == after_fix.record_id
        return reasons, await _size(broker)

    reasons, size = run(tmp_path, body)
    assert "(a gap)" in reasons["continues the original"], reasons
    assert "continues the interval, so it keeps end_ms" in reasons["moves a continued end"]
    with LedgerStore(ledger_paths(tmp_path / "broker.db")[0]) as store:
        assert Log(store).audit().size == size  # the audit agrees with what was taken


def test_the_broker_refuses_intervals_under_its_floor_but_for_a_runs_last(
    tmp_path: Path,
) -> None:
    from tests.test_usage_checks import Center, ran, run

    async def body(broker: Broker) -> tuple[list[bool], str]:
        assert broker.usage.min_interval_s == MIN_INTERVAL_S == 60
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=100)
        one, two, *_ = usage_records(a.descriptor, facts, 30)  # 30+30+30+10
        first = (await a.bill(one)).accepted  # may be the run's last: taken
        refused = await a.bill(two)
        _, whole = await ran(broker, a, seconds=150)
        long = usage_records(a.descriptor, whole, 60)  # 60+60+30: the last one short
        taken = [(await a.bill(r)).accepted for r in long]
        return [first, refused.accepted, *taken], refused.reason

    accepted, reason = run(tmp_path, body)
    assert accepted == [True, False, True, True, True]
    assert "which lasts 30 s: this broker takes metering intervals of at least 60 s" in reason


def test_a_jobs_end_noted_while_its_usage_is_appended_is_kept(tmp_path: Path) -> None:
    """The claim is read again after the ledger's append: an end the broker noted
    meanwhile is not overwritten by the claim as it was before."""
    from tests.test_usage_checks import Center, ran, run

    async def body(broker: Broker) -> tuple[int | None, int]:
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=600)
        one = usage_records(a.descriptor, facts, 100)[0]
        claim = broker.claims.record(facts.claim_id)
        assert claim is not None
        # As if the run had not ended yet when the record came in.
        broker.claims.note(dataclasses.replace(claim, ended_at_ms=None))
        billing = asyncio.create_task(a.bill(one))
        await asyncio.sleep(0)  # the intake now waits on the ledger's thread
        broker.claims.note(dataclasses.replace(claim, ended_at_ms=facts.ended_at_ms))
        assert (await billing).accepted
        after = broker.claims.record(facts.claim_id)
        [stored] = [c for c in broker.store.load().claims if c.claim_id == facts.claim_id]
        assert after is not None and stored.ended_at_ms == after.ended_at_ms
        assert after.billed_record_id == one.record_id
        return after.ended_at_ms, facts.ended_at_ms

    kept, ended = run(tmp_path, body)
    assert kept == ended


def test_a_tenants_bill_reads_the_latest_checkpoint_and_signs_none(tmp_path: Path) -> None:
    from tests.test_usage_checks import TENANT as PAYER
    from tests.test_usage_checks import Center, ran, run

    async def body(broker: Broker) -> tuple[int, int, int, int]:
        ledger = broker.usage.ledger
        assert ledger is not None
        a = await Center(broker, "CA").join()
        _, facts = await ran(broker, a, seconds=300)
        records = usage_records(a.descriptor, facts, 100)
        assert (await a.bill(records[0])).accepted
        checkpointed = await _size(broker)  # signs a checkpoint over the first record
        for r in records[1:]:
            assert (await a.bill(r)).accepted
        period = time.strftime("%Y-%m", time.gmtime(records[0].end_ms / 1000))
        size, jobs = await ledger.tenant_bill(period, PAYER)
        notes = await ledger._run(lambda log: len(list(log.store.checkpoints())))
        return size, checkpointed, notes, jobs[0].records

    size, checkpointed, notes, counted = run(tmp_path, body)
    assert size == checkpointed and notes == 1 and counted == 1  # only what it covers


def test_the_outbox_keeps_a_successor_until_its_predecessor_is_decided(tmp_path: Path) -> None:
    """A refused interval whose predecessor is pending waits and is sent again once that
    one is logged; a refused interval sets aside the rest of its run (an orphaned chain,
    counted), also what is metered later; a record is signed once."""
    from ledger import SignerKey
    from node_agent._outbox import Decision, Outbox

    center = _center("CO")
    key = SignerKey.generate("CO")
    facts = RunFacts(claim_id="c-1", job_id="j-1", tenant=TENANT, pool_id="p", devices=1,
                     started_at_ms=1_796_000_000_000, ended_at_ms=1_796_000_005_000)  # fmt: skip
    r1, r2, r3, r4, r5 = usage_records(center, facts, 1)
    box = Outbox(tmp_path, key)
    sent = [box.add(r) for r in (r1, r2, r3)]
    assert box.add(r2) == sent[1]  # pending: the same bytes, not signed again
    # Interval 2 refused while 1 is undecided: it waits, and goes again once 1 is logged.
    assert box.decide(r2.record_id, accepted=False) is Decision.WAITING
    assert box.decide(r1.record_id, accepted=True) is Decision.LOGGED
    assert box.successor(r1.record_id) == sent[1]
    assert box.successor(r1.record_id) is None  # sent once
    # Interval 2 refused again, its predecessor decided: it and the rest are set aside.
    assert box.decide(r2.record_id, accepted=False) is Decision.SET_ASIDE
    assert box.pending() == [] and box.refused() == {r2.record_id, r3.record_id}
    assert box.orphaned == {"CO/c-1"}
    assert box.add(r4) is None  # metered later: never sent
    assert box.decide(r3.record_id, accepted=False) is Decision.UNKNOWN
    # A restarted agent finds it all as it was.
    again = Outbox(tmp_path, key)
    assert again.pending() == [] and again.refused() == {r2.record_id, r3.record_id, r4.record_id}
    assert again.orphaned == {"CO/c-1"} and again.add(r5) is None
