"""The audit checks the usage rules over the whole log, not only signatures: an honest
log passes, and each broken rule is found at its first entry and named.

Logs are real files. Records the log's own append accepts go through `Log.append`; the
rest are countersigned and stored directly (`_force`), as a broker that did not check
them (or a forged file) would have written them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import main
from ledger import LedgerStore, Log, Role, SignerKey, UsageRecord
from ledger._audit_rules import Rule, UsageRules, UsageRuleViolation, check_usage_rules
from ledger.records import RecordKind
from ledger.signing import countersign, sign_records
from tests.ledger.conftest import NOV_2026_MS, Parties, seeded_key, usage

HOUR_MS = 3_600_000


def run(record_id: str, job: str, start_h: int, hours: int = 1, **kw: object) -> UsageRecord:
    """A usage record of `job` from hour `start_h` for `hours` (after 2026-11-01 01:00)."""
    record = usage(record_id, start_ms=NOV_2026_MS + HOUR_MS * (1 + start_h),
                   wall_s=3600 * hours, **kw)  # type: ignore[arg-type]  # fmt: skip
    return dataclasses.replace(record, job_id=job)


def correction(record_id: str, refs: str, job: str, start_h: int, **kw: object) -> UsageRecord:
    fixed = run(record_id, job, start_h, **kw)
    return dataclasses.replace(fixed, kind=RecordKind.CORRECTION, refs=refs)


def answer(
    record_id: str, refs: str, kind: RecordKind = RecordKind.ACK, **kw: object
) -> UsageRecord:
    """An ack (or dispute) about `refs`: no figures."""
    base = usage(record_id, producer="tenant/lab", consumer="center/wuhan", **kw)  # type: ignore[arg-type]
    return dataclasses.replace(
        base, kind=kind, refs=refs, job_id="", accelerator="", wall_s=0, devices=0,
        device_s=0, energy_wh=0, unit_price_minor=0, charge_minor=0,
    )  # fmt: skip


def _force(log: Log, records: list[UsageRecord], key: SignerKey, broker: SignerKey) -> int:
    """Sign and countersign `records` and store them without the log's checks; return
    the index of the first."""
    signed = countersign(sign_records(records, key), broker)
    return log.store.append([(sr.record.record_id, "usage", sr.entry()) for sr in signed])


def _violation(log: Log) -> UsageRuleViolation:
    with pytest.raises(UsageRuleViolation) as caught:
        Log(LedgerStore(log.store.path)).audit()
    return caught.value


def _honest(log: Log, parties: Parties) -> None:
    wuhan = [
        run("center/wuhan/c1", "job-1", 0),
        # The same job run again after a requeue, right after the first run.
        run("center/wuhan/c2", "job-1", 1, hours=2),
        run("center/wuhan/c3", "job-2", 0),
    ]
    log.append(sign_records(wuhan, parties.wuhan))
    # Another center ran job-1 at the same time: not the same center's run billed twice.
    log.append(sign_records([run("center/guizhou/c9", "job-1", 0, producer="center/guizhou")],
                            parties.guizhou))  # fmt: skip
    # A correction of the first run (now 30 minutes shorter), then one of that.
    log.append(sign_records([correction("center/wuhan/c1-fix", "center/wuhan/c1", "job-1", 0,
                                        devices=4)], parties.wuhan))  # fmt: skip
    log.append(sign_records([correction("center/wuhan/c1-fix2", "center/wuhan/c1-fix",
                                        "job-1", 0, devices=2)], parties.wuhan))  # fmt: skip
    log.append(sign_records([answer("tenant/lab/a1", "center/wuhan/c2"),
                             answer("tenant/lab/d1", "center/wuhan/c3", RecordKind.DISPUTE)],
                            parties.lab))  # fmt: skip
    log.checkpoint()


def test_an_honest_log_passes(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    report = Log(LedgerStore(log.store.path)).audit()
    assert (report.records, report.key_events) == (8, 4)


def test_a_record_outside_its_producers_name_space(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    # Wuhan names a record in Guizhou's space (the log's append does not look at names).
    (index,) = log.append(sign_records([run("center/guizhou/c5", "job-5", 0)], parties.wuhan))
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.RECORD_ID_NAMESPACE)
    assert str(found) == (
        f"entry {index}: rule record-id-namespace: record 'center/guizhou/c5' must be named "
        "center/wuhan/..., in its producer's name space"
    )


@pytest.mark.parametrize(
    "record_id",
    ["center/wuhanx/c1", "c1", "center/wuhan/", "center/wuhan"],
    ids=["a longer name", "no name space", "nothing after the slash", "the name alone"],
)
def test_name_space_is_the_producer_a_slash_and_more(record_id: str) -> None:
    record = dataclasses.replace(run("center/wuhan/c1", "job-1", 0), record_id=record_id)
    with pytest.raises(UsageRuleViolation, match="rule record-id-namespace") as caught:
        check_usage_rules([(7, record)])
    assert caught.value.index == 7


def test_an_ack_outside_the_tenants_name_space(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    ack = dataclasses.replace(answer("tenant/lab/a2", "center/wuhan/c1"), record_id="lab-a2")
    (index,) = log.append(sign_records([ack], parties.lab))
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.RECORD_ID_NAMESPACE)


def test_the_same_run_billed_twice_under_two_ids(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    # job-2 ran hour 0..1 as c3; billed again for half an hour inside that run.
    again = usage("center/wuhan/c4", start_ms=NOV_2026_MS + HOUR_MS + 900_000, wall_s=1800)
    (index,) = log.append(sign_records([dataclasses.replace(again, job_id="job-2")],
                                       parties.wuhan))  # fmt: skip
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.NO_OVERLAPPING_RUNS)
    assert str(found) == (
        f"entry {index}: rule no-overlapping-runs: record 'center/wuhan/c4' bills job 'job-2' "
        "at 'center/wuhan' for 1793495700000..1793497500000, which overlaps "
        "'center/wuhan/c3' (entry 6, 1793494800000..1793498400000): the same run billed twice"
    )


def test_a_correction_that_moves_a_run_onto_another(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    # c2 ran hours 1..3; its correction claims hours 0..2, over c1 (hours 0..1).
    moved = correction("center/wuhan/c2-fix", "center/wuhan/c2", "job-1", 0, hours=2)
    (index,) = log.append(sign_records([moved], parties.wuhan))
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.NO_OVERLAPPING_RUNS)
    assert "overlaps 'center/wuhan/c1-fix2'" in str(found)  # the latest of c1's chain


def test_two_empty_runs_at_one_instant_are_one_run() -> None:
    first = run("center/wuhan/c1", "job-1", 0, hours=0)
    second = dataclasses.replace(first, record_id="center/wuhan/c2")
    with pytest.raises(UsageRuleViolation, match="rule no-overlapping-runs") as caught:
        check_usage_rules([(4, first), (5, second)])
    assert caught.value.index == 5


def test_a_correction_of_another_job(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    # Same producer and consumer (the log's append checks those), another job.
    other_job = correction("center/wuhan/c3-fix", "center/wuhan/c3", "job-7", 0)
    (index,) = log.append(sign_records([other_job], parties.wuhan))
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.CORRECTION_SAME_PRODUCER_AND_JOB)
    assert str(found) == (
        f"entry {index}: rule correction-same-producer-and-job: record 'center/wuhan/c3-fix' "
        "corrects 'center/wuhan/c3' (producer 'center/wuhan', consumer 'tenant/lab', job "
        "'job-2') but names producer 'center/wuhan', consumer 'tenant/lab', job 'job-7'"
    )


def test_a_correction_of_another_producers_record(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    hijack = correction("center/guizhou/fix", "center/wuhan/c3", "job-2", 0,
                        producer="center/guizhou")  # fmt: skip
    index = _force(log, [hijack], parties.guizhou, parties.log_key)
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.CORRECTION_SAME_PRODUCER_AND_JOB)


def test_a_reference_not_earlier_in_the_log(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    stray = correction("center/wuhan/c8-fix", "center/wuhan/c8", "job-8", 0)
    index = _force(log, [stray], parties.wuhan, parties.log_key)
    log.append(sign_records([run("center/wuhan/c8", "job-8", 0)], parties.wuhan))
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.REFS_IN_LOG)
    assert "refs 'center/wuhan/c8' is not earlier in the log" in str(found)


def test_a_correction_of_an_ack(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    bad = correction("center/wuhan/a1-fix", "tenant/lab/a1", "job-1", 5)
    index = _force(log, [bad], parties.wuhan, parties.log_key)
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.REFS_USAGE)
    assert "refs 'tenant/lab/a1' is a ack, not usage" in str(found)


@pytest.mark.parametrize("kind", [RecordKind.ACK, RecordKind.DISPUTE], ids=str)
def test_an_answer_from_someone_other_than_the_consumer(
    log: Log, parties: Parties, kind: RecordKind
) -> None:
    _honest(log, parties)
    other: SignerKey = seeded_key("tenant/other", 9)
    log.admit("tenant/other", Role.TENANT, other.verifier)
    forged = dataclasses.replace(
        answer("tenant/other/x1", "center/wuhan/c3", kind), producer="tenant/other"
    )
    index = _force(log, [forged], other, parties.log_key)
    found = _violation(log)
    assert (found.index, found.rule) == (index, Rule.ANSWER_FROM_CONSUMER)
    assert str(found) == (
        f"entry {index}: rule answer-from-consumer: record 'tenant/other/x1': only "
        f"'tenant/lab', the consumer of 'center/wuhan/c3', may {kind} it (to 'center/wuhan'); "
        "signed by 'tenant/other' to 'center/wuhan'"
    )


def test_the_first_violation_is_named_when_there_are_several(log: Log, parties: Parties) -> None:
    _honest(log, parties)
    (first,) = log.append(sign_records([run("center/wuhan/c4", "job-2", 0)], parties.wuhan))
    log.append(sign_records([run("center/guizhou/c6", "job-6", 0)], parties.wuhan))
    found = _violation(log)
    assert (found.index, found.rule) == (first, Rule.NO_OVERLAPPING_RUNS)


def test_cli_audit_names_the_rule(
    log: Log, parties: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    _honest(log, parties)
    path = Path(log.store.path)
    assert main(["ledger", "audit", "--db", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (index,) = log.append(sign_records([run("center/wuhan/c4", "job-2", 0)], parties.wuhan))
    assert main(["ledger", "audit", "--db", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert (body["ok"], body["first_bad_index"], body["rule"]) == (
        False, index, "no-overlapping-runs")  # fmt: skip
    assert f"audit failed: entry {index}: rule no-overlapping-runs: " in captured.err
    assert main(["ledger", "audit", "--db", str(path)]) == 1
    assert "rule no-overlapping-runs" in capsys.readouterr().err


# ------------------------------------------------------------------ property


@st.composite
def honest_runs(draw: st.DrawFn) -> list[UsageRecord]:
    """Runs of a few jobs at two centers, each center's runs of a job one after another
    (gaps allowed), interleaved in any order."""
    records: list[UsageRecord] = []
    for producer in ("center/wuhan", "center/guizhou"):
        for job in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, 5))
            for n in range(draw(st.integers(1, 3))):
                hours = draw(st.integers(0, 3))
                records.append(run(f"{producer}/j{job}-r{n}", f"job-{job}", at,
                                   hours=hours, producer=producer))  # fmt: skip
                at += hours + draw(st.integers(0 if hours else 1, 2))
    return draw(st.permutations(records))


@settings(max_examples=200, deadline=None)
@given(records=honest_runs(), data=st.data())
def test_sequential_runs_pass_and_a_rebilled_run_is_found(
    records: list[UsageRecord], data: st.DataObject
) -> None:
    """Invariant: runs of one job at one center that follow each other pass, in any log
    order; billing any of them again under a new id, anywhere after it, is found at that
    entry as no-overlapping-runs."""
    assert check_usage_rules(enumerate(records)) == len(records)
    victim = data.draw(st.integers(0, len(records) - 1))
    place = data.draw(st.integers(victim + 1, len(records)))
    again = dataclasses.replace(records[victim], record_id=f"{records[victim].producer}/again")
    with pytest.raises(UsageRuleViolation) as caught:
        check_usage_rules(enumerate([*records[:place], again, *records[place:]]))
    assert (caught.value.index, caught.value.rule) == (place, Rule.NO_OVERLAPPING_RUNS)


def test_an_answer_about_an_answer() -> None:
    rules = UsageRules()
    rules.check(0, run("center/wuhan/c1", "job-1", 0))
    rules.check(1, answer("tenant/lab/a1", "center/wuhan/c1"))
    with pytest.raises(UsageRuleViolation, match="rule refs-usage"):
        rules.check(2, answer("tenant/lab/a2", "tenant/lab/a1"))
